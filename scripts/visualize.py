#!/usr/bin/env python
"""Draws a project checkpoint's detections (and the ground truth) on images with Detectron2's ``Visualizer``.

    # 4 validation images of LT-Shapes holding rare classes: [ground truth | control | step-wise transfer]
    python scripts/visualize.py --config-file projects/stepwise_ablation.py --phase control \\
        --checkpoint output/stepwise_ablation/seed1/control/model_final.pth \\
        --compare projects/stepwise_ablation.py:transfer:output/stepwise_ablation/seed1/transfer/model_final.pth \\
        --label "baseline (step-wise control)" --label "step-wise (fine-tune + transfer)" --classes rare \\
        --num-images 4 --seed 0 --score-threshold 0.3 --font-scale 1.3 --output docs/images/stepwise_control_vs_transfer
    # every image of a folder, class names of the phase's test dataset
    python scripts/visualize.py --config-file projects/baseline.py --input my_images/ --output output/pictures

Images: ``--input DIR`` (every .jpg / .jpeg / .png / .bmp file, sorted by name, the first ``--num-images``), or
else ``--num-images`` images of ``--dataset`` (default: the phase's test dataset), drawn with ``--seed`` from
those holding one of ``--classes`` (comma-separated frequency groups, ``rare`` / ``common`` / ``frequent``,
and class names; default: every image). Class names and frequency groups come from the dataset's metadata;
rare classes are marked ``(r)``. The model reads each image as the phase's evaluation does (its test mapper's
resize and image format, :func:`ltdet2.engine.derived.evaluation_input`).

One PNG per image in ``--output``: labelled panels side by side, [ground truth (dataset images) | model | each
``--compare`` model], all at ``--scale`` (default: the longer side drawn at 512 px, so that the labels of
LT-Shapes' 128 px images are legible). A class has the same colour in every panel. Detections below
``--score-threshold`` are not drawn; masks are drawn when the model predicts them (the ground truth's masks when
some model does). ``--compare CONFIG[:PHASE]:CHECKPOINT`` adds a model (repeatable); ``--checkpoint`` defaults
to the phase's final checkpoint. Overrides (``key=value``) apply to every model's config, as in
scripts/lazyconfig_train_net.py.
"""

import argparse
import logging
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.structures import BoxMode
from detectron2.utils.colormap import colormap
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer, _create_text_labels

from ltdet2.data.lvis_meta import lvis_meta_from_dataset
from ltdet2.engine.derived import derived_dataset_builders, register_derived_datasets
from ltdet2.engine.model_input import evaluation_input
from ltdet2.engine.phases import load_config, resolve_phases, single_phase
from ltdet2.engine.train_loop import build_model

logger = logging.getLogger("detectron2")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
PANEL_SIZE = 512  # default drawn length of an image's longer side, in pixels
HEADER_FRACTION = 0.09  # height of a panel's label strip, relative to the panel's height
GROUP_NAMES = {"rare": "r", "common": "c", "frequent": "f", "r": "r", "c": "c", "f": "f"}
CLASS_COLORS = colormap(rgb=True, maximum=1)  # Detectron2's palette; class k gets colour k mod its length


@dataclass
class ModelSpec:
    """A model to draw: a phase of a (project) config and the checkpoint it is run with."""

    config_file: str
    phase: str | None
    checkpoint: str | None
    label: str | None = None

    @classmethod
    def parse(cls, text):
        """``CONFIG:CHECKPOINT`` or ``CONFIG:PHASE:CHECKPOINT``."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"--compare {text!r}: expected CONFIG:CHECKPOINT or CONFIG:PHASE:CHECKPOINT")
        return cls(parts[0], parts[1] if len(parts) == 3 else None, parts[-1])

    def default_label(self):
        name = os.path.splitext(os.path.basename(self.config_file))[0]
        return f"{name}:{self.phase}" if self.phase else name


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--phase", default=None, help="needed when the config has several phases")
    parser.add_argument("--checkpoint", default=None, help="default: the phase's final checkpoint")
    parser.add_argument(
        "--compare", action="append", default=[], metavar="CONFIG[:PHASE]:CHECKPOINT", help="another model's panel"
    )
    parser.add_argument(
        "--label", action="append", default=None, dest="labels", help="a model's panel title (one per model, in order)"
    )
    images = parser.add_mutually_exclusive_group()
    images.add_argument("--input", default=None, metavar="DIR", help="a folder of images")
    images.add_argument(
        "--classes",
        default=None,
        type=lambda text: text.split(","),
        help="rare | common | frequent or class names, comma-separated",
    )
    parser.add_argument("--dataset", default=None, help="registered dataset (default: the phase's test dataset)")
    parser.add_argument("--num-images", type=int, default=None, help="default: 8 dataset images, every file")
    parser.add_argument("--seed", type=int, default=0, help="of the choice of dataset images")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--max-detections", type=int, default=30, help="the highest-scoring ones per panel")
    parser.add_argument("--scale", type=float, default=None, help=f"default: longer side drawn at {PANEL_SIZE} px")
    parser.add_argument("--font-scale", type=float, default=1.5, help="on top of the Visualizer's font size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of every model's config")
    args = parser.parse_args(argv)
    if args.num_images is not None and args.num_images < 1:
        parser.error("--num-images must be >= 1")
    if args.scale is not None and args.scale <= 0:
        parser.error("--scale must be > 0")
    try:
        compared = [ModelSpec.parse(text) for text in args.compare]
    except ValueError as e:
        parser.error(str(e))
    args.models = [ModelSpec(args.config_file, args.phase, args.checkpoint), *compared]
    if args.labels is not None:
        if len(args.labels) != len(args.models):
            parser.error(f"--label: {len(args.labels)} given for {len(args.models)} models")
        for spec, label in zip(args.models, args.labels):
            spec.label = label
    return args


# --- models ------------------------------------------------------------------------------------------------


def load_model(spec, overrides, device):
    """(model in eval mode with the spec's checkpoint loaded, its phase), built as the phase runner builds it."""
    phases = resolve_phases(load_config(spec.config_file, [*overrides, f"train.device={device}"]))
    phase = single_phase(phases, spec.phase, config_file=spec.config_file, naming="(--phase, --compare)")
    checkpoint = spec.checkpoint or phase.final_checkpoint
    if "://" not in checkpoint and not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"{spec.default_label()}: checkpoint {checkpoint} is not a file")
    # model pieces may name the phase's derived training set: registering it reads no file
    register_derived_datasets(phase, phases, derived_dataset_builders(phase.cfg))
    model = build_model(phase.cfg)
    DetectionCheckpointer(model).load(checkpoint)
    logger.info(f"{spec.label or spec.default_label()}: {checkpoint}")
    return model.eval(), phase


def test_mapper(phase):
    """Detectron2's evaluation mapper with the phase's test resize and image format (annotations are dropped)."""
    augmentations, image_format = evaluation_input(phase.cfg)
    return DatasetMapper(is_train=False, augmentations=augmentations, image_format=image_format)


@torch.inference_mode()
def predict(model, mapper, record):
    """The model's ``Instances`` (on the CPU, in the image's own size) for one dataset record or file."""
    inputs = mapper({key: value for key, value in record.items() if key != "annotations"})
    return model([inputs])[0]["instances"].to("cpu")


# --- images --------------------------------------------------------------------------------------------------


def phase_test_dataset(phase):
    names = phase.cfg.dataloader.test.dataset.names
    names = [names] if isinstance(names, str) else list(names)
    if len(names) != 1:
        raise ValueError(f"phase {phase.name!r} tests on {names}: name one with --dataset")
    return names[0]


def check_dataset(name):
    if name not in DatasetCatalog.list():
        registered = sorted(DatasetCatalog.list())
        raise KeyError(f"dataset {name!r} is not registered (registered: {registered})")


def frequency_groups(dataset):
    """[C] 'r' / 'c' / 'f' of the dataset's classes (training image counts), or None without LVIS metadata."""
    try:
        return lvis_meta_from_dataset(dataset).frequency
    except (ValueError, KeyError, FileNotFoundError, AttributeError) as e:
        logger.info(f"dataset {dataset!r}: no frequency groups ({e})")
        return None


def selected_classes(classes, class_names, frequency, dataset):
    """Contiguous ids of ``classes``: frequency groups (rare, common, frequent) or class names."""
    ids = set()
    for item in classes:
        if item in GROUP_NAMES:
            if frequency is None:
                raise ValueError(f"--classes {item}: dataset {dataset!r} has no frequency groups; name classes")
            ids.update(np.flatnonzero(np.asarray(frequency) == GROUP_NAMES[item]).tolist())
        elif item in class_names:
            ids.add(class_names.index(item))
        else:
            raise ValueError(
                f"--classes {item!r}: not a frequency group {sorted(GROUP_NAMES)} nor a class of dataset {dataset!r}"
            )
    return ids


def dataset_records(dataset, num_images, seed, class_ids=None):
    """``num_images`` records of the dataset drawn with ``seed`` (in dataset order) among those holding one of
    ``class_ids`` (None: all)."""
    records = DatasetCatalog.get(dataset)
    if class_ids is not None:
        records = [r for r in records if any(a["category_id"] in class_ids for a in r.get("annotations", ()))]
        if not records:
            raise ValueError(f"dataset {dataset!r}: no image holds the selected classes {sorted(class_ids)}")
    chosen = sorted(random.Random(seed).sample(range(len(records)), min(num_images, len(records))))
    return [records[i] for i in chosen]


def folder_records(folder, num_images=None):
    """Records (``file_name``) of the images of a folder, sorted by name, the first ``num_images``."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--input {folder}: not a folder")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"--input {folder}: no image file ({', '.join(IMAGE_EXTENSIONS)})")
    return [{"file_name": os.path.join(folder, f)} for f in files[:num_images]]


# --- drawing -------------------------------------------------------------------------------------------------


@dataclass
class Style:
    class_names: list
    frequency: np.ndarray | None
    scale: float
    font_scale: float = 1.0

    def labels(self, classes, scores=None):
        names = [
            f"(r) {name}" if self.frequency is not None and self.frequency[k] == "r" else name  # first: never clipped
            for k, name in enumerate(self.class_names)
        ]
        return _create_text_labels(classes, scores, names)

    def colors(self, classes):
        return [CLASS_COLORS[k % len(CLASS_COLORS)] for k in classes]

    def draw(self, image, boxes, classes, scores=None, masks=None):
        """``image`` (RGB, HxWx3) with the instances drawn: boxes [N, 4] XYXY in the image's pixels."""
        visualizer = Visualizer(image, scale=self.scale, font_size_scale=self.font_scale)
        out = visualizer.overlay_instances(
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=self.labels(classes, scores),
            masks=masks,
            assigned_colors=self.colors(classes),
        )
        return out.get_image()


def draw_ground_truth(style, image, record, with_masks):
    annotations = [a for a in record.get("annotations", ()) if not a.get("iscrowd", 0)]
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
    masks = (
        [a["segmentation"] for a in annotations]
        if with_masks and all("segmentation" in a for a in annotations)
        else None
    )
    return style.draw(image, boxes, [a["category_id"] for a in annotations], masks=masks)


def draw_predictions(style, image, instances, score_threshold, max_detections):
    keep = torch.nonzero(instances.scores >= score_threshold).flatten()[:max_detections]  # scores descend
    instances = instances[keep]
    masks = instances.pred_masks.numpy() if instances.has("pred_masks") and len(instances) else None
    return style.draw(
        image, instances.pred_boxes.tensor.numpy(), instances.pred_classes.tolist(), instances.scores.tolist(), masks
    )


def with_header(panel, text, font_scale=1.0):
    """``panel`` (HxWx3) under a dark strip holding ``text``, drawn by the Visualizer."""
    height, width = panel.shape[:2]
    strip = np.full((max(round(height * HEADER_FRACTION), 16), width, 3), 40, dtype=np.uint8)
    visualizer = Visualizer(strip, scale=1.0)
    font_size = 0.45 * strip.shape[0] * 72 / visualizer.output.dpi * font_scale  # points: ~45% of the strip
    visualizer.draw_text(text, (width / 2, strip.shape[0] * 0.18), font_size=font_size, color="white")
    return np.concatenate([visualizer.output.get_image(), panel], axis=0)


def side_by_side(panels):
    """Panels of one height next to each other: width = the sum of their widths."""
    return np.concatenate(panels, axis=1)


def output_name(record, index):
    if "file_name" in record:
        return os.path.splitext(os.path.basename(record["file_name"]))[0] + ".png"
    return f"{record.get('image_id', index)}.png"


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="detectron2")
    models = [load_model(spec, args.overrides, args.device) for spec in args.models]
    first_phase = models[0][1]
    dataset = args.dataset or phase_test_dataset(first_phase)
    check_dataset(dataset)
    class_names = list(MetadataCatalog.get(dataset).thing_classes)
    frequency = frequency_groups(dataset)
    if args.input:
        records = folder_records(args.input, args.num_images)
    else:
        class_ids = None if args.classes is None else selected_classes(args.classes, class_names, frequency, dataset)
        records = dataset_records(dataset, args.num_images or 8, args.seed, class_ids)
    mappers = [test_mapper(phase) for _, phase in models]
    labels = [spec.label or spec.default_label() for spec in args.models]

    os.makedirs(args.output, exist_ok=True)
    written = []
    for index, record in enumerate(records):
        image = read_image(record["file_name"], format="RGB")
        scale = args.scale or max(1.0, PANEL_SIZE / max(image.shape[:2]))
        style = Style(class_names, frequency, scale, args.font_scale)
        predictions = [predict(model, mapper, record) for (model, _), mapper in zip(models, mappers)]
        panels = [
            with_header(draw_predictions(style, image, p, args.score_threshold, args.max_detections), label)
            for p, label in zip(predictions, labels)
        ]
        if "annotations" in record:
            with_masks = any(p.has("pred_masks") for p in predictions)
            panels.insert(0, with_header(draw_ground_truth(style, image, record, with_masks), "ground truth"))
        path = os.path.join(args.output, output_name(record, index))
        Image.fromarray(side_by_side(panels)).save(path, optimize=True)
        logger.info(f"{record['file_name']} -> {path}")
        written.append(path)
    logger.info(f"{len(written)} images written to {args.output}")
    return written


if __name__ == "__main__":
    main()
