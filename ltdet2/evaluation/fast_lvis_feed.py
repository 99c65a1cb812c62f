"""
LVIS bbox evaluation that feeds faster-coco-eval's C++ engine directly from result columns.

faster-coco-eval's public LVIS path (``COCO.loadRes`` + ``COCOeval_faster(lvis_style=True)``)
builds several dicts per detection and a Python object per image x category pair (> 23 GB at
LVIS-val size). Here numpy does the federated filtering, the not-exhaustive marks and the box
IoUs (bit-identical to the engine's), the engine gets one small dict per kept detection and
does matching and accumulation, on chunks of categories.

The engine evaluates every (image, category) pair of a call, and almost all of LVIS's pairs are
empty (no kept detection, no ground truth): 99% of them on scripts/benchmark_evaluator.py's
LVIS-sized data (78k non-empty of 6.0M pairs at 5,000 images, 300 detections per image). An
empty pair still costs the engine about 0.6 us (hash look-ups, four ImageEvaluation objects, a
pass in accumulate). So the engine sees only the non-empty pairs: within each category, the
images with a detection or a ground-truth box of it are renumbered 0, 1, ... in image order
("slots"), and categories with similar slot counts share a call whose image list is the slots.
LVIS evaluates every pair and accumulates every category on its own, empty pairs add nothing,
and the image order within a category (which breaks score ties in accumulate) is kept, so the
numbers are identical (only the engine's informative ``evaluations_size`` counts fewer pairs).

This drives the engine's private API (``faster_eval_api_cpp``, ``COCOeval_faster`` internals),
so it is used only with the faster-coco-eval versions it was written for (1.8.x); with any other
version :func:`available` is False (logged once) and :func:`ltdet2.evaluation.evaluate_lvis`
uses the public path, which gives the same numbers.
"""

import contextlib
import copy
import functools
import gc
import logging

import numpy as np

__all__ = ["SUPPORTED_VERSION", "available", "evaluate_bbox"]

logger = logging.getLogger(__name__)

# (major, minor) of the faster-coco-eval releases whose private API this module drives
SUPPORTED_VERSION = (1, 8)
# Module-level switch: False makes evaluate_lvis use faster-coco-eval's public LVIS path
# (the tests run both paths; scripts/benchmark_evaluator.py compares them).
enabled = True


def available():
    """True if the direct feed is enabled and the installed faster-coco-eval is a supported version."""
    return enabled and _supported_engine()


@functools.cache
def _supported_engine():
    try:  # lazy: heavy to import (its C++ engine), only needed to evaluate
        import faster_coco_eval
        import faster_coco_eval.faster_eval_api_cpp  # noqa: F401
    except ImportError:  # pragma: no cover
        return False
    version = faster_coco_eval.__version__
    if tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) == SUPPORTED_VERSION:
        return True
    logger.warning(
        "faster-coco-eval %s: ltdet2's direct feed of its C++ engine is written for %d.%d.x; "
        "using faster-coco-eval's public LVIS path instead (same numbers, slower, more memory).",
        version, *SUPPORTED_VERSION,
    )  # fmt: skip
    return False


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


def _concat_category_chunks(parts, params, position):
    """
    Merge the engine's accumulate() outputs of disjoint category chunks; ``position[k]``: index
    of category k (of ``params.catIds``) in the chunks' concatenated categories.
    """
    out = dict(parts[0])
    out["params"] = params
    precision = np.concatenate([e["precision"] for e in parts], axis=2)  # [T, R, K, A, M]
    out["precision"] = precision.take(position, axis=2)
    out["scores"] = np.concatenate([e["scores"] for e in parts], axis=2).take(position, axis=2)
    out["recall"] = np.concatenate([e["recall"] for e in parts], axis=1).take(position, axis=1)  # [T, K, A, M]
    out["counts"] = list(out["precision"].shape)
    out["matched"] = {k: v for e in parts for k, v in e.get("matched", {}).items()}
    if "evaluations_size" in out:
        out["evaluations_size"] = sum(e["evaluations_size"] for e in parts)
    return out


def _category_chunks(slots, max_pairs_per_call, min_fill=0.75):
    """
    Chunks of categories for the engine calls, by decreasing slot count.

    Args:
        slots (ndarray): [C] non-empty (image, category) pairs of each category.
        max_pairs_per_call (int): at most this many (slot, category) pairs per call (a chunk
            that starts with a category of more slots has that category alone).
        min_fill (float): a chunk whose first (largest) category has m slots (the engine call
            has m images) takes a category only if it has at least ``min_fill * m`` slots: the
            engine evaluates at most 1 / min_fill times as many pairs as are non-empty (plus
            one per category without any).

    Returns:
        order (ndarray): [C] category indices, chunk after chunk.
        chunks (list[tuple[int, int, int]]): (start, end, m) of each chunk: categories
        ``order[start:end]``, ``m`` slots (at least 1).
    """
    order = np.argsort(-slots, kind="stable")
    n = slots[order].tolist()
    chunks = []
    c0 = 0
    while c0 < len(n):
        m = max(n[c0], 1)  # categories without pairs: an engine call of one empty image
        cap = max(max_pairs_per_call // m, 1)
        c1 = c0 + 1
        while c1 < len(n) and c1 - c0 < cap and n[c1] >= min_fill * n[c0]:
            c1 += 1
        chunks.append((c0, c1, m))
        c0 = c1
    return order, chunks


@contextlib.contextmanager
def _gc_paused():
    """
    Pause Python's cyclic garbage collector: the feed allocates millions of lists and dicts
    (none in a reference cycle), which trigger collections that free nothing (9% of the
    feed's time at 5,000 LVIS-sized images).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def evaluate_bbox(gt, img, cat, box, score, max_dets, *, chunk_entries=1 << 22, max_pairs_per_call=1 << 20):
    """
    LVIS bbox evaluation of validated result columns with faster-coco-eval's C++ engine.

    Args:
        gt (faster_coco_eval.COCO): LVIS ground truth.
        img, cat (ndarray): [N] int64 image / category json ids, all in ``gt``.
        box (ndarray): [N, 4] float64 xywh boxes in absolute pixels.
        score (ndarray): [N] float64 scores.
        max_dets (int): at most this many detections per image over all categories, a limit
            the caller has already applied (as ``lvis.LVISResults``); negative: no limit.
        chunk_entries (int): IoU values computed per numpy chunk.
        max_pairs_per_call (int): (slot, category) pairs per engine call, at most (or one
            category's slots where more; the engine holds about 1 KB per pair while it runs).

    Returns:
        COCOeval_faster: evaluated, accumulated and summarized (``stats_as_dict``, ``eval``).
    """
    with _gc_paused():
        return _evaluate_bbox(gt, img, cat, box, score, max_dets, chunk_entries, max_pairs_per_call)


def _evaluate_bbox(gt, img, cat, box, score, max_dets, chunk_entries, max_pairs_per_call):
    """:func:`evaluate_bbox` with the garbage collector paused."""
    # lazy: heavy to import (its C++ engine), only needed to evaluate
    import faster_coco_eval.faster_eval_api_cpp as _C
    from faster_coco_eval import COCOeval_faster

    index = _PairIndex(gt)
    C = index.C
    # 1. federated filtering: (image, category) annotated or in the image's neg_category_ids
    gt_anns = gt.dataset["annotations"]
    g_img = np.fromiter((a["image_id"] for a in gt_anns), dtype=np.int64, count=len(gt_anns))
    g_cat = np.fromiter((a["category_id"] for a in gt_anns), dtype=np.int64, count=len(gt_anns))
    g_key = index.keys(g_img, g_cat)
    g_in = g_key >= 0  # annotations of unknown categories/images are never evaluated
    evaluable = np.union1d(g_key[g_in], index.image_list_keys(gt, "neg_category_ids"))
    d_key = index.keys(img, cat)
    sel = np.flatnonzero(np.isin(d_key, evaluable))
    d_key = d_key[sel]
    n = len(sel)
    d_score = score[sel]
    d_box = box[sel]
    del sel
    # 2. unmatched detections of not-exhaustive categories are ignored (engine: "lvis_mark")
    d_mark = np.isin(d_key, index.image_list_keys(gt, "not_exhaustive_category_ids"))
    d_area = d_box[:, 2] * d_box[:, 3]
    max_det = max_dets if max_dets >= 0 else max(n, 1)

    # 3. slots: the engine evaluates only the non-empty (image, category) pairs; within a
    # category they are numbered in image order (see the module docstring)
    g_key_in = g_key[g_in]
    nonempty = np.union1d(d_key, g_key_in)  # sorted: by image, then category
    ne_cat = nonempty % C
    slots = np.bincount(ne_cat, minlength=C)  # [C] non-empty pairs per category
    by_cat = np.argsort(ne_cat, kind="stable")  # by category, then image
    slot = np.empty(len(nonempty), dtype=np.int64)
    slot[by_cat] = np.arange(len(nonempty)) - np.repeat(np.cumsum(slots) - slots, slots)
    del ne_cat, by_cat

    # the engine's datasets, keyed by (slot, category id): ground truth as in
    # COCOeval._prepare (ignore = iscrowd), detections with the fields the engine reads, in
    # results order within (image, category)
    gt_ds, dt_ds = _C.Dataset(), _C.Dataset()
    g_slot = np.full(len(gt_anns), -1, dtype=np.int64)
    g_slot[g_in] = slot[np.searchsorted(nonempty, g_key_in)]
    g_crowd = np.zeros(len(gt_anns), dtype=bool)
    g_box = np.zeros((len(gt_anns), 4), dtype=np.float64)
    for k, (a, sl) in enumerate(zip(gt_anns, g_slot.tolist())):
        if sl < 0:
            continue
        crowd = int(a.get("iscrowd", 0))
        g_crowd[k] = bool(crowd)
        g_box[k] = a["bbox"]
        gt_ds.append_ref(
            sl, a["category_id"],
            {"id": a["id"], "area": a.get("area", 0.0), "iscrowd": crowd, "ignore": crowd},
        )  # fmt: skip
    del g_slot, g_key_in
    d_slot = slot[np.searchsorted(nonempty, d_key)].tolist()
    d_cat = index.cat_ids[d_key % C].tolist()
    d_id = range(1, n + 1)
    for sl, c, did, s, ar, mk in zip(d_slot, d_cat, d_id, d_score.tolist(), d_area.tolist(), d_mark.tolist()):
        dt_ds.append_ref(sl, c, {"id": did, "score": s, "area": ar, "iscrowd": 0, "lvis_mark": mk})
    del d_slot, d_cat, d_area, d_mark

    # 4. IoUs of the (image, category) pairs with ground truth and detections: [D, G] with the
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

    # 5. evaluate + accumulate in C++ (as COCOeval_faster.evaluate), summarize in Python.
    # LVIS accumulates every category on its own, so the engine runs on chunks of categories
    # with similar slot counts, the chunk's slots as its images, and the per-category arrays
    # are concatenated and put back in category order (identical numbers).
    coco_eval = COCOeval_faster(gt, None, iouType="bbox", lvis_style=True, print_function=logger.debug)
    p = coco_eval.params
    p.imgIds = index.img_ids.tolist()
    p.catIds = index.cat_ids.tolist()
    p.maxDets = [max_det]
    coco_eval.freq_groups = coco_eval._prepare_freq_group()
    coco_eval.gt_dataset, coco_eval.dt_dataset = gt_ds, dt_ds
    coco_eval._paramsEval = copy.deepcopy(p)
    base = copy.copy(p)
    base.imgIds, base.catIds = [], []
    order, chunks = _category_chunks(slots, max_pairs_per_call)
    position = np.empty(C, dtype=np.int64)
    position[order] = np.arange(C)  # category index -> position in the chunks' order
    pair_pos = position[pairs % C]
    pair_slot = slot[np.searchsorted(nonempty, pairs)]
    by_pos = np.argsort(pair_pos, kind="stable")
    pos_sorted = pair_pos[by_pos]
    del slot, nonempty
    parts = []
    for c0, c1, m in chunks:
        empty = []
        ious = [[empty] * (c1 - c0) for _ in range(m)]
        sel = by_pos[np.searchsorted(pos_sorted, c0) : np.searchsorted(pos_sorted, c1)]
        for j, i, c in zip(sel.tolist(), pair_slot[sel].tolist(), (pair_pos[sel] - c0).tolist()):
            ious[i][c] = pair_ious[j]
        params = copy.deepcopy(base)
        params.imgIds = list(range(m))
        params.catIds = index.cat_ids[order[c0:c1]].tolist()
        parts.append(_C.COCOevalEvaluateAccumulate(params, ious, gt_ds, dt_ds, params.imgIds, params.catIds, True))
        del ious
    coco_eval.eval = _concat_category_chunks(parts, coco_eval._paramsEval, position)
    coco_eval.matched = False
    coco_eval.summarize()
    return coco_eval
