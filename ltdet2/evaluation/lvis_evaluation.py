# Copyright (c) ltdet2 authors. Evaluation code modelled on detectron2/evaluation/lvis_evaluation.py.
"""
LVIS-style evaluation (AP, AP50, AP75, APs/m/l, APr/c/f and per-class AP) with
faster-coco-eval's C++ engine in LVIS mode, numerically matching the official ``lvis`` API.

Semantics reproduced from the official LVIS API (lvis 0.5.3):

* at most ``max_dets`` (300) detections per image over all categories, top scores kept
  (``LVISResults.limit_dets_per_image``);
* federated filtering: a detection of category c in image i is evaluated only if c is
  annotated in i or listed in i's ``neg_category_ids``; unmatched detections of a category in
  i's ``not_exhaustive_category_ids`` are ignored;
* IoU thresholds .50:.05:.95, 101 recall points, area ranges all/small/medium/large
  (box area w*h for bbox results, mask area for segm results);
* APr/APc/APf average the categories whose ``frequency`` is "r"/"c"/"f".

Optionally (``instance_buckets=True``), AP by training instance-count buckets as LST reports it
(Hu et al., CVPR 2020, Tab. 1): ``AP(0,1]``, ``AP(0,5]``, ``AP(0,10]``, ``AP[10,100)``,
``AP[100,1000)``, ``AP[1000,-)`` over the categories whose ``instance_count`` (training
instances, stored in the ground truth's categories like ``frequency``) is in the interval;
computed like APr/c/f (the official API's AP with ``cat_ids`` restricted to the bucket).

All AP values are returned in percent, NaN where undefined (like Detectron2).

Engine paths: bbox results (a list of dicts or an ``[N, 7]`` array) are reduced to numpy
columns and limited per image with numpy; with faster-coco-eval 1.8.x,
:mod:`ltdet2.evaluation.fast_lvis_feed` feeds its C++ engine from the columns (less time and
memory); otherwise, and for segm, faster-coco-eval's public LVIS path (``COCO.loadRes`` +
``COCOeval_faster(lvis_style=True)``) evaluates them. Both give the same numbers.
"""

import itertools
import logging
import math
import os
from collections import OrderedDict
from numbers import Number

import numpy as np
import torch

from detectron2.data import MetadataCatalog
from detectron2.evaluation.lvis_evaluation import LVISEvaluator
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from ltdet2.data.datasets import evaluation_ground_truth
from ltdet2.utils.json_io import read_json, write_json_atomic

from . import fast_lvis_feed

__all__ = [
    "INSTANCE_COUNT_BUCKETS",
    "LVIS_METRICS",
    "LVIS_GROUND_TRUTH_FIELDS",
    "LTLVISEvaluator",
    "COCOFormatGroundTruth",
    "coco_format_advice",
    "json_lacks_lvis_fields",
    "evaluate_lvis",
    "load_lvis_gt",
    "load_lvis_results",
    "RESULT_ARRAY_COLUMNS",
]

logger = logging.getLogger(__name__)

LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
_IOU_TYPES = ("bbox", "segm")
# LST's training instance-count buckets (interval notation: "(" / ")" open, "[" / "]" closed, "-" unbounded);
# the metric of bucket B is "AP" + B. The buckets overlap ((0,1] is inside (0,5]), as in the LST paper.
INSTANCE_COUNT_BUCKETS = ("(0,1]", "(0,5]", "(0,10]", "[10,100)", "[100,1000)", "[1000,-)")
# columns of an [N, 7] bbox results array, as faster-coco-eval's COCO.loadNumpyAnnotations
RESULT_ARRAY_COLUMNS = ("image_id", "x", "y", "w", "h", "score", "category_id")


# ----------------------------------------------------------------------------------------
# loading and validation
# ----------------------------------------------------------------------------------------
# what an LVIS json has and a COCO one has not: each image's negative and non-exhaustive categories, each category's
# frequency group
LVIS_GROUND_TRUTH_FIELDS = ("neg_category_ids", "not_exhaustive_category_ids", "frequency")


class COCOFormatGroundTruth(ValueError):
    """A COCO-format json (none of :data:`LVIS_GROUND_TRUTH_FIELDS`) given as LVIS ground truth."""


def coco_format_advice(what):
    """The one-line message for a COCO-format json (``what`` names it) given where LVIS ground truth is needed."""
    return (
        f"{what} is a COCO-format file, not LVIS (no image has neg_category_ids / not_exhaustive_category_ids, no "
        f"category a frequency): register it with ltdet2.data.register_lvis_format_dataset(name, json_file, "
        f"image_root), which evaluates a COCO file as exhaustively annotated, and evaluate that name "
        f"(LTLVISEvaluator(dataset_name=name); evaluate_lvis takes ltdet2.data.evaluation_ground_truth(name)), or use "
        f"Detectron2's COCOEvaluator for COCO metrics"
    )


def json_lacks_lvis_fields(path):
    """True when the json file at ``path`` holds none of :data:`LVIS_GROUND_TRUTH_FIELDS` as a key: a COCO-format
    file. The bytes are searched, the file is not parsed (cheap for LVIS-sized files; the search stops at the first
    field found)."""
    import mmap

    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return True
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return all(data.find(f'"{field}"'.encode()) < 0 for field in LVIS_GROUND_TRUTH_FIELDS)


def _lacks_lvis_fields(data):
    """True when the loaded json ``data`` has none of :data:`LVIS_GROUND_TRUTH_FIELDS` (a COCO-format file)."""
    images, categories = data.get("images") or [], data.get("categories") or []
    in_images = any(key in img for img in images[:1] for key in LVIS_GROUND_TRUTH_FIELDS[:2])
    return not in_images and not any("frequency" in c for c in categories)


def load_lvis_gt(gt_json):
    """
    Load LVIS ground truth into a faster-coco-eval ``COCO`` object.

    Args:
        gt_json (str | os.PathLike | dict | faster_coco_eval.COCO): path to an LVIS-format
            annotation json, the loaded dict, or an already loaded ``COCO`` (returned as is).

    Returns:
        faster_coco_eval.COCO
    """
    from faster_coco_eval import COCO  # lazy: heavy to import (its C++ engine), only needed to evaluate

    if isinstance(gt_json, COCO):
        return gt_json
    if isinstance(gt_json, (str, os.PathLike)):
        source = os.fspath(gt_json)
        data = read_json(source, "LVIS ground-truth")
    elif isinstance(gt_json, dict):
        source = "<dict>"
        # shallow copies: the engine adds keys to annotation dicts, not to the containers
        data = dict(gt_json)
    else:
        raise TypeError(f"gt_json must be a path, a dict or a faster_coco_eval.COCO, got {type(gt_json)}")
    if not isinstance(data, dict):
        raise ValueError(f"LVIS ground truth {source} must be a json object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"LVIS ground truth {source} has no '{key}' field")
    if data["images"] and _lacks_lvis_fields(data):
        raise COCOFormatGroundTruth(coco_format_advice(f"LVIS ground truth {source}"))
    for img in data["images"][:1]:
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            if key not in img:
                raise ValueError(
                    f"LVIS ground truth {source}: image {img.get('id')} has no '{key}' field "
                    "(is this an LVIS-format file?)"
                )
    bad = [c.get("id") for c in data["categories"] if c.get("frequency") not in ("r", "c", "f")]
    if bad:
        raise ValueError(f"LVIS ground truth {source}: categories {bad[:10]} have no valid 'frequency' (r/c/f)")
    gt = COCO(data)
    gt.annotation_file = source
    return gt


def load_lvis_results(results):
    """
    Args:
        results (str | os.PathLike | list[dict] | ndarray): LVIS results, a path to a results
            json, or an ``[N, 7]`` bbox results array (see :func:`evaluate_lvis`).

    Returns:
        list[dict] | ndarray: the result dicts (not copied), or the array as given (its shape
        and dtype checked).
    """
    if isinstance(results, np.ndarray):
        if results.ndim != 2 or results.shape[1] != len(RESULT_ARRAY_COLUMNS):
            raise ValueError(
                f"LVIS results <array>: an array of results must have shape [N, 7] "
                f"(columns {', '.join(RESULT_ARRAY_COLUMNS)}), got {list(results.shape)}"
            )
        if results.dtype.kind not in "iuf":
            raise ValueError(f"LVIS results <array>: array must be numeric, got dtype {results.dtype}")
        return results
    if isinstance(results, (str, os.PathLike)):
        source = os.fspath(results)
        results = read_json(source, "LVIS results")
    else:
        source = "<results>"
    if not isinstance(results, (list, tuple)):
        raise ValueError(
            f"LVIS results {source} must be a list of dicts (or a path to one, or an [N, 7] array), "
            f"got {type(results).__name__}"
        )
    return list(results)


def _validate_results(results, gt, iou_type, source):
    """
    Check every result dict; raise ValueError naming the offending ids/fields.

    Returns:
        (ndarray, ndarray, ndarray): image ids, category ids, scores (float64).
    """
    img_ids, cat_ids, scores, bad_fields = [], [], [], []
    need = ("image_id", "category_id", "score") + (("bbox",) if iou_type == "bbox" else ("segmentation",))
    for idx, r in enumerate(results):
        if not isinstance(r, dict):
            raise ValueError(f"LVIS results {source}: entry {idx} is a {type(r).__name__}, not a dict")
        try:
            img_ids.append(r["image_id"])
            cat_ids.append(r["category_id"])
            score = r["score"]
            geom = r["bbox"] if iou_type == "bbox" else r["segmentation"]
        except KeyError as e:
            raise ValueError(
                f"LVIS results {source}: entry {idx} lacks field {e} required for {iou_type} "
                f"evaluation (needs {list(need)})"
            ) from None
        scores.append(score)
        if not isinstance(score, Number) or isinstance(score, bool) or not math.isfinite(score):
            bad_fields.append((idx, "score", score))
        elif iou_type == "bbox" and (not isinstance(geom, (list, tuple)) or len(geom) != 4):
            bad_fields.append((idx, "bbox", geom))
        elif iou_type == "segm" and not (isinstance(geom, dict) and "counts" in geom and "size" in geom):
            bad_fields.append((idx, "segmentation", "not an RLE dict with 'counts' and 'size'"))
        if len(bad_fields) >= 5:
            break
    if bad_fields:
        desc = "; ".join(f"entry {i}: {k}={v!r}"[:200] for i, k, v in bad_fields)
        raise ValueError(f"LVIS results {source}: malformed entries: {desc}")
    _check_ids(set(img_ids), set(cat_ids), gt, source)
    return np.asarray(img_ids), np.asarray(cat_ids), np.asarray(scores, dtype=np.float64)


def _check_ids(img_ids, cat_ids, gt, source):
    """img_ids, cat_ids: sets of the ids used by the results."""
    unknown_img = set(img_ids) - set(gt.imgs)
    if unknown_img:
        raise ValueError(
            f"LVIS results {source}: {len(unknown_img)} image_id(s) not in the ground truth "
            f"{gt.annotation_file}: {sorted(unknown_img, key=str)[:20]}"
        )
    unknown_cat = set(cat_ids) - set(gt.cats)
    if unknown_cat:
        raise ValueError(
            f"LVIS results {source}: {len(unknown_cat)} category_id(s) not in the ground truth "
            f"{gt.annotation_file}: {sorted(unknown_cat, key=str)[:20]}"
        )


def _integer_ids(values, name, source):
    """Numeric array -> int64 array; ValueError if not all integral and finite."""
    if values.dtype.kind in "iu":
        return values.astype(np.int64, copy=False)
    ids = np.rint(values)
    bad = np.flatnonzero(~np.isfinite(values) | (ids != values))
    if bad.size:
        raise ValueError(
            f"LVIS results {source}: {name} must be integers; entries {bad[:5].tolist()} are {values[bad[:5]].tolist()}"
        )
    return ids.astype(np.int64)


def _columns_from_array(results, gt, source):
    """
    ``[N, 7]`` bbox results array (checked by :func:`load_lvis_results`) -> (image_id int64 [N],
    category_id int64 [N], bbox float64 [N, 4], score float64 [N]), validated against ``gt``.
    """
    img, box, score, cat = results[:, 0], results[:, 1:5], results[:, 5], results[:, 6]
    img = _integer_ids(img, "image_id", source)
    cat = _integer_ids(cat, "category_id", source)
    box = np.asarray(box, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    _check_finite(score, "score", source)
    _check_finite(box, "bbox", source)
    _check_ids(np.unique(img).tolist(), np.unique(cat).tolist(), gt, source)
    return img, cat, box, score


def _check_finite(values, name, source):
    """ValueError naming the first entries whose ``values`` ([N] or [N, 4]) are not all finite."""
    bad = np.flatnonzero(~np.isfinite(values).reshape(len(values), -1).all(axis=1))
    if bad.size:
        raise ValueError(
            f"LVIS results {source}: malformed entries: non-finite {name} at entries "
            f"{bad[:5].tolist()}: {values[bad[:5]].tolist()}"
        )


def _columns_from_dicts(results, gt, source):
    """Validated bbox result dicts -> the columns of :func:`_columns_from_array`."""
    img, cat, score = _validate_results(results, gt, "bbox", source)
    box = np.array([r["bbox"] for r in results], dtype=np.float64).reshape(-1, 4)
    _check_finite(box, "bbox", source)
    return img.astype(np.int64), cat.astype(np.int64), box, score


def _topk_per_image(img_ids, scores, max_dets):
    """
    Boolean mask of the ``max_dets`` highest-scoring results of each image, as
    ``lvis.LVISResults.limit_dets_per_image`` (stable for ties: earlier results win, like
    Python's sorted()). None if nothing is dropped.
    """
    if max_dets < 0 or len(img_ids) == 0:
        return None
    _, inverse, counts = np.unique(img_ids, return_inverse=True, return_counts=True)
    if counts.max() <= max_dets:
        return None
    order = np.lexsort((-scores, inverse))
    sorted_img = inverse[order]
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    rank = np.arange(len(order)) - starts[sorted_img]
    keep = np.zeros(len(img_ids), dtype=bool)
    keep[order[rank < max_dets]] = True
    return keep


def _limit_dets_per_image(results, img_ids, scores, max_dets):
    """List version of :func:`_topk_per_image`; the order of kept results is kept."""
    keep = _topk_per_image(img_ids, scores, max_dets)
    if keep is None:
        return results
    return [r for r, k in zip(results, keep) if k]


def _limit_columns_per_image(columns, max_dets):
    """:func:`_topk_per_image` on (image_id, category_id, bbox, score) columns."""
    img, _, _, score = columns
    keep = _topk_per_image(img, score, max_dets)
    return columns if keep is None else tuple(c[keep] for c in columns)


def _column_dicts(img, cat, box, score):
    """Result dicts (image_id, category_id, bbox, score) of bbox columns, one at a time."""
    for i, c, b, s in zip(img.tolist(), cat.tolist(), box.tolist(), score.tolist()):
        yield {"image_id": i, "category_id": c, "bbox": b, "score": s}


def _evaluable_pairs(gt):
    """Set of (image_id, category_id) whose detections LVIS evaluates (positive or negative)."""
    pairs = {(a["image_id"], a["category_id"]) for a in gt.anns.values()}
    for img_id, img in gt.imgs.items():
        pairs.update((img_id, c) for c in img.get("neg_category_ids", ()))
    return pairs


# ----------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------
def _to_percent(x):
    x = float(x)
    return x * 100 if x >= 0 else float("nan")


def _per_class_ap(precision, cat_ids):
    """
    Args:
        precision (ndarray): [T, R, K, A, M] precisions, -1 where undefined.
    Returns:
        ndarray: [K] AP in percent over IoU .50:.95, area "all", last maxDets; NaN if undefined.
    """
    p = precision[:, :, :, 0, -1].reshape(-1, len(cat_ids))
    valid = p > -1
    n = valid.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(valid, p, 0).sum(axis=0) / n * 100
    ap[n == 0] = np.nan
    return ap


def _bucket_mask(bucket, counts):
    """[K] bool: ``counts`` ([K] training instance counts) inside the interval ``bucket`` (e.g. "[10,100)")."""
    lo, hi = bucket[1:-1].split(",")
    inside = counts > int(lo) if bucket[0] == "(" else counts >= int(lo)
    if hi != "-":
        inside &= counts <= int(hi) if bucket[-1] == "]" else counts < int(hi)
    return inside


def _instance_counts(gt):
    """[K] training instance counts of the categories of ``gt`` (sorted ids); ValueError naming those without."""
    cat_ids = sorted(gt.cats)
    missing = [c for c in cat_ids if not isinstance(gt.cats[c].get("instance_count"), Number)]
    if missing:
        raise ValueError(
            f"LVIS ground truth {gt.annotation_file}: categories {missing[:10]} have no 'instance_count' "
            f"({len(missing)} of {len(cat_ids)}); AP by instance-count bucket needs the training instance "
            "count of every category"
        )
    return np.array([gt.cats[c]["instance_count"] for c in cat_ids], dtype=np.int64)


def _bucket_ap(precision, counts):
    """
    Args:
        precision (ndarray): [T, R, K, A, M] precisions, -1 where undefined.
        counts (ndarray): [K] training instance counts.
    Returns:
        dict: "AP" + bucket -> AP in percent over the bucket's categories (mean of their defined
        precisions, IoU .50:.95, area "all", last maxDets, as the official API's APr/c/f); NaN if
        no category of the bucket has ground truth.
    """
    out = {}
    for bucket in INSTANCE_COUNT_BUCKETS:
        p = precision[:, :, _bucket_mask(bucket, counts), 0, -1]
        p = p[p > -1]
        out["AP" + bucket] = float(p.mean()) * 100 if p.size else float("nan")
    return out


def _evaluate_public(gt, results, iou_type, max_dets):
    """
    faster-coco-eval's public LVIS path: ``COCO.loadRes`` + ``COCOeval_faster(lvis_style=True)``.

    Args:
        results (iterable[dict]): validated results, at most ``max_dets`` per image (the
            engine limits per image x category only); not modified.

    Returns:
        COCOeval_faster: evaluated, accumulated and summarized.
    """
    from faster_coco_eval import COCOeval_faster  # lazy: heavy to import (its C++ engine), only needed to evaluate

    # Federated filtering (after the per-image limit, as the official API): keep a detection
    # only if its category is annotated in, or verified absent from, its image. The engine
    # does the same, but doing it here saves work and avoids faster-coco-eval 1.8 failing
    # on segm results for images whose detections are all filtered out.
    # Copies carry only the fields the engine needs.
    evaluable = _evaluable_pairs(gt)
    if iou_type == "bbox":
        # a shared placeholder stops loadRes from building a box polygon per result
        no_poly = []
        results = [
            {"image_id": r["image_id"], "category_id": r["category_id"], "bbox": r["bbox"],
             "score": r["score"], "segmentation": no_poly}
            for r in results
            if (r["image_id"], r["category_id"]) in evaluable
        ]  # fmt: skip
    else:
        # As Detectron2: no "bbox", so that mask AP uses the mask area for s/m/l ranges.
        results = [
            {"image_id": r["image_id"], "category_id": r["category_id"],
             "segmentation": r["segmentation"], "score": r["score"]}
            for r in results
            if (r["image_id"], r["category_id"]) in evaluable
        ]  # fmt: skip
    dt = gt.loadRes(results)
    # silence the engine's progress prints (logger.info by default); keep them at debug level
    coco_eval = COCOeval_faster(gt, dt, iouType=iou_type, lvis_style=True, print_function=logger.debug)
    coco_eval.params.maxDets = [max_dets if max_dets >= 0 else max(len(results), 1)]
    coco_eval.params.catIds = sorted(gt.cats)
    coco_eval.params.imgIds = sorted(gt.imgs)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


def evaluate_lvis(gt_json, results, iou_type="bbox", max_dets=300, *, return_per_class=False, instance_buckets=False):
    """
    Evaluate LVIS-format results with LVIS semantics (official ``lvis`` API numbers,
    faster-coco-eval engine).

    Args:
        gt_json (str | os.PathLike | dict | faster_coco_eval.COCO): LVIS annotations.
        results: LVIS results, one of

            * list[dict]: dicts with "image_id", "category_id" (json category id), "score",
              "bbox" ([x, y, w, h] absolute pixels; bbox) and/or "segmentation" (compressed
              RLE; segm). The list is not modified;
            * str | os.PathLike: a path to such a json list (e.g. the evaluator's
              ``lvis_instances_results.json``);
            * bbox only: an ``[N, 7]`` numeric array with columns
              ``image_id, x, y, w, h, score, category_id`` (:data:`RESULT_ARRAY_COLUMNS`, as
              ``faster_coco_eval.COCO.loadNumpyAnnotations``): no Python object per detection.
              Ids must be integral. Not modified.

            All forms give identical bbox metrics.
        iou_type (str): "bbox" or "segm".
        max_dets (int): max detections per image (over all categories); LVIS uses 300.
            Negative: no limit.
        return_per_class (bool): also return per-class AP.
        instance_buckets (bool): also return AP by training instance-count bucket,
            ``"AP" + b`` for b in :data:`INSTANCE_COUNT_BUCKETS` (needs every category's
            ``instance_count``).

    Returns:
        dict[str, float]: {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"}
        (and the bucket metrics) in percent, NaN where undefined (all NaN for empty results,
        like Detectron2).
        If ``return_per_class``: ``(metrics, per_class)`` where per_class is an OrderedDict
        category name -> AP in percent (IoU .50:.95, all areas), in category-id order,
        NaN for categories without evaluable ground truth.
    """
    if iou_type not in _IOU_TYPES:
        raise ValueError(f"iou_type must be one of {_IOU_TYPES}, got {iou_type!r}")
    source = os.fspath(results) if isinstance(results, (str, os.PathLike)) else "<results>"
    if isinstance(results, np.ndarray) and iou_type != "bbox":
        raise ValueError(
            f"LVIS results {source}: array results hold boxes only; {iou_type} "
            "evaluation needs a list of dicts with RLE 'segmentation'"
        )
    gt = load_lvis_gt(gt_json)
    results = load_lvis_results(results)
    cat_ids = sorted(gt.cats)
    names = [gt.cats[c]["name"] for c in cat_ids]

    metric_names = LVIS_METRICS + (tuple("AP" + b for b in INSTANCE_COUNT_BUCKETS) if instance_buckets else ())
    counts = _instance_counts(gt) if instance_buckets else None

    def _nan_output():
        metrics = {m: float("nan") for m in metric_names}
        per_class = OrderedDict((n, float("nan")) for n in names)
        return (metrics, per_class) if return_per_class else metrics

    if len(results) == 0:
        logger.warning("No predictions from the model! Returning NaN for every %s metric.", iou_type)
        return _nan_output()
    if len(gt.anns) == 0:
        logger.warning("Ground truth %s has no annotations; nothing to evaluate.", gt.annotation_file)
        return _nan_output()

    if iou_type == "bbox":
        if isinstance(results, np.ndarray):
            columns = _columns_from_array(results, gt, source)
        else:
            columns = _columns_from_dicts(results, gt, source)
        del results  # our reference only: lets a caller's temporaries be freed
        # at most max_dets per image (before the federated filtering, as the official API)
        columns = _limit_columns_per_image(columns, max_dets)
        if fast_lvis_feed.available():
            coco_eval = fast_lvis_feed.evaluate_bbox(gt, *columns, max_dets)
        else:
            coco_eval = _evaluate_public(gt, _column_dicts(*columns), "bbox", max_dets)
    else:
        img_ids, _, scores = _validate_results(results, gt, iou_type, source)
        results = _limit_dets_per_image(results, img_ids, scores, max_dets)
        coco_eval = _evaluate_public(gt, results, iou_type, max_dets)

    stats = coco_eval.stats_as_dict
    keys = {
        "AP": "AP_all", "AP50": "AP_50", "AP75": "AP_75", "APs": "AP_small",
        "APm": "AP_medium", "APl": "AP_large", "APr": "APr", "APc": "APc", "APf": "APf",
    }  # fmt: skip
    metrics = {m: _to_percent(stats[k]) for m, k in keys.items()}
    precision = np.asarray(coco_eval.eval["precision"])
    if instance_buckets:
        metrics.update(_bucket_ap(precision, counts))
    if not return_per_class:
        return metrics
    ap = _per_class_ap(precision, cat_ids)
    per_class = OrderedDict((n, float(a)) for n, a in zip(names, ap))
    return metrics, per_class


def per_class_records(gt, per_class_ap):
    """
    Args:
        gt (faster_coco_eval.COCO): ground truth.
        per_class_ap (dict): category name -> AP (percent).
    Returns:
        list[dict]: one record per category, in the evaluated dataset's id order (for LST's phase sets: the
        contiguous order, base classes first), with keys id, name, frequency,
        image_count, instance_count, num_gt (annotations in the evaluated set) and AP (percent,
        None where undefined). ``id`` is the dataset's category id: for a derived dataset whose
        categories carry ``source_id`` (LST's phase sets, renumbered by frequency rank) that is the
        source dataset's id, so records of different phases and entries join on it; the derived
        set's own id is then ``dataset_id``.
    """
    num_gt = {}
    for a in gt.anns.values():
        num_gt[a["category_id"]] = num_gt.get(a["category_id"], 0) + 1
    out = []
    for cid in sorted(gt.cats):
        c = gt.cats[cid]
        ap = per_class_ap[c["name"]]
        record = {
            "id": int(c["source_id"]) if "source_id" in c else cid,
            "name": c["name"],
            "frequency": c.get("frequency"),
            "image_count": c.get("image_count"),
            "instance_count": c.get("instance_count"),
            "num_gt": num_gt.get(cid, 0),
            "AP": None if ap is None or math.isnan(ap) else ap,
        }
        if "source_id" in c:
            record["dataset_id"] = cid
        out.append(record)
    return out


# ----------------------------------------------------------------------------------------
# Detectron2 evaluator
# ----------------------------------------------------------------------------------------
class LTLVISEvaluator(LVISEvaluator):
    """
    Drop-in replacement for :class:`detectron2.evaluation.LVISEvaluator` that evaluates
    with :func:`evaluate_lvis` (faster-coco-eval engine, official LVIS numbers), and also
    writes per-class AP to ``<output_dir>/per_class_ap_<task>.json``.

    Reuses detectron2's ``reset`` / ``process`` / ``evaluate`` (gathering across ranks,
    ``instances_to_coco_json``); only the metric computation is replaced.
    Box-proposal evaluation is not supported.
    """

    def __init__(
        self,
        dataset_name,
        tasks=None,
        distributed=True,
        output_dir=None,
        *,
        max_dets_per_image=300,
        instance_buckets=False,
    ):
        """
        Args:
            dataset_name (str): name of the dataset to evaluate. Its metadata must have
                "json_file": the path to the LVIS-format annotation.
            tasks (tuple[str]): subset of ("bbox", "segm"); inferred from predictions if None.
            distributed (bool): if True, gather results from all ranks and evaluate on rank 0.
            output_dir (str): optional directory for "lvis_instances_results.json",
                "instances_predictions.pth" and "per_class_ap_<task>.json".
            max_dets_per_image (int or None): max detections per image (LVIS: 300).
            instance_buckets (bool): also report AP by training instance-count bucket
                (``AP(0,1]`` ... ``AP[1000,-)``, see :data:`INSTANCE_COUNT_BUCKETS`; LST's metrics),
                from the training instance counts the AP_r / AP_c / AP_f groups use.
        """
        self._logger = logging.getLogger(__name__)
        if tasks is not None and not isinstance(tasks, (list, tuple, set)):
            # detectron2 accepted a CfgNode here (deprecated); infer tasks from predictions
            self._logger.warning(
                "LTLVISEvaluator got tasks=%s of type %s; inferring tasks from predictions.",
                tasks, type(tasks).__name__,
            )  # fmt: skip
            tasks = None
        if tasks is not None:
            tasks = tuple(tasks)
            if "box_proposals" in tasks or "proposals" in tasks:
                raise NotImplementedError(
                    "LTLVISEvaluator does not evaluate box proposals; use "
                    "detectron2.evaluation.LVISEvaluator for proposal recall."
                )
            unknown = set(tasks) - set(_IOU_TYPES)
            if unknown:
                raise ValueError(f"Unknown tasks {sorted(unknown)}; supported: {_IOU_TYPES}")
        self._tasks = tasks
        self._distributed = distributed
        self._output_dir = output_dir
        self._max_dets_per_image = 300 if max_dets_per_image is None else int(max_dets_per_image)
        self._instance_buckets = bool(instance_buckets)
        self._cpu_device = torch.device("cpu")

        self._metadata = MetadataCatalog.get(dataset_name)
        if not hasattr(self._metadata, "json_file"):
            raise AttributeError(
                f"MetadataCatalog.get({dataset_name!r}) has no 'json_file'; LTLVISEvaluator needs "
                "the LVIS annotation json (e.g. register with register_lvis_instances)."
            )
        # a registered dataset's checked json, completed with what LVIS evaluation needs (COCO-format
        # files: exhaustive negatives, training frequencies); otherwise the metadata's json_file
        ground_truth = evaluation_ground_truth(dataset_name)
        if isinstance(ground_truth, str):
            ground_truth = PathManager.get_local_path(ground_truth)
        try:
            self._lvis_api = load_lvis_gt(ground_truth)
        except COCOFormatGroundTruth:
            raise COCOFormatGroundTruth(
                coco_format_advice(f"LTLVISEvaluator(dataset_name={dataset_name!r}): its json_file {ground_truth}")
            ) from None
        # Test-set json files have no annotations (evaluated by the LVIS server).
        self._do_evaluation = len(self._lvis_api.anns) > 0
        if self._instance_buckets:
            _instance_counts(self._lvis_api)  # fail early, naming the categories without counts

    def _eval_box_proposals(self, predictions):
        raise NotImplementedError(
            "LTLVISEvaluator does not evaluate box proposals; use "
            "detectron2.evaluation.LVISEvaluator for proposal recall."
        )

    def _contiguous_to_json_ids(self):
        """
        Returns: dict contiguous id -> json category id from the metadata's
        ``thing_dataset_id_to_contiguous_id`` (reversed), or None: then, as Detectron2, the
        json id is contiguous id + 1 (the inverse of ``load_lvis_json``'s ``category_id - 1``).
        """
        if hasattr(self._metadata, "thing_dataset_id_to_contiguous_id"):
            m = self._metadata.thing_dataset_id_to_contiguous_id
            return {v: k for k, v in m.items()}
        return None

    def _eval_predictions(self, predictions):
        """Evaluate predictions; fill self._results with the metrics of the tasks."""
        self._logger.info("Preparing results in the LVIS format ...")
        lvis_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(lvis_results)

        reverse_id_mapping = self._contiguous_to_json_ids()
        if reverse_id_mapping is not None:
            unknown = {r["category_id"] for r in lvis_results} - set(reverse_id_mapping)
            if unknown:
                raise ValueError(
                    f"Predicted contiguous category ids {sorted(unknown)[:20]} are not in "
                    "thing_dataset_id_to_contiguous_id of the dataset metadata"
                )
            for result in lvis_results:
                result["category_id"] = reverse_id_mapping[result["category_id"]]
        else:
            # unmap the category ids for LVIS (from 0-indexed to 1-indexed), as detectron2
            for result in lvis_results:
                result["category_id"] += 1

        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            file_path = os.path.join(self._output_dir, "lvis_instances_results.json")
            self._logger.info(f"Saving results to {file_path}")
            write_json_atomic(file_path, lvis_results)

        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return

        self._logger.info("Evaluating predictions with max detections per image = %d ...", self._max_dets_per_image)
        for task in sorted(tasks):
            res, per_class = evaluate_lvis(
                self._lvis_api,
                lvis_results,
                iou_type=task,
                max_dets=self._max_dets_per_image,
                return_per_class=True,
                instance_buckets=self._instance_buckets,
            )
            self._logger.info(f"Evaluation results for {task}: \n" + create_small_table(res))
            if self._output_dir:
                file_path = os.path.join(self._output_dir, f"per_class_ap_{task}.json")
                write_json_atomic(file_path, per_class_records(self._lvis_api, per_class))
                self._logger.info("Per-class %s AP saved to %s", task, file_path)
            self._results[task] = res
