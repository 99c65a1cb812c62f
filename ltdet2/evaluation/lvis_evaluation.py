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

All AP values are returned in percent, NaN where undefined (like Detectron2).

Memory: bbox results (a list of dicts, an ``[N, 7]`` array or a dict of columns) are reduced
to numpy columns; the per-image limit, the federated filtering and the box IoUs are computed
with numpy, and faster-coco-eval's C++ engine is fed directly with one small dict per kept
detection (the engine's ``COCO.loadRes`` / ``COCOeval.evaluate`` would build several dicts per
detection and a Python object per image x category pair: > 23 GB at LVIS-val size).
"""
import copy
import itertools
import json
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

__all__ = [
    "LVIS_METRICS",
    "LTLVISEvaluator",
    "evaluate_lvis",
    "load_lvis_gt",
    "load_lvis_results",
    "RESULT_ARRAY_COLUMNS",
]

logger = logging.getLogger(__name__)

LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
_IOU_TYPES = ("bbox", "segm")
# columns of an [N, 7] bbox results array, as faster-coco-eval's COCO.loadNumpyAnnotations
RESULT_ARRAY_COLUMNS = ("image_id", "x", "y", "w", "h", "score", "category_id")


# ----------------------------------------------------------------------------------------
# loading and validation
# ----------------------------------------------------------------------------------------
def _read_json(path, what):
    path = os.fspath(path)
    if not PathManager.exists(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with PathManager.open(path, "r") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} file {path} is not valid JSON: {e}") from e


def load_lvis_gt(gt_json):
    """
    Load LVIS ground truth into a faster-coco-eval ``COCO`` object.

    Args:
        gt_json (str | os.PathLike | dict | faster_coco_eval.COCO): path to an LVIS-format
            annotation json, the loaded dict, or an already loaded ``COCO`` (returned as is).

    Returns:
        faster_coco_eval.COCO
    """
    from faster_coco_eval import COCO

    if isinstance(gt_json, COCO):
        return gt_json
    if isinstance(gt_json, (str, os.PathLike)):
        source = os.fspath(gt_json)
        data = _read_json(source, "LVIS ground-truth")
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
    for img in data["images"][:1]:
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            if key not in img:
                raise ValueError(
                    f"LVIS ground truth {source}: image {img.get('id')} has no '{key}' field "
                    "(is this an LVIS-format file?)"
                )
    bad = [c.get("id") for c in data["categories"] if c.get("frequency") not in ("r", "c", "f")]
    if bad:
        raise ValueError(
            f"LVIS ground truth {source}: categories {bad[:10]} have no valid 'frequency' (r/c/f)"
        )
    gt = COCO(data)
    gt.annotation_file = source
    return gt


def load_lvis_results(results):
    """
    Args:
        results (str | os.PathLike | list[dict] | ndarray | dict[str, array]): LVIS results,
            a path to a results json, or bbox results in columnar form (see
            :func:`evaluate_lvis`).

    Returns:
        list[dict] | ndarray | dict: the result dicts (not copied), or columnar results as given.
    """
    if _is_columnar(results):
        return results
    if isinstance(results, (str, os.PathLike)):
        source = os.fspath(results)
        results = _read_json(source, "LVIS results")
    else:
        source = "<results>"
    if not isinstance(results, (list, tuple)):
        raise ValueError(
            f"LVIS results {source} must be a list of dicts, got {type(results).__name__}"
        )
    return list(results)


def _is_columnar(results):
    return isinstance(results, (np.ndarray, torch.Tensor)) or (
        isinstance(results, dict) and "image_id" in results
    )


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
        elif iou_type == "segm" and not (
            isinstance(geom, dict) and "counts" in geom and "size" in geom
        ):
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
    """float/int array -> int64 array; ValueError if not all integral and finite."""
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return values.astype(np.int64, copy=False)
    if values.dtype.kind != "f":
        raise ValueError(f"LVIS results {source}: {name} must be numeric, got dtype {values.dtype}")
    ids = np.rint(values)
    bad = np.flatnonzero(~np.isfinite(values) | (ids != values))
    if bad.size:
        raise ValueError(
            f"LVIS results {source}: {name} must be integers; entries {bad[:5].tolist()} are "
            f"{values[bad[:5]].tolist()}"
        )
    return ids.astype(np.int64)


def _columns_from_array(results, gt, source):
    """
    Columnar bbox results -> (image_id int64 [N], category_id int64 [N], bbox float64 [N, 4],
    score float64 [N]), validated against ``gt``.
    """
    if isinstance(results, torch.Tensor):
        results = results.detach().cpu().numpy()
    if isinstance(results, np.ndarray):
        if results.ndim != 2 or results.shape[1] != 7:
            raise ValueError(
                f"LVIS results {source}: an array of results must have shape [N, 7] "
                f"(columns {', '.join(RESULT_ARRAY_COLUMNS)}), got {list(results.shape)}"
            )
        if results.dtype.kind not in "iuf":
            raise ValueError(f"LVIS results {source}: array must be numeric, got dtype {results.dtype}")
        img, box, score, cat = results[:, 0], results[:, 1:5], results[:, 5], results[:, 6]
    else:
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in results]
        if missing:
            raise ValueError(
                f"LVIS results {source}: columnar results lack {missing} (needs 'image_id', "
                "'category_id', 'bbox' [N, 4] xywh, 'score')"
            )
        cols = {
            k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
            for k, v in results.items() if k in ("image_id", "category_id", "bbox", "score")
        }  # fmt: skip
        img, cat, box, score = cols["image_id"], cols["category_id"], cols["bbox"], cols["score"]
        n = len(img)
        box = box.reshape(-1, 4) if box.size == 0 else box
        if box.ndim != 2 or box.shape[1] != 4 or not (len(box) == len(cat) == len(score) == n):
            raise ValueError(
                f"LVIS results {source}: columns must have lengths N (image_id {img.shape}, "
                f"category_id {cat.shape}, score {score.shape}) and bbox shape [N, 4] "
                f"(got {box.shape})"
            )
        if img.ndim != 1 or cat.ndim != 1 or score.ndim != 1:
            raise ValueError(f"LVIS results {source}: image_id, category_id, score must be 1-d")
        if box.dtype.kind not in "iuf" or score.dtype.kind not in "iuf":
            raise ValueError(f"LVIS results {source}: bbox and score must be numeric")
    img = _integer_ids(img, "image_id", source)
    cat = _integer_ids(cat, "category_id", source)
    box = np.asarray(box, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    for name, v in (("score", score), ("bbox", box)):
        bad = np.flatnonzero(~np.isfinite(v).reshape(len(v), -1).all(axis=1))
        if bad.size:
            raise ValueError(
                f"LVIS results {source}: malformed entries: non-finite {name} at entries "
                f"{bad[:5].tolist()}: {v[bad[:5]].tolist()}"
            )
    _check_ids(np.unique(img).tolist(), np.unique(cat).tolist(), gt, source)
    return img, cat, box, score


def _columns_from_dicts(results, gt, source):
    """Validated bbox result dicts -> the columns of :func:`_columns_from_array`."""
    img, cat, score = _validate_results(results, gt, "bbox", source)
    box = np.array([r["bbox"] for r in results], dtype=np.float64).reshape(-1, 4)
    bad = np.flatnonzero(~np.isfinite(box).all(axis=1))
    if bad.size:
        raise ValueError(
            f"LVIS results {source}: malformed entries: non-finite bbox at entries "
            f"{bad[:5].tolist()}: {box[bad[:5]].tolist()}"
        )
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


def _evaluable_pairs(gt):
    """Set of (image_id, category_id) whose detections LVIS evaluates (positive or negative)."""
    pairs = {(a["image_id"], a["category_id"]) for a in gt.anns.values()}
    for img_id, img in gt.imgs.items():
        pairs.update((img_id, c) for c in img.get("neg_category_ids", ()))
    return pairs


class _PairIndex:
    """(image id, category id) <-> int64 key ``image index * C + category index``."""

    def __init__(self, gt):
        self.img_ids = np.array(sorted(gt.imgs), dtype=np.int64)
        self.cat_ids = np.array(sorted(gt.cats), dtype=np.int64)
        self.C = len(self.cat_ids)

    def keys(self, img, cat):
        """Keys of known (image, category) pairs; -1 where an id is not in the ground truth."""
        img, cat = np.asarray(img, dtype=np.int64), np.asarray(cat, dtype=np.int64)
        i = np.searchsorted(self.img_ids, img).clip(max=max(len(self.img_ids) - 1, 0))
        c = np.searchsorted(self.cat_ids, cat).clip(max=max(self.C - 1, 0))
        ok = (self.img_ids[i] == img) & (self.cat_ids[c] == cat) if img.size else np.ones(0, bool)
        return np.where(ok, i * self.C + c, -1)

    def image_list_keys(self, gt, field):
        """Sorted unique keys of (image, c) for c in each image's list ``field``."""
        lists = [(img_id, gt.imgs[img_id].get(field) or ()) for img_id in self.img_ids.tolist()]
        lens = np.fromiter((len(x) for _, x in lists), dtype=np.int64, count=len(lists))
        cats = np.fromiter((c for _, x in lists for c in x), dtype=np.int64, count=int(lens.sum()))
        k = self.keys(np.repeat(self.img_ids, lens), cats)
        return np.unique(k[k >= 0])


def _box_iou(d, g, crowd):
    """
    Elementwise IoU of xywh boxes d[k] and g[k] (float64), bit-identical to faster-coco-eval's
    (and pycocotools') ``bbIou``: union = det area for crowd ground truth.
    """
    w = np.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - np.maximum(d[:, 1], g[:, 1])
    inter = w * h
    da = d[:, 2] * d[:, 3]
    union = np.where(crowd, da, da + g[:, 2] * g[:, 3] - inter)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


def _engine_supports_direct_feed():
    try:
        import faster_coco_eval.faster_eval_api_cpp as _C
        from faster_coco_eval import COCOeval_faster
    except ImportError:  # pragma: no cover
        return False
    return (
        hasattr(_C, "COCOevalEvaluateAccumulate")
        and hasattr(_C.Dataset, "append_ref")
        and hasattr(COCOeval_faster, "_prepare_freq_group")
    )


def _concat_category_chunks(parts, params):
    """Merge the engine's accumulate() outputs of disjoint, consecutive category chunks."""
    if len(parts) == 1:
        out = parts[0]
        out["params"] = params
        return out
    out = dict(parts[0])
    out["params"] = params
    out["precision"] = np.concatenate([e["precision"] for e in parts], axis=2)  # [T, R, K, A, M]
    out["scores"] = np.concatenate([e["scores"] for e in parts], axis=2)
    out["recall"] = np.concatenate([e["recall"] for e in parts], axis=1)  # [T, K, A, M]
    out["counts"] = list(out["precision"].shape)
    out["matched"] = {k: v for e in parts for k, v in e.get("matched", {}).items()}
    if "evaluations_size" in out:
        out["evaluations_size"] = sum(e["evaluations_size"] for e in parts)
    return out


def _bbox_eval_from_columns(
    gt, img, cat, box, score, max_dets, *, chunk_entries=1 << 22, max_pairs_per_call=1 << 20
):
    """
    LVIS bbox evaluation of validated columns with faster-coco-eval's C++ engine, without
    ``COCO.loadRes`` / ``COCOeval.evaluate``: numpy does the per-image limit, the federated
    filtering, the not-exhaustive marks and the IoUs (bit-identical to the engine's); the
    engine gets one small dict per kept detection and does matching and accumulation.

    Returns:
        COCOeval_faster: evaluated, accumulated and summarized.
    """
    import faster_coco_eval.faster_eval_api_cpp as _C
    from faster_coco_eval import COCOeval_faster

    index = _PairIndex(gt)
    C = index.C
    # 1. at most max_dets per image (before the federated filtering, as the official API)
    keep = _topk_per_image(img, score, max_dets)
    sel = np.arange(len(img)) if keep is None else np.flatnonzero(keep)
    # 2. federated filtering: (image, category) annotated or in the image's neg_category_ids
    gt_anns = gt.dataset["annotations"]
    g_img = np.fromiter((a["image_id"] for a in gt_anns), dtype=np.int64, count=len(gt_anns))
    g_cat = np.fromiter((a["category_id"] for a in gt_anns), dtype=np.int64, count=len(gt_anns))
    g_key = index.keys(g_img, g_cat)
    g_in = g_key >= 0  # annotations of unknown categories/images are never evaluated
    evaluable = np.union1d(g_key[g_in], index.image_list_keys(gt, "neg_category_ids"))
    d_key = index.keys(img[sel], cat[sel])
    ok = np.isin(d_key, evaluable, assume_unique=False)
    sel, d_key = sel[ok], d_key[ok]
    del ok
    n = len(sel)
    d_score = score[sel]
    d_box = box[sel]
    # 3. unmatched detections of not-exhaustive categories are ignored (engine: "lvis_mark")
    d_mark = np.isin(d_key, index.image_list_keys(gt, "not_exhaustive_category_ids"))
    d_area = d_box[:, 2] * d_box[:, 3]
    max_det = max_dets if max_dets >= 0 else max(n, 1)

    # 4. the engine's datasets: ground truth as in COCOeval._prepare (ignore = iscrowd),
    # detections with the fields the engine reads, in results order within (image, category)
    gt_ds, dt_ds = _C.Dataset(), _C.Dataset()
    g_crowd = np.zeros(len(gt_anns), dtype=bool)
    g_box = np.zeros((len(gt_anns), 4), dtype=np.float64)
    for k, a in enumerate(gt_anns):
        if not g_in[k]:
            continue
        crowd = int(a.get("iscrowd", 0))
        g_crowd[k] = bool(crowd)
        g_box[k] = a["bbox"]
        gt_ds.append_ref(
            a["image_id"], a["category_id"],
            {"id": a["id"], "area": a.get("area", 0.0), "iscrowd": crowd, "ignore": crowd},
        )  # fmt: skip
    d_img, d_cat = index.img_ids[d_key // C].tolist(), index.cat_ids[d_key % C].tolist()
    for i, c, did, s, ar, m in zip(
        d_img, d_cat, range(1, n + 1), d_score.tolist(), d_area.tolist(), d_mark.tolist()
    ):
        dt_ds.append_ref(i, c, {"id": did, "score": s, "area": ar, "iscrowd": 0, "lvis_mark": m})
    del d_img, d_cat, d_area, d_mark

    # 5. IoUs of the (image, category) pairs with ground truth and detections: [D, G] with the
    # detections sorted by score (stable) and cut at max_det, as COCOeval.computeIoU
    d_order = np.lexsort((-d_score, d_key))
    d_sorted = d_key[d_order]
    g_order = np.flatnonzero(g_in)[np.argsort(g_key[g_in], kind="stable")]
    g_sorted = g_key[g_order]
    pairs = np.intersect1d(d_sorted, g_sorted)
    d_start = np.searchsorted(d_sorted, pairs)
    d_cnt = np.minimum(np.searchsorted(d_sorted, pairs, side="right") - d_start, max_det)
    g_start = np.searchsorted(g_sorted, pairs)
    g_cnt = np.searchsorted(g_sorted, pairs, side="right") - g_start
    size = d_cnt * g_cnt
    pair_ious = []  # [D, G] lists, in the order of ``pairs``
    p0 = 0
    while p0 < len(pairs):
        # chunks of pairs with about chunk_entries IoU values in all
        csum = np.cumsum(size[p0:])
        p1 = p0 + max(int(np.searchsorted(csum, chunk_entries, side="right")), 1)
        sz = size[p0:p1]
        off = np.r_[0, np.cumsum(sz)]
        pair = np.repeat(np.arange(p0, p1), sz)
        local = np.arange(off[-1]) - np.repeat(off[:-1], sz)
        di = d_order[d_start[pair] + local // g_cnt[pair]]
        gi = g_order[g_start[pair] + local % g_cnt[pair]]
        flat = _box_iou(d_box[di], g_box[gi], g_crowd[gi])
        del pair, local, di, gi
        for j, q in enumerate(range(p0, p1)):
            pair_ious.append(flat[off[j] : off[j + 1]].reshape(d_cnt[q], g_cnt[q]).tolist())
        del flat
        p0 = p1
    del d_order, d_sorted, g_sorted, d_box, d_key, d_score

    # 6. evaluate + accumulate in C++ (as COCOeval_faster.evaluate), summarize in Python.
    # The engine holds about 1 KB per image x category pair while it runs (> 20 GB for
    # LVIS val); LVIS accumulates every category on its own, so the engine runs on chunks
    # of categories and the per-category arrays are concatenated (identical numbers).
    coco_eval = COCOeval_faster(gt, None, iouType="bbox", lvis_style=True, print_function=logger.debug)
    p = coco_eval.params
    p.imgIds = index.img_ids.tolist()
    p.catIds = index.cat_ids.tolist()
    p.maxDets = [max_det]
    coco_eval.freq_groups = coco_eval._prepare_freq_group()
    coco_eval.gt_dataset, coco_eval.dt_dataset = gt_ds, dt_ds
    coco_eval._paramsEval = copy.deepcopy(p)
    I = len(index.img_ids)
    cats_per_call = max(1, min(C, max_pairs_per_call // max(I, 1)))
    pair_img, pair_cat = pairs // C, pairs % C
    parts = []
    for c0 in range(0, C, cats_per_call):
        c1 = min(c0 + cats_per_call, C)
        empty = []
        ious = [[empty] * (c1 - c0) for _ in range(I)]
        sel = np.flatnonzero((pair_cat >= c0) & (pair_cat < c1))
        for j, i, c in zip(sel.tolist(), pair_img[sel].tolist(), (pair_cat[sel] - c0).tolist()):
            ious[i][c] = pair_ious[j]
        params = copy.deepcopy(p)
        params.catIds = p.catIds[c0:c1]
        parts.append(
            _C.COCOevalEvaluateAccumulate(params, ious, gt_ds, dt_ds, p.imgIds, params.catIds, True)
        )
        del ious
    coco_eval.eval = _concat_category_chunks(parts, coco_eval._paramsEval)
    coco_eval.matched = False
    coco_eval.summarize()
    return coco_eval


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


def _engine_eval_from_dicts(gt, results, iou_type, max_dets, img_ids, scores):
    """faster-coco-eval's own path (COCO.loadRes + COCOeval_faster.evaluate): segm results."""
    from faster_coco_eval import COCOeval_faster

    results = _limit_dets_per_image(results, img_ids, scores, max_dets)
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
    coco_eval = COCOeval_faster(
        gt, dt, iouType=iou_type, lvis_style=True, print_function=logger.debug
    )
    coco_eval.params.maxDets = [max_dets if max_dets >= 0 else max(len(results), 1)]
    coco_eval.params.catIds = sorted(gt.cats)
    coco_eval.params.imgIds = sorted(gt.imgs)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


def evaluate_lvis(gt_json, results, iou_type="bbox", max_dets=300, *, return_per_class=False):
    """
    Evaluate LVIS-format results with LVIS semantics (official ``lvis`` API numbers,
    faster-coco-eval engine).

    Args:
        gt_json (str | os.PathLike | dict | faster_coco_eval.COCO): LVIS annotations.
        results: LVIS results, one of

            * list[dict]: dicts with "image_id", "category_id" (json category id), "score",
              "bbox" ([x, y, w, h] absolute pixels; bbox) and/or "segmentation" (compressed
              RLE; segm). The list is not modified;
            * str | os.PathLike: a path to such a json list;
            * bbox only, columnar (memory-efficient at LVIS scale: no per-detection dicts
              are built but one small dict per kept detection for the engine):
              an ``[N, 7]`` numpy array / torch tensor with columns
              ``image_id, x, y, w, h, score, category_id`` (:data:`RESULT_ARRAY_COLUMNS`, as
              ``faster_coco_eval.COCO.loadNumpyAnnotations``), or a dict of arrays
              ``{"image_id": [N], "category_id": [N], "bbox": [N, 4] xywh, "score": [N]}``.
              Ids must be integral. Not modified.

            All forms give identical bbox metrics.
        iou_type (str): "bbox" or "segm".
        max_dets (int): max detections per image (over all categories); LVIS uses 300.
            Negative: no limit.
        return_per_class (bool): also return per-class AP.

    Returns:
        dict[str, float]: {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"}
        in percent, NaN where undefined (all NaN for empty results, like Detectron2).
        If ``return_per_class``: ``(metrics, per_class)`` where per_class is an OrderedDict
        category name -> AP in percent (IoU .50:.95, all areas), in category-id order,
        NaN for categories without evaluable ground truth.
    """
    if iou_type not in _IOU_TYPES:
        raise ValueError(f"iou_type must be one of {_IOU_TYPES}, got {iou_type!r}")
    source = os.fspath(results) if isinstance(results, (str, os.PathLike)) else "<results>"
    columnar = _is_columnar(results)
    if columnar and iou_type != "bbox":
        raise ValueError(
            f"LVIS results {source}: array/columnar results hold boxes only; {iou_type} "
            "evaluation needs a list of dicts with RLE 'segmentation'"
        )
    gt = load_lvis_gt(gt_json)
    results = load_lvis_results(results)
    cat_ids = sorted(gt.cats)
    names = [gt.cats[c]["name"] for c in cat_ids]

    def _nan_output():
        metrics = {m: float("nan") for m in LVIS_METRICS}
        per_class = OrderedDict((n, float("nan")) for n in names)
        return (metrics, per_class) if return_per_class else metrics

    if (_num_columnar(results) if columnar else len(results)) == 0:
        logger.warning("No predictions from the model! Returning NaN for every %s metric.", iou_type)
        return _nan_output()
    if len(gt.anns) == 0:
        logger.warning("Ground truth %s has no annotations; nothing to evaluate.", gt.annotation_file)
        return _nan_output()

    if iou_type == "bbox":
        if columnar:
            cols = _columns_from_array(results, gt, source)
        else:
            cols = _columns_from_dicts(results, gt, source)
        del results  # our reference only: lets a caller's temporaries be freed
        if _engine_supports_direct_feed():
            coco_eval = _bbox_eval_from_columns(gt, *cols, max_dets)
        else:  # pragma: no cover - other faster-coco-eval versions: the engine's own path
            img, cat, box, score = cols
            dicts = [
                {"image_id": i, "category_id": c, "bbox": b, "score": s}
                for i, c, b, s in zip(img.tolist(), cat.tolist(), box.tolist(), score.tolist())
            ]  # fmt: skip
            coco_eval = _engine_eval_from_dicts(gt, dicts, "bbox", max_dets, img, score)
    else:
        img_ids, _, scores = _validate_results(results, gt, iou_type, source)
        coco_eval = _engine_eval_from_dicts(gt, results, iou_type, max_dets, img_ids, scores)

    stats = coco_eval.stats_as_dict
    keys = {
        "AP": "AP_all", "AP50": "AP_50", "AP75": "AP_75", "APs": "AP_small",
        "APm": "AP_medium", "APl": "AP_large", "APr": "APr", "APc": "APc", "APf": "APf",
    }  # fmt: skip
    metrics = {m: _to_percent(stats[k]) for m, k in keys.items()}
    if not return_per_class:
        return metrics
    precision = np.asarray(coco_eval.eval["precision"])
    ap = _per_class_ap(precision, cat_ids)
    per_class = OrderedDict((n, float(a)) for n, a in zip(names, ap))
    return metrics, per_class


def _num_columnar(results):
    """Number of detections in columnar results."""
    if isinstance(results, (np.ndarray, torch.Tensor)):
        return results.shape[0] if results.ndim >= 1 else 1
    return len(results["image_id"])


def per_class_records(gt, per_class_ap):
    """
    Args:
        gt (faster_coco_eval.COCO): ground truth.
        per_class_ap (dict): category name -> AP (percent).
    Returns:
        list[dict]: one record per category (id order) with keys id, name, frequency,
        image_count, instance_count, num_gt (annotations in the evaluated set), AP (percent,
        None where undefined).
    """
    num_gt = {}
    for a in gt.anns.values():
        num_gt[a["category_id"]] = num_gt.get(a["category_id"], 0) + 1
    out = []
    for cid in sorted(gt.cats):
        c = gt.cats[cid]
        ap = per_class_ap[c["name"]]
        out.append(
            {
                "id": cid,
                "name": c["name"],
                "frequency": c.get("frequency"),
                "image_count": c.get("image_count"),
                "instance_count": c.get("instance_count"),
                "num_gt": num_gt.get(cid, 0),
                "AP": None if ap is None or math.isnan(ap) else ap,
            }
        )
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
        self._cpu_device = torch.device("cpu")

        self._metadata = MetadataCatalog.get(dataset_name)
        if not hasattr(self._metadata, "json_file"):
            raise AttributeError(
                f"MetadataCatalog.get({dataset_name!r}) has no 'json_file'; LTLVISEvaluator needs "
                "the LVIS annotation json (e.g. register with register_lvis_instances)."
            )
        json_file = PathManager.get_local_path(self._metadata.json_file)
        self._lvis_api = load_lvis_gt(json_file)
        # Test-set json files have no annotations (evaluated by the LVIS server).
        self._do_evaluation = len(self._lvis_api.anns) > 0

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
            self._logger.info("Saving results to {}".format(file_path))
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(lvis_results))
                f.flush()

        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return

        self._logger.info(
            "Evaluating predictions with max detections per image = %d ...", self._max_dets_per_image
        )
        for task in sorted(tasks):
            res, per_class = evaluate_lvis(
                self._lvis_api,
                lvis_results,
                iou_type=task,
                max_dets=self._max_dets_per_image,
                return_per_class=True,
            )
            self._logger.info(
                "Evaluation results for {}: \n".format(task) + create_small_table(res)
            )
            if self._output_dir:
                file_path = os.path.join(self._output_dir, f"per_class_ap_{task}.json")
                with PathManager.open(file_path, "w") as f:
                    json.dump(per_class_records(self._lvis_api, per_class), f)
                self._logger.info("Per-class %s AP saved to %s", task, file_path)
            self._results[task] = res
