"""
Tests for ltdet2.evaluation: LVIS metrics against the official ``lvis`` API on real LVIS v0.5
annotations (100 val images), the Detectron2 evaluator end to end, bad inputs and plots.
Every evaluation test runs on both engine paths: the direct feed of faster-coco-eval's C++
engine (ltdet2.evaluation.fast_lvis_feed) and faster-coco-eval's public LVIS path.

The official API (lvis 0.5.3) uses ``np.float`` (removed in numpy 1.24); the shim that
restores it is scoped to the reference computations of this file only.
"""

import copy
import json
import logging
import math
import os

import numpy as np
import pytest
import torch

from ltdet2.evaluation import LTLVISEvaluator, evaluate_lvis, fast_lvis_feed

from fixtures.lvis_api import numpy_float_shim
from fixtures.models import RESOURCES
from fixtures.synthetic_lvis import (
    detections_array_to_dicts,
    make_lvis_detections,
    make_lvis_detections_fast,
    make_lvis_gt,
)

LVIS_JSON = os.path.join(RESOURCES, "lvis_v0.5_val_100.json")
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
TOL = 0.05  # AP points
# for tests the engine switch does not change (segm always takes the public path)
ONE_PATH = pytest.mark.parametrize("engine_path", ["direct_feed"], indirect=True)


@pytest.fixture(params=["direct_feed", "public_api"], autouse=True)
def engine_path(request, monkeypatch):
    """Runs the test with evaluate_lvis on the direct feed, then on faster-coco-eval's public path."""
    monkeypatch.setattr(fast_lvis_feed, "enabled", request.param == "direct_feed")
    assert fast_lvis_feed.available() == (request.param == "direct_feed")  # 1.8.x is installed
    return request.param


@pytest.fixture(scope="module")
def gt_dict():
    with open(LVIS_JSON) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def official_gt():
    from lvis import LVIS

    return LVIS(LVIS_JSON)


def _official(lvis_gt, dets, iou_type, max_dets=300):
    """Official LVIS API results (fractions) and the LVISEval object."""
    from lvis import LVISEval, LVISResults

    dets = copy.deepcopy(dets)
    if iou_type == "segm":
        for d in dets:  # as Detectron2: mask area for the area ranges
            d.pop("bbox", None)
    with numpy_float_shim():
        res = LVISResults(lvis_gt, dets, max_dets=max_dets)
        ev = LVISEval(lvis_gt, res, iou_type)
        ev.params.max_dets = max_dets
        ev.run()
    return ev.get_results(), ev


def _assert_close(ours, ref, ev, per_class, lvis_gt):
    for m in METRICS:
        r = ref[m] * 100 if ref[m] >= 0 else float("nan")
        if math.isnan(r):
            assert math.isnan(ours[m]), (m, ours[m], r)
        else:
            assert abs(ours[m] - r) <= TOL, (m, ours[m], r)
    # per-class AP from the official precision array [T, R, K, A]
    prec = ev.eval["precision"][:, :, :, 0]
    cats = lvis_gt.load_cats(ev.params.cat_ids)
    n_defined = 0
    for k, c in enumerate(cats):
        p = prec[:, :, k]
        p = p[p > -1]
        ref_ap = float(np.mean(p)) * 100 if p.size else float("nan")
        got = per_class[c["name"]]
        if math.isnan(ref_ap):
            assert math.isnan(got), (c["name"], got)
        else:
            n_defined += 1
            assert abs(got - ref_ap) <= TOL, (c["name"], got, ref_ap)
    assert n_defined > 50  # categories with ground truth in the subset


@pytest.mark.parametrize(
    "seed,fp,dets_per_image,max_dets",
    [(0, 20, None, 300), (1, 40, None, 300), (2, 5, None, 300), (3, None, 305, 300), (4, 30, None, 25)],
)
def test_bbox_matches_official(gt_dict, official_gt, seed, fp, dets_per_image, max_dets):
    dets = make_lvis_detections(gt_dict, seed=seed, fp_per_image=fp, dets_per_image=dets_per_image)
    before = copy.deepcopy(dets[:50])
    ours, per_class = evaluate_lvis(LVIS_JSON, dets, "bbox", max_dets=max_dets, return_per_class=True)
    assert dets[:50] == before  # input not modified
    ref, ev = _official(official_gt, dets, "bbox", max_dets=max_dets)
    _assert_close(ours, ref, ev, per_class, official_gt)
    assert "float" not in np.__dict__


@ONE_PATH
@pytest.mark.parametrize("seed", [0, 1])
def test_segm_matches_official(gt_dict, official_gt, seed):
    dets = make_lvis_detections(gt_dict, seed=seed, fp_per_image=15, with_masks=True)
    ours, per_class = evaluate_lvis(gt_dict, dets, "segm", return_per_class=True)
    ref, ev = _official(official_gt, dets, "segm")
    _assert_close(ours, ref, ev, per_class, official_gt)


def _to_array(dets):
    return np.array([[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in dets])


def _same(a, b):
    """Identical metrics / per-class dicts (NaN == NaN)."""
    assert list(a) == list(b)
    assert np.array_equal(np.array(list(a.values())), np.array(list(b.values())), equal_nan=True), (a, b)


@pytest.mark.parametrize(
    "seed,fp,dets_per_image,max_dets", [(0, 20, None, 300), (3, None, 305, 300), (4, 30, None, 25)]
)
def test_array_input_identical_to_list(gt_dict, official_gt, seed, fp, dets_per_image, max_dets):
    """[N, 7] array and list of dicts: identical metrics."""
    dets = make_lvis_detections(gt_dict, seed=seed, fp_per_image=fp, dets_per_image=dets_per_image)
    ref, ref_pc = evaluate_lvis(LVIS_JSON, dets, max_dets=max_dets, return_per_class=True)
    arr = _to_array(dets)
    before = arr.copy()
    m, pc = evaluate_lvis(gt_dict, arr, max_dets=max_dets, return_per_class=True)
    _same(m, ref)
    _same(pc, ref_pc)
    assert np.array_equal(arr, before)  # input not modified
    # and the official API
    off, ev = _official(official_gt, dets, "bbox", max_dets=max_dets)
    _assert_close(ref, off, ev, ref_pc, official_gt)


@ONE_PATH
def test_direct_engine_feed_identical_to_engine_path(gt_dict):
    """The numpy + C++ path (any category chunking) equals faster-coco-eval's loadRes path."""
    from ltdet2.evaluation import lvis_evaluation as L

    dets = make_lvis_detections(gt_dict, seed=6, dets_per_image=305)
    gt = L.load_lvis_gt(gt_dict)
    cols = L._limit_columns_per_image(L._columns_from_dicts(dets, gt, "<test>"), 300)
    assert len(cols[0]) < len(dets)
    ref = L._evaluate_public(gt, L._column_dicts(*cols), "bbox", 300)
    for pairs_per_call, chunk in ((1 << 20, 1 << 22), (700, 64), (1, 1)):
        ev = fast_lvis_feed.evaluate_bbox(gt, *cols, 300, max_pairs_per_call=pairs_per_call, chunk_entries=chunk)
        for k in ("precision", "recall", "scores"):
            assert np.array_equal(np.asarray(ref.eval[k]), np.asarray(ev.eval[k])), k
        assert ref.eval["matched"] == ev.eval["matched"]
        assert ref.stats_as_dict == ev.stats_as_dict


def _sparse_lvis_case():
    """
    Ground truth and [N, 7] detections where almost every (image, category) pair is empty (no
    detection, no ground truth), with LVIS's negative and not-exhaustive category lists, images
    without annotations, categories without any pair, and scores tied across images.
    """
    gt = make_lvis_gt(num_images=90, num_classes=500, seed=3, max_objects=5)
    rng = np.random.default_rng(3)
    C = len(gt["categories"])
    for k in range(5):  # images without annotations: a negative list, no list, a not-exhaustive list
        neg = sorted(rng.choice(C, size=4, replace=False).tolist()) if k < 3 else []
        nel = [int(rng.integers(C)) + 1] if k == 4 else []
        gt["images"].append(
            {"id": 1000 + k, "height": 480, "width": 640, "file_name": f"extra_{k}.jpg",
             "neg_category_ids": [c + 1 for c in neg], "not_exhaustive_category_ids": nel}
        )  # fmt: skip
    dets = make_lvis_detections_fast(gt, seed=3, dets_per_image=30, as_array=True)
    dets[:, 5] = np.round(dets[:, 5], 1)  # ties in score across images (their order breaks them)
    return gt, dets


@ONE_PATH
@pytest.mark.parametrize("max_dets", [300, 12])
def test_direct_feed_sparse_pairs_identical_to_public_path(monkeypatch, max_dets):
    """
    The direct feed evaluates only the non-empty (image, category) pairs, renumbered per category
    in image order: bit-identical to faster-coco-eval's public path, which evaluates all pairs.
    """
    from ltdet2.evaluation import lvis_evaluation as L

    gt_dict, dets = _sparse_lvis_case()
    gt = L.load_lvis_gt(gt_dict)
    cols = L._limit_columns_per_image(L._columns_from_array(dets, gt, "<test>"), max_dets)
    img, cat, score = cols[0], cols[1], cols[3]
    # the case is what it should be: mostly empty pairs, every LVIS branch, cross-image ties
    evaluable = L._evaluable_pairs(gt)
    kept = np.array([(i, c) in evaluable for i, c in zip(img.tolist(), cat.tolist())])
    nonempty = {(a["image_id"], a["category_id"]) for a in gt_dict["annotations"]}
    nonempty |= set(zip(img[kept].tolist(), cat[kept].tolist()))
    assert len(nonempty) < 0.02 * len(gt_dict["images"]) * len(gt_dict["categories"])
    assert 0 < kept.sum() < len(kept)  # detections the federated filtering drops
    used = {c for _, c in nonempty}
    assert len(used) < len(gt_dict["categories"])  # categories without any pair
    nel = {(im["id"], c) for im in gt_dict["images"] for c in im["not_exhaustive_category_ids"]}
    assert any((i, c) in nel for i, c in zip(img[kept].tolist(), cat[kept].tolist()))
    neg = {(im["id"], c) for im in gt_dict["images"] for c in im["neg_category_ids"]}
    assert any((i, c) in neg for i, c in zip(img[kept].tolist(), cat[kept].tolist()))
    assert any(i >= 1000 for i in img[kept].tolist())  # an image without annotations
    ties = {}
    for i, c, s in zip(img[kept].tolist(), cat[kept].tolist(), score[kept].tolist()):
        ties.setdefault((c, s), set()).add(i)
    assert sum(len(v) > 1 for v in ties.values()) > 20

    ref = L._evaluate_public(gt, L._column_dicts(*cols), "bbox", max_dets)
    for pairs_per_call in (1 << 20, 40, 1):
        ev = fast_lvis_feed.evaluate_bbox(gt, *cols, max_dets, max_pairs_per_call=pairs_per_call)
        for k in ("precision", "recall", "scores"):
            assert np.array_equal(np.asarray(ref.eval[k]), np.asarray(ev.eval[k])), (k, pairs_per_call)
        assert ref.eval["matched"] == ev.eval["matched"]
        assert ref.stats_as_dict == ev.stats_as_dict
    # and through evaluate_lvis: every metric and per-class AP
    out = {}
    for enabled in (True, False):
        monkeypatch.setattr(fast_lvis_feed, "enabled", enabled)
        out[enabled] = evaluate_lvis(gt_dict, dets, max_dets=max_dets, return_per_class=True, instance_buckets=True)
    _same(out[True][0], out[False][0])
    _same(out[True][1], out[False][1])
    assert sum(not math.isnan(v) for v in out[True][1].values()) > 50


@ONE_PATH
def test_category_chunks():
    """Every category in one chunk, each chunk's slot count covers its categories', calls bounded."""
    slots = np.array([0, 7, 3, 100, 7, 0, 1, 60, 2, 2, 40, 5])
    for max_pairs in (1 << 20, 100, 9, 1):
        order, chunks = fast_lvis_feed._category_chunks(slots, max_pairs)
        assert sorted(order.tolist()) == list(range(len(slots)))
        assert [c0 for c0, _, _ in chunks] == [0] + [c1 for _, c1, _ in chunks[:-1]]
        assert chunks[-1][1] == len(slots)
        for c0, c1, m in chunks:
            n = slots[order[c0:c1]]
            assert m == max(n.max(), 1) and n.min() >= 0.75 * n.max()
            assert c1 - c0 == 1 or (c1 - c0) * m <= max_pairs
        assert slots[order].tolist() == sorted(slots.tolist(), reverse=True)


@ONE_PATH
def test_direct_feed_only_for_supported_engine_version(monkeypatch, caplog):
    """Another faster-coco-eval version: the direct feed is not used, and that is logged once."""
    import faster_coco_eval

    monkeypatch.setattr(faster_coco_eval, "__version__", "1.9.0")
    fast_lvis_feed._supported_engine.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=fast_lvis_feed.__name__):
            assert not fast_lvis_feed.available()
            assert not fast_lvis_feed.available()
        assert [r.getMessage() for r in caplog.records if "1.9.0" in r.getMessage()] == [
            "faster-coco-eval 1.9.0: ltdet2's direct feed of its C++ engine is written for 1.8.x; using "
            "faster-coco-eval's public LVIS path instead (same numbers, slower, more memory)."
        ]
        monkeypatch.setattr(faster_coco_eval, "__version__", "1.8.3")
        fast_lvis_feed._supported_engine.cache_clear()
        assert fast_lvis_feed.available()
    finally:
        fast_lvis_feed._supported_engine.cache_clear()


def test_fast_synthetic_array_and_frequency_groups():
    gt = make_lvis_gt(num_images=200, num_classes=1203, seed=0, max_objects=12)
    freq = [c["frequency"] for c in gt["categories"]]
    assert (freq.count("r"), freq.count("c"), freq.count("f")) == (337, 461, 405)  # LVIS v1
    ic = {g: [c["image_count"] for c in gt["categories"] if c["frequency"] == g] for g in "rcf"}
    assert max(ic["r"]) <= min(ic["c"]) and max(ic["c"]) <= min(ic["f"])
    arr = make_lvis_detections_fast(gt, seed=1, dets_per_image=50, as_array=True)
    dets = make_lvis_detections_fast(gt, seed=1, dets_per_image=50)
    assert arr.shape == (len(dets), 7) and detections_array_to_dicts(arr) == dets
    a = evaluate_lvis(gt, arr)
    b = evaluate_lvis(gt, dets)
    _same(a, b)
    assert 0 < a["AP"] < 100


def test_array_bad_inputs(gt_dict):
    good = np.array([[gt_dict["images"][0]["id"], 1, 2, 3, 4, 0.5, 1]], dtype=np.float64)
    with pytest.raises(ValueError, match=r"shape \[N, 7\]"):
        evaluate_lvis(gt_dict, good[:, :6])
    with pytest.raises(ValueError, match=r"image_id.*987654321"):
        evaluate_lvis(gt_dict, np.r_[good, [[987654321, 1, 2, 3, 4, 0.5, 1]]])
    with pytest.raises(ValueError, match=r"category_id.*99999"):
        evaluate_lvis(gt_dict, np.r_[good, [[good[0, 0], 1, 2, 3, 4, 0.5, 99999]]])
    with pytest.raises(ValueError, match="category_id must be integers"):
        evaluate_lvis(gt_dict, np.r_[good, [[good[0, 0], 1, 2, 3, 4, 0.5, 1.5]]])
    with pytest.raises(ValueError, match="non-finite score"):
        evaluate_lvis(gt_dict, np.r_[good, [[good[0, 0], 1, 2, 3, 4, np.nan, 1]]])
    with pytest.raises(ValueError, match="non-finite bbox"):
        evaluate_lvis(gt_dict, np.r_[good, [[good[0, 0], 1, np.inf, 3, 4, 0.5, 1]]])
    with pytest.raises(ValueError, match="must be numeric"):
        evaluate_lvis(gt_dict, good.astype(str))
    with pytest.raises(ValueError, match="list of dicts.*got Tensor"):  # only numpy arrays
        evaluate_lvis(gt_dict, torch.from_numpy(good))
    with pytest.raises(ValueError, match="list of dicts.*got dict"):  # no dict of columns
        evaluate_lvis(gt_dict, {"image_id": [1], "category_id": [1], "bbox": [[1, 2, 3, 4]], "score": [0.5]})
    with pytest.raises(ValueError, match="segmentation"):
        evaluate_lvis(gt_dict, good, iou_type="segm")
    m = evaluate_lvis(gt_dict, np.zeros((0, 7)))
    assert all(math.isnan(v) for v in m.values())


def test_results_from_file_and_gt_dict(gt_dict, tmp_path):
    dets = make_lvis_detections(gt_dict, seed=5, fp_per_image=10)
    p = tmp_path / "res.json"
    p.write_text(json.dumps(dets))
    a = evaluate_lvis(LVIS_JSON, str(p))
    b = evaluate_lvis(gt_dict, dets)
    assert a == b
    assert set(a) == set(METRICS)
    assert all(isinstance(v, float) for v in a.values())


def test_perfect_detections(gt_dict):
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt_dict["annotations"]
    ]
    m = evaluate_lvis(gt_dict, dets)
    for k in ("AP", "AP50", "AP75", "APc", "APf"):
        assert m[k] == pytest.approx(100.0), k


def test_empty_and_unevaluable_results(gt_dict, caplog):
    with caplog.at_level(logging.WARNING):
        m, pc = evaluate_lvis(gt_dict, [], return_per_class=True)
    assert all(math.isnan(v) for v in m.values())
    assert all(math.isnan(v) for v in pc.values()) and len(pc) == 1230
    assert "No predictions" in caplog.text
    # detections only on categories that are neither annotated nor negative: all filtered out
    img = gt_dict["images"][0]
    known = set(img["neg_category_ids"]) | {
        a["category_id"] for a in gt_dict["annotations"] if a["image_id"] == img["id"]
    }
    cat = next(c["id"] for c in gt_dict["categories"] if c["id"] not in known)
    m = evaluate_lvis(gt_dict, [{"image_id": img["id"], "category_id": cat, "bbox": [0, 0, 10, 10], "score": 0.5}])
    assert m["AP"] == 0.0 and m["APf"] == 0.0


def test_bad_inputs(gt_dict, tmp_path):
    good = {"image_id": gt_dict["images"][0]["id"], "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}
    with pytest.raises(FileNotFoundError, match="nope.json"):
        evaluate_lvis(str(tmp_path / "nope.json"), [good])
    with pytest.raises(FileNotFoundError, match="missing_res.json"):
        evaluate_lvis(gt_dict, str(tmp_path / "missing_res.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        evaluate_lvis(gt_dict, str(bad))
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        evaluate_lvis(str(bad), [good])
    obj = tmp_path / "obj.json"
    obj.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="list of dicts"):
        evaluate_lvis(gt_dict, str(obj))
    with pytest.raises(ValueError, match=r"image_id.*987654321"):
        evaluate_lvis(gt_dict, [good, dict(good, image_id=987654321)])
    with pytest.raises(ValueError, match=r"category_id.*99999"):
        evaluate_lvis(gt_dict, [good, dict(good, category_id=99999)])
    with pytest.raises(ValueError, match="lacks field 'score'"):
        evaluate_lvis(gt_dict, [{k: v for k, v in good.items() if k != "score"}])
    with pytest.raises(ValueError, match="bbox"):
        evaluate_lvis(gt_dict, [dict(good, bbox=[1, 2, 3])])
    with pytest.raises(ValueError, match="score"):
        evaluate_lvis(gt_dict, [dict(good, score=float("nan"))])
    with pytest.raises(ValueError, match="segmentation"):
        evaluate_lvis(gt_dict, [good], iou_type="segm")
    with pytest.raises(ValueError, match="iou_type"):
        evaluate_lvis(gt_dict, [good], iou_type="keypoints")
    with pytest.raises(ValueError, match="neg_category_ids"):
        coco_like = dict(gt_dict, images=[{k: v for k, v in gt_dict["images"][0].items() if k != "neg_category_ids"}])
        evaluate_lvis(coco_like, [good])


def test_synthetic_gt_matches_official(tmp_path):
    """The benchmark's synthetic LVIS data, small: same numbers as the official API."""
    from lvis import LVIS

    gt = make_lvis_gt(num_images=60, num_classes=80, seed=3)
    assert {c["frequency"] for c in gt["categories"]} == {"r", "c", "f"}
    p = tmp_path / "gt.json"
    p.write_text(json.dumps(gt))
    dets = make_lvis_detections(gt, seed=3, dets_per_image=40)
    ours, per_class = evaluate_lvis(gt, dets, return_per_class=True)
    lvis_gt = LVIS(str(p))
    ref, ev = _official(lvis_gt, dets, "bbox")
    for m in METRICS:
        r = ref[m] * 100 if ref[m] >= 0 else float("nan")
        assert (math.isnan(r) and math.isnan(ours[m])) or abs(ours[m] - r) <= TOL, (m, ours[m], r)


# ------------------------------------------------------------------------------------------
# Detectron2 evaluator end to end
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def registered_dataset():
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_lvis_instances

    name = "ltdet2_test_lvis_v0.5_val_100"
    if name not in DatasetCatalog.list():
        register_lvis_instances(name, {}, LVIS_JSON, "/nonexistent/images")
    return name


def _to_outputs(gt_dict, dets, with_masks):
    """Per-image Detectron2 inputs/outputs from LVIS results (contiguous id = json id - 1)."""
    from pycocotools import mask as mask_util

    from detectron2.structures import Boxes, Instances

    by_img = {}
    for d in dets:
        by_img.setdefault(d["image_id"], []).append(d)
    inputs, outputs = [], []
    for im in gt_dict["images"]:
        ds = by_img.get(im["id"], [])
        inst = Instances((im["height"], im["width"]))
        xywh = torch.tensor([d["bbox"] for d in ds], dtype=torch.float32).reshape(-1, 4)
        inst.pred_boxes = Boxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1))
        inst.scores = torch.tensor([d["score"] for d in ds], dtype=torch.float32)
        inst.pred_classes = torch.tensor([d["category_id"] - 1 for d in ds], dtype=torch.int64)
        if with_masks:
            m = [mask_util.decode(d["segmentation"]) for d in ds]
            inst.pred_masks = torch.from_numpy(
                np.stack(m) if m else np.zeros((0, im["height"], im["width"]), np.uint8)
            ).bool()
        inputs.append({"image_id": im["id"], "height": im["height"], "width": im["width"]})
        outputs.append({"instances": inst})
    return inputs, outputs


def test_evaluator_end_to_end(gt_dict, registered_dataset, tmp_path):
    dets = make_lvis_detections(gt_dict, seed=7, fp_per_image=8, with_masks=True)
    inputs, outputs = _to_outputs(gt_dict, dets, with_masks=True)
    ev = LTLVISEvaluator(registered_dataset, distributed=False, output_dir=str(tmp_path))
    ev.reset()
    for i in range(0, len(inputs), 10):  # batches of 10 images
        ev.process(inputs[i : i + 10], outputs[i : i + 10])
    results = ev.evaluate()
    assert list(results) == ["bbox", "segm"]
    for task in ("bbox", "segm"):
        direct, direct_pc = evaluate_lvis(gt_dict, dets, task, return_per_class=True)
        for m in METRICS:
            assert set(results[task]) == set(METRICS)
            a, b = results[task][m], direct[m]
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOL, (task, m, a, b)
        with open(tmp_path / f"per_class_ap_{task}.json") as f:
            recs = json.load(f)
        assert len(recs) == 1230
        assert [r["id"] for r in recs] == sorted(c["id"] for c in gt_dict["categories"])
        assert {"id", "name", "frequency", "image_count", "AP"} <= set(recs[0])
        names = {c["id"]: c["name"] for c in gt_dict["categories"]}
        assert all(r["name"] == names[r["id"]] for r in recs)
        with_gt = {a["category_id"] for a in gt_dict["annotations"]}
        assert all((r["AP"] is None) == (r["id"] not in with_gt) for r in recs)
        for r in recs:
            ref = direct_pc[r["name"]]
            assert (r["AP"] is None and math.isnan(ref)) or abs(r["AP"] - ref) <= TOL, (task, r, ref)
    with open(tmp_path / "lvis_instances_results.json") as f:
        saved = json.load(f)
    assert len(saved) == len(dets)
    assert {d["category_id"] for d in saved} == {d["category_id"] for d in dets}  # 1-based again


def test_evaluator_bbox_only_tasks_and_errors(gt_dict, registered_dataset, tmp_path):
    dets = make_lvis_detections(gt_dict, seed=8, fp_per_image=5)
    inputs, outputs = _to_outputs(gt_dict, dets, with_masks=False)
    ev = LTLVISEvaluator(registered_dataset, tasks=("bbox",), distributed=False)
    ev.reset()
    ev.process(inputs, outputs)
    res = ev.evaluate()
    assert list(res) == ["bbox"]
    ref = evaluate_lvis(gt_dict, dets)
    assert abs(res["bbox"]["AP"] - ref["AP"]) <= TOL
    # nothing processed: like detectron2, warn and return {}
    ev.reset()
    assert ev.evaluate() == {}
    with pytest.raises(NotImplementedError, match="proposals"):
        LTLVISEvaluator(registered_dataset, tasks=("box_proposals",), distributed=False)


# ------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------
@ONE_PATH
def test_plot_per_class_ap(tmp_path):
    from ltdet2.evaluation.plots import plot_per_class_ap

    rng = np.random.default_rng(0)
    recs = [
        {"id": i + 1, "name": f"c{i}", "frequency": "rcf"[i % 3], "image_count": int(rng.integers(0, 2000)),
         "AP": None if i % 7 == 0 else float(rng.uniform(0, 60))}
        for i in range(30)
    ]  # fmt: skip
    ap_file = tmp_path / "per_class_ap_bbox.json"
    ap_file.write_text(json.dumps(recs))

    def png_size(path):
        head = open(path, "rb").read(24)
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")

    out = plot_per_class_ap(str(ap_file), str(tmp_path / "a.png"))
    assert png_size(out) == (960, 432)  # one panel, 8 x 3.6 in at 120 dpi
    np.save(tmp_path / "s.npy", rng.uniform(0, 1, 31))  # C+1 (background last)
    out = plot_per_class_ap(str(ap_file), str(tmp_path / "b.png"), mean_scores=str(tmp_path / "s.npy"))
    assert png_size(out) == (960, 864)  # AP and mean-score panels
    (tmp_path / "s.json").write_text(json.dumps({"c1": 0.3, "5": 0.1}))
    out = plot_per_class_ap(recs, str(tmp_path / "c.png"), mean_scores=str(tmp_path / "s.json"))
    assert png_size(out) == (960, 864)
    with pytest.raises(FileNotFoundError, match="mean-score file not found"):
        plot_per_class_ap(recs, str(tmp_path / "d.png"), mean_scores=str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="per-class AP file .*bad.json is not valid JSON"):
        plot_per_class_ap(str(tmp_path / "bad.json"), str(tmp_path / "d.png"))
    with pytest.raises(ValueError, match="expected 30"):
        plot_per_class_ap(recs, str(tmp_path / "d.png"), mean_scores=np.zeros(5))
