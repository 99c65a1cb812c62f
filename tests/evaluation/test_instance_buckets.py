"""
AP by training instance-count bucket (LST's AP(0,1] ... AP[1000,-)) against the official ``lvis`` API
restricted to each bucket's categories, on both engine paths; the evaluator's option and the per-class
records' ids (the source dataset's, from ``source_id``).
"""

import json
import math
import os

import numpy as np
import pytest
from test_evaluation import METRICS, TOL, _to_outputs

from ltdet2.evaluation import LTLVISEvaluator, evaluate_lvis, fast_lvis_feed
from ltdet2.evaluation.lvis_evaluation import INSTANCE_COUNT_BUCKETS, _bucket_mask

from fixtures.models import RESOURCES
from fixtures.synthetic_lvis import make_lvis_detections

LVIS_JSON = os.path.join(RESOURCES, "lvis_v0.5_val_100.json")
BUCKET_METRICS = tuple("AP" + b for b in INSTANCE_COUNT_BUCKETS)
# bucket -> training instance counts drawn for its categories (1, 2..5, 6..9 and 10 land in (0,10])
# tests the engine switch does not change (or whose other path test_evaluation.py covers)
ONE_PATH = pytest.mark.parametrize("engine_path", ["direct_feed"], indirect=True)
COUNT_CHOICES = np.array([1, 3, 5, 7, 10, 40, 99, 100, 500, 999, 1000, 5000])


@pytest.fixture(params=["direct_feed", "public_api"], autouse=True)
def engine_path(request, monkeypatch):
    monkeypatch.setattr(fast_lvis_feed, "enabled", request.param == "direct_feed")
    return request.param


@pytest.fixture(scope="module")
def bucketed_gt_file(tmp_path_factory):
    """Path of the 100-image LVIS v0.5 val subset with seeded training instance counts; categories
    with ground truth in the subset never get >= 1000 instances (AP[1000,-) is NaN), a few get 0 (no bucket)."""
    with open(LVIS_JSON) as f:
        gt = json.load(f)
    rng = np.random.default_rng(0)
    with_gt = {a["category_id"] for a in gt["annotations"]}
    for c in gt["categories"]:
        choices = COUNT_CHOICES if c["id"] not in with_gt else np.r_[0, COUNT_CHOICES[COUNT_CHOICES < 1000]]
        c["instance_count"] = int(rng.choice(choices))
    path = tmp_path_factory.mktemp("buckets") / "gt.json"
    path.write_text(json.dumps(gt))
    return str(path)


@pytest.fixture
def bucketed_gt(bucketed_gt_file):
    """(gt dict, path): a fresh dict per test (the engine adds fields to the annotation dicts)."""
    with open(bucketed_gt_file) as f:
        return json.load(f), bucketed_gt_file


def _official_bucket_ap(lvis_gt, dets, iou_type, bucket):
    """AP (percent) of the official API with its cat_ids restricted to the bucket's categories; NaN if undefined."""
    from lvis import LVISEval, LVISResults

    from fixtures.lvis_api import numpy_float_shim

    cats = [c for c in lvis_gt.load_cats(None) if _bucket_mask(bucket, np.array([c["instance_count"]]))[0]]
    if iou_type == "segm":
        dets = [{k: v for k, v in d.items() if k != "bbox"} for d in dets]
    with numpy_float_shim():
        ev = LVISEval(lvis_gt, LVISResults(lvis_gt, dets, max_dets=300), iou_type)
        ev.params.cat_ids = sorted(c["id"] for c in cats)
        ev.run()
    ap = ev.get_results()["AP"]
    return ap * 100 if ap >= 0 else float("nan")


@ONE_PATH
def test_bucket_intervals():
    counts = np.array([0, 1, 2, 5, 6, 10, 11, 99, 100, 999, 1000, 10**6])
    got = {b: counts[_bucket_mask(b, counts)].tolist() for b in INSTANCE_COUNT_BUCKETS}
    assert got == {
        "(0,1]": [1],
        "(0,5]": [1, 2, 5],
        "(0,10]": [1, 2, 5, 6, 10],
        "[10,100)": [10, 11, 99],
        "[100,1000)": [100, 999],
        "[1000,-)": [1000, 10**6],
    }


@pytest.mark.parametrize("iou_type,seed", [("bbox", 0), ("segm", 2)])
def test_bucket_ap_matches_official_restricted(bucketed_gt, engine_path, iou_type, seed):
    from lvis import LVIS

    if iou_type == "segm" and engine_path == "direct_feed":
        pytest.skip("segm always takes the public path")
    gt, path = bucketed_gt
    dets = make_lvis_detections(gt, seed=seed, fp_per_image=15, with_masks=iou_type == "segm")
    ours = evaluate_lvis(gt, dets, iou_type, instance_buckets=True)
    plain = evaluate_lvis(gt, dets, iou_type)
    assert list(ours) == list(METRICS) + list(BUCKET_METRICS)
    assert {m: ours[m] for m in METRICS} == plain  # existing metrics unchanged
    lvis_gt = LVIS(path)
    for bucket in INSTANCE_COUNT_BUCKETS:
        ref = _official_bucket_ap(lvis_gt, dets, iou_type, bucket)
        got = ours["AP" + bucket]
        if bucket == "[1000,-)":
            assert math.isnan(ref) and math.isnan(got)  # categories, but none with ground truth
        else:
            assert abs(got - ref) <= TOL, (bucket, got, ref)
    # buckets differ from each other and from AP (the test is not vacuous)
    assert len({round(ours[m], 3) for m in ("AP", *BUCKET_METRICS[:-1])}) == 6


@ONE_PATH
def test_bucket_needs_instance_counts(bucketed_gt):
    gt, _ = bucketed_gt
    no_counts = dict(gt, categories=[{k: v for k, v in c.items() if k != "instance_count"} for c in gt["categories"]])
    dets = make_lvis_detections(gt, seed=0, fp_per_image=2)
    assert evaluate_lvis(no_counts, dets) == evaluate_lvis(gt, dets)  # only the option needs them
    with pytest.raises(ValueError, match=r"categories \[1, 2, .*no 'instance_count' \(1230 of 1230\)"):
        evaluate_lvis(no_counts, dets, instance_buckets=True)
    m = evaluate_lvis(gt, [], instance_buckets=True)
    assert list(m) == list(METRICS) + list(BUCKET_METRICS) and all(math.isnan(v) for v in m.values())


@ONE_PATH
def test_evaluator_buckets_and_source_ids(bucketed_gt, tmp_path):
    """The evaluator's option (bbox and segm) equals evaluate_lvis; per-class records store the source ids."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_lvis_instances

    gt, _ = bucketed_gt
    gt = dict(gt, categories=[dict(c, source_id=1000 + c["id"]) for c in gt["categories"]])
    path = tmp_path / "gt_source_ids.json"
    path.write_text(json.dumps(gt))
    name = f"ltdet2_test_buckets_{os.getpid()}_{tmp_path.name}"
    if name not in DatasetCatalog.list():
        register_lvis_instances(name, {}, str(path), "/nonexistent/images")
    dets = make_lvis_detections(gt, seed=3, fp_per_image=5, with_masks=True)
    inputs, outputs = _to_outputs(gt, dets, with_masks=True)
    ev = LTLVISEvaluator(name, distributed=False, output_dir=str(tmp_path), instance_buckets=True)
    ev.reset()
    ev.process(inputs, outputs)
    results = ev.evaluate()
    for task in ("bbox", "segm"):
        direct = evaluate_lvis(gt, dets, task, instance_buckets=True)
        assert list(results[task]) == list(direct)
        for m, ref in direct.items():
            got = results[task][m]
            assert (math.isnan(got) and math.isnan(ref)) or abs(got - ref) <= TOL, (task, m, got, ref)
        recs = json.loads((tmp_path / f"per_class_ap_{task}.json").read_text())
        # the stored id is the source dataset's (source_id), the evaluated set's own id is dataset_id
        assert [r["id"] for r in recs] == [1000 + r["dataset_id"] for r in recs] == sorted(r["id"] for r in recs)
        assert not any("source_id" in r for r in recs)
    # without the option: the existing keys only
    ev = LTLVISEvaluator(name, distributed=False)
    ev.reset()
    ev.process(inputs, outputs)
    assert set(ev.evaluate()["bbox"]) == set(METRICS)
