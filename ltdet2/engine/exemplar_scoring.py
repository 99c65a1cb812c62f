"""Exemplar scoring: every annotation of a dataset scored by a trained detector (step-wise, issues #12, #31).

A model with an ``annotation_scores(inputs, score)`` method scores the annotations itself (e.g.
:meth:`~ltdet2.modeling.meta_arch.DeformableDETR.annotation_scores`: the Hungarian-matched query's sigmoids, as the
official code). Otherwise the model is an R-CNN scored by its box head: each ground-truth box is used as an RoI of
its own image: backbone -> ``roi_heads.box_pooler`` on the GT boxes (in the coordinates of the resized image the
model sees) -> ``box_head`` -> ``box_predictor``; the class probabilities come from the predictor's own scoring
(``predict_class_probabilities`` of :class:`~ltdet2.modeling.LongTailOutputLayers`, else Detectron2's softmax /
``use_sigmoid_ce`` sigmoid), background at column C. The score of an annotation is

- ``"max_foreground"`` (official code, ``models/deformable_detr_data.py:354-356``, there the matched query's max
  sigmoid): the largest foreground probability, whatever the class;
- ``"ground_truth"`` (option): the probability of the annotation's own class.

The result is a table: a dict of 1-D numpy arrays ``annotation_id``, ``image_id``, ``category_id`` (json ids) and
``score`` (float32 probabilities in [0, 1]), one entry per annotation, in dataset order (images as the dataset lists
them, annotations in file order). Tables are written with what produced them (:func:`save_score_table`) and refused
when read back for another dataset or model (:func:`load_score_table`).
"""

import datetime
import json
import logging
import os
import time
import zipfile

import numpy as np
import torch
from torch.nn import functional as F

import detectron2.data.transforms as T
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.data import detection_utils as utils
from detectron2.structures import Boxes, BoxMode
from detectron2.utils import comm
from detectron2.utils.logger import log_every_n_seconds

from ltdet2.data.datasets import dataset_category_ids, dataset_dicts_with_annotation_ids

__all__ = [
    "SCORE_MODES",
    "TABLE_COLUMNS",
    "AnnotationBoxMapper",
    "score_annotations",
    "class_probabilities",
    "save_score_table",
    "load_score_table",
    "ScoreTableMismatch",
    "ScoreTableDamaged",
]

logger = logging.getLogger("detectron2")

SCORE_MODES = ("max_foreground", "ground_truth")
TABLE_COLUMNS = ("annotation_id", "image_id", "category_id", "score")


class AnnotationBoxMapper:
    """A test-time mapper that keeps the annotations: the image resized by ``augmentations`` (the test mapper's,
    e.g. ``ResizeShortestEdge``; none: native size) and every annotation's box mapped by the same transform.

    Returns ``{"image": uint8 [3, H, W], "height", "width", "image_id", "boxes": float32 [G, 4] XYXY in the
    resized image, "classes": int64 [G] contiguous, "annotation_ids": int64 [G]}`` (Detectron2's
    ``DatasetMapper(is_train=False)`` drops the annotations)."""

    def __init__(self, *, augmentations=(), image_format="BGR"):
        self.augmentations = T.AugmentationList(list(augmentations or ()))
        self.image_format = image_format

    def __call__(self, dataset_dict):
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        annotations = dataset_dict.get("annotations", [])
        missing = [i for i, a in enumerate(annotations) if "id" not in a]
        if missing:
            raise ValueError(
                f"image {dataset_dict.get('image_id')} ({dataset_dict['file_name']}): annotations {missing[:5]} "
                f"have no 'id'; scoring needs the json annotation ids (ltdet2.data.load_lvis_format_json keeps them; "
                f"score_annotations recovers them for a dataset with a json_file, "
                f"ltdet2.data.dataset_dicts_with_annotation_ids)"
            )
        boxes = np.asarray([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
        modes = {a["bbox_mode"] for a in annotations}
        if len(modes) == 1:
            boxes = BoxMode.convert(boxes, modes.pop(), BoxMode.XYXY_ABS)
        elif modes:
            boxes = np.asarray([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations])
        boxes = transforms.apply_box(boxes).reshape(-1, 4)
        height, width = image.shape[:2]
        boxes = boxes.clip(0, [width, height, width, height])
        return {
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": dataset_dict["height"],
            "width": dataset_dict["width"],
            "image_id": dataset_dict["image_id"],
            "boxes": torch.as_tensor(boxes, dtype=torch.float32),
            "classes": torch.as_tensor([a["category_id"] for a in annotations], dtype=torch.int64),
            "annotation_ids": torch.as_tensor([a["id"] for a in annotations], dtype=torch.int64),
        }


def class_probabilities(box_predictor, logits):
    """``[N, C+1]`` class probabilities (background column C) from ``[N, C+1]`` logits with the predictor's
    own test-time scoring: ``predict_class_probabilities`` when it has one (ltdet2's
    :class:`~ltdet2.modeling.LongTailOutputLayers`: softmax or BACL's sigmoid with a background channel),
    else Detectron2's :class:`FastRCNNOutputLayers` scoring (softmax; sigmoid with ``use_sigmoid_ce``)."""
    if hasattr(box_predictor, "predict_class_probabilities"):
        return box_predictor.predict_class_probabilities(logits)
    if getattr(box_predictor, "use_sigmoid_ce", False):
        return logits.sigmoid()
    return F.softmax(logits, dim=-1)


def _box_scores(model, inputs, score):
    """Scores ([sum G_i] float tensor) of the ``boxes`` of a batch of :class:`AnnotationBoxMapper` outputs."""
    heads = model.roi_heads
    images = model.preprocess_image(inputs)
    features = model.backbone(images.tensor)
    boxes = [Boxes(x["boxes"].to(images.tensor.device)) for x in inputs]
    box_features = heads.box_pooler([features[f] for f in heads.box_in_features], boxes)
    logits, _ = heads.box_predictor(heads.box_head(box_features))
    probs = class_probabilities(heads.box_predictor, logits)
    if score == "max_foreground":
        return probs[:, :-1].max(dim=1).values
    classes = torch.cat([x["classes"] for x in inputs]).to(probs.device)
    return probs.gather(1, classes[:, None])[:, 0]


def _category_json_ids(dataset_name):
    """``[C]`` json category id of each contiguous index (:func:`ltdet2.data.dataset_category_ids`: ltdet2's
    registrations, a ``thing_dataset_id_to_contiguous_id``, or Detectron2's LVIS ``category_id - 1``); None
    (identity) for a dataset with none of them."""
    metadata = MetadataCatalog.get(dataset_name)
    if not metadata.get("thing_dataset_id_to_contiguous_id", None) and metadata.get("evaluator_type", None) != "lvis":
        return None
    return dataset_category_ids(dataset_name)


def score_annotations(
    model,
    dataset_name,
    *,
    mapper_augmentations=None,
    score="max_foreground",
    image_format="BGR",
    batch_size=4,
    num_workers=0,
    distributed=None,
):
    """Scores every annotation of the registered dataset ``dataset_name`` with ``model`` (its ``annotation_scores``
    or its box head: module docstring). Runs under ``torch.no_grad()`` with the model in eval mode (its mode is
    restored after).

    Args:
        model: a model with ``annotation_scores(inputs, score) -> [sum G_i]`` (inputs: a batch of
            :class:`AnnotationBoxMapper` outputs), or a :class:`GeneralizedRCNN`-like model (``preprocess_image``,
            ``backbone``, and ``roi_heads`` with ``box_pooler``, ``box_head``, ``box_predictor``,
            ``box_in_features``); a DDP wrapper is unwrapped.
        mapper_augmentations: the test mapper's augmentations (the resize); None: images at their native size.
        score: ``"max_foreground"`` (official code) or ``"ground_truth"`` (option).
        batch_size: images per forward pass (per process).
        distributed: shard the images over the ranks and gather the table on the main process, like
            ``inference_on_dataset`` (a collective: every rank calls it). None: when there are several processes.
            False: this process scores every image (e.g. called on the main process only).
    Returns:
        The table (dict of numpy columns :data:`TABLE_COLUMNS`) on the main process (every process when not
        distributed); None on the other ranks.
    """
    if score not in SCORE_MODES:
        raise ValueError(f"score_annotations: score must be one of {SCORE_MODES}, got {score!r}")
    model = getattr(model, "module", model)  # DDP
    scorer = getattr(model, "annotation_scores", None)
    if scorer is None:
        heads = getattr(model, "roi_heads", None)
        missing = [k for k in ("box_pooler", "box_head", "box_predictor", "box_in_features") if not hasattr(heads, k)]
        if missing:
            raise TypeError(
                f"score_annotations: {type(model).__name__} has no annotation_scores method and its roi_heads has no "
                f"{missing} (R-CNN box head needed)"
            )
    if distributed is None:
        distributed = comm.get_world_size() > 1
    # Detectron2's load_lvis_json drops the json annotation ids: recovered from its json_file
    dataset = [d for d in dataset_dicts_with_annotation_ids(dataset_name) if d.get("annotations")]
    mapper = AnnotationBoxMapper(augmentations=mapper_augmentations, image_format=image_format)
    sampler = None if distributed else torch.utils.data.SequentialSampler(range(len(dataset)))
    loader = build_detection_test_loader(
        dataset, mapper=mapper, sampler=sampler, batch_size=batch_size, num_workers=num_workers
    )
    total = len(loader)
    logger.info(f"Scoring the annotations of {dataset_name} ({score}): {len(dataset)} images in {total} batches")
    columns = {k: [] for k in TABLE_COLUMNS}
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for index, inputs in enumerate(loader):
                scores = scorer(inputs, score) if scorer is not None else _box_scores(model, inputs, score)
                columns["score"].append(scores.float().cpu())
                columns["annotation_id"].append(torch.cat([x["annotation_ids"] for x in inputs]))
                columns["category_id"].append(torch.cat([x["classes"] for x in inputs]))
                columns["image_id"].append(
                    torch.as_tensor([x["image_id"] for x in inputs]).repeat_interleave(
                        torch.as_tensor([len(x["boxes"]) for x in inputs])
                    )
                )
                done = index + 1
                seconds_per_batch = (time.perf_counter() - start) / done
                eta = datetime.timedelta(seconds=int(seconds_per_batch * (total - done)))
                log_every_n_seconds(
                    logging.INFO,
                    f"Scoring annotations: done {done}/{total}. Total: {seconds_per_batch:.4f} s/batch. ETA={eta}",
                    n=5,
                    name="detectron2",
                )
    finally:
        model.train(was_training)
    table = {
        k: (torch.cat(v).numpy() if v else np.zeros(0, dtype=np.float32 if k == "score" else np.int64))
        for k, v in columns.items()
    }
    if distributed and comm.get_world_size() > 1:
        shards = comm.gather(table, dst=0)
        if not comm.is_main_process():
            return None
        table = {k: np.concatenate([shard[k] for shard in shards]) for k in TABLE_COLUMNS}
    json_ids = _category_json_ids(dataset_name)
    if json_ids is not None:
        table["category_id"] = json_ids[table["category_id"]]
    logger.info(
        f"Scored {len(table['score'])} annotations of {dataset_name} in "
        f"{datetime.timedelta(seconds=int(time.perf_counter() - start))}"
    )
    return table


# --- the table on disk ----------------------------------------------------------------------------------------


class ScoreTableMismatch(ValueError):
    """A score table file was produced by another dataset, model or score mode than expected."""


class ScoreTableDamaged(ValueError):
    """A score table file cannot be read as one (cut short, empty, not an ``.npz``, an array or its identity
    missing, arrays of different lengths): a cache to compute again."""


# what reading a damaged .npz raises: cut short or not a zip (BadZipFile), empty (EOFError), not an .npz or an
# unreadable identity (ValueError), a missing array (KeyError), a read error (OSError)
_READ_ERRORS = (zipfile.BadZipFile, EOFError, ValueError, KeyError, OSError)


def save_score_table(path, table, identity):
    """Writes ``table`` with ``identity`` (a JSON-able dict: what produced it) to ``path`` (``.npz``), atomically."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}.npz"
    try:
        np.savez(tmp, identity=np.array(json.dumps(identity, sort_keys=True)), **{k: table[k] for k in TABLE_COLUMNS})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_score_table(path, *, expect=None):
    """The table stored at ``path`` (see :func:`save_score_table`).

    Args:
        expect: the identity the table must have (e.g. ``DerivedDatasetContext.table_identity``); a table
            produced by another dataset, dataset json, checkpoint or score mode raises
            :class:`ScoreTableMismatch` naming the file and what differs.
    Raises:
        FileNotFoundError: no file at ``path``.
        ScoreTableDamaged: a file that cannot be read as a table, naming it and the read error.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"score table file not found: {path}")
    try:
        identity, table = _read_table(path)
    except _READ_ERRORS as e:
        raise ScoreTableDamaged(f"score table file {path} is damaged ({type(e).__name__}: {e})") from e
    if expect is not None:
        expect = json.loads(json.dumps(expect))  # the JSON form, as stored
        differing = sorted(k for k in set(identity) | set(expect) if identity.get(k) != expect.get(k))
        if differing:
            details = "; ".join(f"{k}: file has {identity.get(k)!r}, expected {expect.get(k)!r}" for k in differing)
            raise ScoreTableMismatch(
                f"score table file {path} comes from another {_what_differs(differing)} ({details})"
            )
    return table


def _read_table(path):
    """(identity dict, table) of a score table file; one of :data:`_READ_ERRORS` when it is not one."""
    with np.load(path, allow_pickle=False) as stored:
        identity = json.loads(str(stored["identity"]))
        table = {k: stored[k] for k in TABLE_COLUMNS}
    if not isinstance(identity, dict):
        raise ValueError(f"its identity is {type(identity).__name__}, not a dict")
    lengths = {k: v.shape for k, v in table.items()}
    if len(set(lengths.values())) > 1 or any(len(shape) != 1 for shape in lengths.values()):
        raise ValueError(f"its arrays are not 1-D of one length: {lengths}")
    return identity, table


def _what_differs(keys):
    names = {"dataset": "dataset", "dataset_json": "dataset", "checkpoint": "model", "phase": "model"}
    return " and ".join(sorted({names.get(k, k) for k in keys}))
