"""Writing a whole LT-Shapes dataset folder: images, the two LVIS json files and the ``DONE`` marker.

Folder layout (:func:`dataset_paths`): ``train/*.png``, ``val/*.png``, ``lt_shapes_train.json``,
``lt_shapes_val.json`` and ``DONE`` (json: hash, seed, version, spec), written last.
"""

import contextlib
import logging
import os
import shutil
import time

import numpy as np

from ...utils.json_io import read_json, write_json_atomic
from ..categories import FREQUENCY_GROUPS, class_counts, frequency_from_image_count
from .plan import plan_class_targets, plan_split
from .render import render_split
from .spec import GENERATOR_VERSION, LTShapesSpec, class_attributes, class_names, spec_hash

__all__ = ["TRAIN_JSON", "VAL_JSON", "DONE_FILE", "dataset_paths", "is_complete", "generate"]

logger = logging.getLogger(__name__)

TRAIN_JSON = "lt_shapes_train.json"
VAL_JSON = "lt_shapes_val.json"
DONE_FILE = "DONE"


def dataset_paths(out_dir: str) -> dict:
    """Paths of the dataset in ``out_dir``: root, image_root (root with a trailing separator, which
    Detectron2's ``load_lvis_json`` prefixes to ``<split>/<name>``), train_json, val_json,
    train_images, val_images, done."""
    out_dir = os.path.abspath(out_dir)
    return {
        "root": out_dir,
        "image_root": out_dir + os.sep,
        "train_json": os.path.join(out_dir, TRAIN_JSON),
        "val_json": os.path.join(out_dir, VAL_JSON),
        "train_images": os.path.join(out_dir, "train"),
        "val_images": os.path.join(out_dir, "val"),
        "done": os.path.join(out_dir, DONE_FILE),
    }


def is_complete(out_dir: str, seed: int = 0, spec: LTShapesSpec | None = None) -> bool:
    """True when ``out_dir`` holds a finished generation for exactly this seed and spec."""
    spec = spec or LTShapesSpec()
    p = dataset_paths(out_dir)
    try:
        done = read_json(p["done"], what="LT-Shapes DONE marker")
    except (OSError, ValueError):
        return False
    return (
        isinstance(done, dict)
        and done.get("hash") == spec_hash(spec, seed)
        and os.path.isfile(p["train_json"])
        and os.path.isfile(p["val_json"])
    )


def _annotation_counts(annotations: list, num_classes: int):
    """(image_count [C], instance_count [C]) of LVIS annotation records."""
    return class_counts([a["image_id"] for a in annotations], [a["category_id"] - 1 for a in annotations], num_classes)


def generate(out_dir: str, seed: int = 0, spec: LTShapesSpec | None = None) -> dict:
    """Generate LT-Shapes into ``out_dir`` (replacing whatever LT-Shapes output is there).

    The same (seed, spec) gives byte-identical files. Raises RuntimeError if a class's realised
    training image count leaves its intended frequency group.

    Returns:
        :func:`dataset_paths` of ``out_dir``.
    """
    spec = spec or LTShapesSpec()
    t0 = time.perf_counter()
    p = dataset_paths(out_dir)
    os.makedirs(p["root"], exist_ok=True)
    # the DONE marker goes first and comes back last: an interrupted run is never taken as complete
    with contextlib.suppress(FileNotFoundError):
        os.remove(p["done"])
    for key in ("train_images", "val_images"):
        shutil.rmtree(p[key], ignore_errors=True)
    for key in ("train_json", "val_json"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(p[key])

    C = spec.num_classes
    names = class_names(spec)
    targets, groups = plan_class_targets(spec, seed)
    class_rank = np.argsort(np.argsort(-targets, kind="stable"), kind="stable")  # 0 = most frequent
    h = spec_hash(spec, seed)

    train_plan = plan_split(spec, seed, "train")
    train_images, train_anns, train_dropped = render_split(p["root"], "train", train_plan, spec, seed, class_rank)
    image_count, instance_count = _annotation_counts(train_anns, C)
    realised = frequency_from_image_count(image_count)
    wrong = np.nonzero((realised != groups) | (image_count == 0))[0]
    if len(wrong):
        raise RuntimeError(
            "LT-Shapes: realised training image counts left the intended frequency group for classes "
            + ", ".join(f"{names[i]} (intended {groups[i]}, {image_count[i]} images)" for i in wrong[:10])
            + f" ({len(wrong)} in total); spec {spec}, seed {seed}"
        )

    categories = [
        {
            "id": i + 1,
            "name": name,
            "synset": name,
            "synonyms": [name],
            "def": f"a {color} {shape} with {fill_kind} fill",
            "frequency": str(groups[i]),
            "image_count": int(image_count[i]),
            "instance_count": int(instance_count[i]),
        }
        for i, (name, (shape, color, fill_kind)) in enumerate(zip(names, class_attributes(spec)))
    ]
    info = {
        "description": "LT-Shapes: procedurally rendered long-tailed shapes (ltdet2)",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "spec": spec.to_dict(),
        "spec_hash": h,
    }

    val_plan = plan_split(spec, seed, "val")
    val_images, val_anns, val_dropped = render_split(p["root"], "val", val_plan, spec, seed, class_rank)
    _, val_instances = _annotation_counts(val_anns, C)

    for key, split, imgs, anns in (
        ("train_json", "train", train_images, train_anns),
        ("val_json", "val", val_images, val_anns),
    ):
        # the val json carries the TRAIN counts and frequency groups, like LVIS val
        write_json_atomic(
            p[key],
            {
                "info": dict(info, split=split),
                "licenses": [],
                "images": imgs,
                "annotations": anns,
                "categories": categories,
            },
            separators=(",", ":"),
        )
    write_json_atomic(
        p["done"], {"hash": h, "seed": int(seed), "version": GENERATOR_VERSION, "spec": spec.to_dict()}, sort_keys=True
    )

    dt = time.perf_counter() - t0
    per_group = "; ".join(
        f"{g}: {int((groups == g).sum())} classes, train images/class "
        f"{int(image_count[groups == g].min()) if (groups == g).any() else 0}-"
        f"{int(image_count[groups == g].max()) if (groups == g).any() else 0}, "
        f"{int(instance_count[groups == g].sum())} train instances"
        for g in FREQUENCY_GROUPS
    )
    logger.info(
        "Generated LT-Shapes (seed %d, %d classes) in %s in %.1f s: train %d images / %d instances, "
        "val %d images / %d instances (min %d per class); %s; objects dropped (no room to place "
        "without overlap): train %d, val %d",
        seed,
        C,
        p["root"],
        dt,
        len(train_images),
        len(train_anns),
        len(val_images),
        len(val_anns),
        int(val_instances.min()) if C and val_anns else 0,
        per_group,
        train_dropped,
        val_dropped,
    )
    if spec.num_val and C and int(val_instances.min()) < spec.val_min_instances:
        logger.warning(
            "LT-Shapes val: class %s has only %d instances (< %d)",
            names[int(val_instances.argmin())],
            int(val_instances.min()),
            spec.val_min_instances,
        )
    return p
