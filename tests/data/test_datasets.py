"""register_lvis_format_dataset: a user's LVIS- / COCO-format dataset with metadata, dicts and counts from the
validated file, used by RFS, replay targets, indicators and the evaluator; every invalid case reported."""

import json
import logging
import math
import os
import re

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.structures import Boxes, BoxMode, Instances

from ltdet2.data import (
    dataset_class_image_count,
    evaluation_ground_truth,
    lvis_meta_from_dataset,
    register_lvis_format_dataset,
)
from ltdet2.data.samplers import repeat_factor_sampler, repeat_factors_from_dataset_dicts
from ltdet2.evaluation import LTLVISEvaluator, evaluate_lvis
from ltdet2.memory import InstanceFrequency
from ltdet2.modeling.feature_sources import ObjectReplay

from fixtures.models import load_repo_module

# json category ids 3, 7, 20 -> contiguous 0, 1, 2 (sorted ids), names in json order deliberately unsorted
CATEGORIES = [{"id": 20, "name": "twenty"}, {"id": 3, "name": "three"}, {"id": 7, "name": "seven"}]
# (annotation id, image id, category id); images 101..104
ANNOTATIONS = [(1, 101, 7), (2, 101, 20), (3, 102, 7), (4, 103, 3), (5, 103, 7), (6, 104, 20), (7, 104, 20)]
# counted per contiguous class (3, 7, 20): images {103}, {101, 102, 103}, {101, 104}; instances 1, 3, 3
IMAGE_COUNT = [1, 3, 2]
INSTANCE_COUNT = [1, 3, 3]


def box_of(annotation_id):
    return [float(annotation_id), 2.0, 10.0, 12.0]


def polygon_of(box):
    x, y, w, h = box
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def lvis_json(stored_counts=False):
    """An LVIS-format json (federated image lists, coco_url) of the annotations above."""
    present = {}
    for _, image_id, category_id in ANNOTATIONS:
        present.setdefault(image_id, set()).add(category_id)
    images = [
        {
            "id": i,
            "coco_url": f"http://images.example.org/train2017/{i:06d}.jpg",
            "height": 64,
            "width": 80,
            "neg_category_ids": sorted({3, 7, 20} - present[i])[:1],
            "not_exhaustive_category_ids": [],
        }
        for i in (104, 101, 103, 102)
    ]
    annotations = [
        {
            "id": a,
            "image_id": i,
            "category_id": c,
            "bbox": box_of(a),
            "area": 120.0,
            "segmentation": polygon_of(box_of(a)),
        }
        for a, i, c in ANNOTATIONS
    ]
    categories = [dict(c) for c in CATEGORIES]
    if stored_counts:
        index = {3: 0, 7: 1, 20: 2}
        for c in categories:
            k = index[c["id"]]
            c.update(image_count=IMAGE_COUNT[k], instance_count=INSTANCE_COUNT[k], frequency="r")
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_json():
    """The same annotations in COCO format: file_name, no federated lists, no frequency, iscrowd."""
    d = lvis_json()
    for im in d["images"]:
        del im["neg_category_ids"], im["not_exhaustive_category_ids"], im["coco_url"]
        im["file_name"] = f"images/{im['id']}.png"
    for a in d["annotations"]:
        a["iscrowd"] = 0
    del d["annotations"][3]["segmentation"]  # a box-only annotation (id 4)
    del d["annotations"][5]["area"]  # id 6: the evaluator's ground truth gets the box area
    return d


@pytest.fixture
def register(tmp_path):
    """register(name, json_dict, **options): writes ``<name>.json`` and registers it; unregistered afterwards."""
    names = []

    def _register(name, json_dict, **options):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(json_dict) if not isinstance(json_dict, str) else json_dict)
        names.append(name)
        return register_lvis_format_dataset(name, str(path), str(tmp_path / "root"), **options), str(path)

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def annotations_by_image(dicts):
    return {r["image_id"]: [a["category_id"] for a in r["annotations"]] for r in dicts}


# --- registration, metadata, dicts ------------------------------------------------------------------------


def test_custom_lvis_json_metadata_and_dicts(register, tmp_path):
    # a name Detectron2 has no built-in metadata for, and one with "v1" in it (Detectron2 would give it
    # LVIS v1's 1203 class counts)
    for name in ("my_longtail_train", "my_lvis_v1_like_train"):
        _, path = register(name, lvis_json())
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == ["three", "seven", "twenty"]
        assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 20: 2}
        assert meta.class_image_count == [
            {"id": 3, "image_count": 1},
            {"id": 7, "image_count": 3},
            {"id": 20, "image_count": 2},
        ]
        assert meta.image_count == IMAGE_COUNT and meta.instance_count == INSTANCE_COUNT
        assert meta.frequency == ["r", "r", "r"]
        assert meta.json_file == path and meta.image_root == str(tmp_path / "root")
        assert meta.evaluator_type == "lvis"
        assert dataset_class_image_count(name).tolist() == IMAGE_COUNT

        dicts = DatasetCatalog.get(name)
        assert [r["image_id"] for r in dicts] == [101, 102, 103, 104]  # sorted by id, as Detectron2
        assert annotations_by_image(dicts) == {101: [1, 2], 102: [1], 103: [0, 1], 104: [2, 2]}
        first = dicts[0]
        assert first["file_name"] == os.path.join(str(tmp_path / "root"), "train2017", "000101.jpg")
        assert (first["height"], first["width"]) == (64, 80)
        assert first["annotations"][0] == {
            "id": 1,
            "bbox": box_of(1),
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": 1,
            "segmentation": polygon_of(box_of(1)),
        }
        # federated lists as contiguous indices: image 101 has 7 and 20, its negative is json id 3 -> 0
        assert first["neg_category_ids"] == [0] and first["not_exhaustive_category_ids"] == []
        assert dicts[3]["neg_category_ids"] == [0]  # image 104 (only 20): first negative id 3


def test_coco_json_with_non_contiguous_ids(register, tmp_path):
    name, _ = register("my_coco_train", coco_json())
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["three", "seven", "twenty"]
    assert meta.frequency == ["r", "r", "r"]  # no 'frequency' in the file: LVIS groups of the counts
    assert meta.image_count == IMAGE_COUNT and meta.instance_count == INSTANCE_COUNT
    dicts = DatasetCatalog.get(name)
    assert annotations_by_image(dicts) == {101: [1, 2], 102: [1], 103: [0, 1], 104: [2, 2]}
    third = dicts[2]
    assert third["file_name"] == os.path.join(str(tmp_path / "root"), "images/103.png")
    assert "neg_category_ids" not in third  # COCO format: no federated lists invented for training
    assert third["annotations"][0] == {
        "id": 4,
        "bbox": box_of(4),
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": 0,
        "iscrowd": 0,
    }
    assert third["annotations"][1]["segmentation"] == polygon_of(box_of(5))


def test_registration_reads_nothing_and_is_idempotent(tmp_path):
    path = str(tmp_path / "later.json")
    name = register_lvis_format_dataset("ltdet2_test_lazy", path, str(tmp_path))
    try:
        assert register_lvis_format_dataset("ltdet2_test_lazy", path, str(tmp_path)) == name  # same: no-op
        with pytest.raises(ValueError, match=r"'ltdet2_test_lazy' is already registered \(json_file=.*later\.json"):
            register_lvis_format_dataset("ltdet2_test_lazy", str(tmp_path / "other.json"), str(tmp_path))
        with pytest.raises(FileNotFoundError, match=f"dataset json file not found: {re.escape(path)}"):
            _ = MetadataCatalog.get(name).thing_classes
        with open(path, "w") as f:
            json.dump(lvis_json(), f)
        assert MetadataCatalog.get(name).thing_classes == ["three", "seven", "twenty"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_truncated_json_names_the_file(register):
    text = json.dumps(lvis_json())
    name, path = register("ltdet2_test_truncated", text[: len(text) // 2])
    message = f"dataset json file {re.escape(path)} is not valid JSON: "
    with pytest.raises(ValueError, match=message):
        DatasetCatalog.get(name)
    with pytest.raises(ValueError, match=message):
        dataset_class_image_count(name)


# --- validation: each invalid case, reported or (skip_invalid) dropped and logged per class ------------------


def _set(field, value, annotation_id=None, category_id=None):
    def mutate(d):
        if annotation_id is not None:
            next(a for a in d["annotations"] if a["id"] == annotation_id)[field] = value
        else:
            next(c for c in d["categories"] if c["id"] == category_id)[field] = value
        return d

    return mutate


# (case, change to the json, expected report line, annotations per image after skip_invalid, dropped-per-class
# table row or None, image counts after skip_invalid)
INVALID_CASES = [
    (
        "unknown_image",
        _set("image_id", 999, annotation_id=1),
        r"1 annotations point at unknown image ids \[999 \(1 in total\)\]: annotation ids \[1 \(1 in total\)\]",
        {101: [2], 102: [1], 103: [0, 1], 104: [2, 2]},
        r"seven\s+7\s+1",
        [1, 2, 2],
    ),
    (
        "unknown_category",
        _set("category_id", 1234, annotation_id=2),
        r"1 annotations point at unknown category ids \[1234 \(1 in total\)\]: annotation ids \[2 \(1 in total\)\]",
        {101: [1], 102: [1], 103: [0, 1], 104: [2, 2]},
        r"\(unknown category\)\s+-\s+1",
        [1, 3, 1],
    ),
    (
        "zero_width",
        _set("bbox", [5.0, 5.0, 0.0, 8.0], annotation_id=3),
        r"1 annotations have a box of zero or negative width or height: annotation ids \[3 \(1 in total\)\]",
        {101: [1, 2], 102: [], 103: [0, 1], 104: [2, 2]},
        r"seven\s+7\s+1",
        [1, 2, 2],
    ),
    (
        "negative_width",
        _set("bbox", [20.0, 5.0, -5.0, 8.0], annotation_id=3),
        r"1 annotations have a box of zero or negative width or height: annotation ids \[3 \(1 in total\)\]",
        {101: [1, 2], 102: [], 103: [0, 1], 104: [2, 2]},
        r"seven\s+7\s+1",
        [1, 2, 2],
    ),
    (
        "nan_box",
        _set("bbox", [5.0, float("nan"), 4.0, 8.0], annotation_id=6),
        r"1 annotations have a box with non-finite values: annotation ids \[6 \(1 in total\)\]",
        {101: [1, 2], 102: [1], 103: [0, 1], 104: [2]},
        r"twenty\s+20\s+1",
        [1, 3, 2],
    ),
    (
        "malformed_box",
        _set("bbox", [5.0, 4.0, 8.0], annotation_id=6),
        r"1 annotations have a 'bbox' that is not 4 numbers: annotation ids \[6 \(1 in total\)\]",
        {101: [1, 2], 102: [1], 103: [0, 1], 104: [2]},
        r"twenty\s+20\s+1",
        [1, 3, 2],
    ),
    (
        "bad_polygon",
        _set("segmentation", [[1.0, 2.0, 3.0, 4.0]], annotation_id=4),
        r"1 annotations have a polygon with fewer than 3 points .*: annotation ids \[4 \(1 in total\)\]",
        {101: [1, 2], 102: [1], 103: [1], 104: [2, 2]},
        r"three\s+3\s+1",
        [0, 3, 2],
    ),
    (
        "repeated_annotation_id",
        _set("id", 5, annotation_id=7),
        r"1 annotations repeat an annotation id already used: annotation ids \[5 \(1 in total\)\]",
        {101: [1, 2], 102: [1], 103: [0, 1], 104: [2]},
        r"twenty\s+20\s+1",
        [1, 3, 2],
    ),
    (
        "stale_image_count",
        _set("image_count", 50, category_id=7),
        r"1 categories have a stored 'image_count' that disagrees with its annotations: category id 7 \(stored 50, "
        r"counted 3\)",
        None,
        None,
        IMAGE_COUNT,
    ),
    (
        "stale_instance_count",
        _set("instance_count", 9, category_id=20),
        r"1 categories have a stored 'instance_count' that disagrees with its annotations: category id 20 \(stored 9, "
        r"counted 3\)",
        None,
        None,
        IMAGE_COUNT,
    ),
    (
        "stale_frequency",
        _set("frequency", "f", category_id=3),
        r"1 categories have a stored 'frequency' that disagrees with its annotations "
        r"\(LVIS groups of the counted image counts\): category id 3 \(stored 'f', counted 'r'\)",
        None,
        None,
        IMAGE_COUNT,
    ),
    # a class stored with image_count 0 would leave RIO's replay targets (1..max_images images)
    (
        "image_count_zero",
        _set("image_count", 0, category_id=7),
        r"1 categories have a stored 'image_count' that disagrees with its annotations: category id 7 \(stored 0, "
        r"counted 3\)",
        None,
        None,
        IMAGE_COUNT,
    ),
]


@pytest.mark.parametrize(
    "case, mutate, line, kept, dropped_row, image_count", INVALID_CASES, ids=[c[0] for c in INVALID_CASES]
)
def test_invalid_case_is_reported_or_dropped_and_logged(
    register, caplog, case, mutate, line, kept, dropped_row, image_count
):
    name, path = register(f"ltdet2_test_invalid_{case}", mutate(lvis_json()))
    with pytest.raises(ValueError, match=f"^{re.escape(path)}: 1 kinds of problems .*\n  \\* {line}$"):
        DatasetCatalog.get(name)
    with pytest.raises(ValueError, match=re.escape(path)):
        _ = MetadataCatalog.get(name).class_image_count  # the metadata is not read past a bad file either

    skipping, _ = register(f"ltdet2_test_skip_{case}", mutate(lvis_json()), skip_invalid=True)
    with caplog.at_level(logging.WARNING, logger="ltdet2.data.validation"):
        dicts = DatasetCatalog.get(skipping)
        DatasetCatalog.get(skipping)  # a second load logs nothing new
    reports = [r.getMessage() for r in caplog.records if r.name == "ltdet2.data.validation"]
    assert len(reports) == 1 and re.search(line, reports[0]), reports
    if kept is None:  # stale stored fields: nothing dropped, the counted numbers are used
        assert annotations_by_image(dicts) == {101: [1, 2], 102: [1], 103: [0, 1], 104: [2, 2]}
        assert "dropped 0 of 7 annotations, ignored stored per-category fields" in reports[0]
    else:
        assert annotations_by_image(dicts) == kept
        assert re.search(r"dropped 1 of 7 annotations", reports[0]) and re.search(dropped_row, reports[0]), reports[0]
    assert MetadataCatalog.get(skipping).image_count == image_count
    assert dataset_class_image_count(skipping).tolist() == image_count
    # RIO's targets (classes with 1..30 images) follow the counted numbers
    targets = ObjectReplay(num_classes=3, feature_dim=4, dataset_name=skipping).targeted_classes.tolist()
    assert targets == [k for k, n in enumerate(image_count) if 1 <= n <= 30]


def test_all_problems_in_one_report(register):
    d = lvis_json(stored_counts=True)
    d["annotations"][0]["image_id"] = 998
    d["annotations"][1]["image_id"] = 999
    d["annotations"][2]["bbox"] = [1.0, 1.0, 0.0, 0.0]
    d["categories"][0]["instance_count"] = 0  # id 20
    d["images"][0]["neg_category_ids"] = [3, 55]  # image 104
    name, path = register("ltdet2_test_many_problems", d)
    with pytest.raises(ValueError) as info:
        DatasetCatalog.get(name)
    message = str(info.value)
    assert message.startswith(f"{path}: 5 kinds of problems")
    assert (
        "2 annotations point at unknown image ids [998, 999 (2 in total)]: annotation ids [1, 2 (2 in total)]"
        in message
    )
    assert "1 annotations have a box of zero or negative width or height: annotation ids [3 (1 in total)]" in message
    assert "1 images list unknown category ids [55 (1 in total)] in 'neg_category_ids': image ids [104 " in message
    # stored fields are checked against the annotations as written (of known images and categories): 7 in
    # images 102 (empty box) and 103, 20 in 104 only (2 instances)
    assert (
        "'image_count' that disagrees with its annotations: category id 7 (stored 3, counted 2), "
        "20 (stored 2, counted 1)" in message
    )
    assert (
        "'instance_count' that disagrees with its annotations: category id 7 (stored 3, counted 2), "
        "20 (stored 0, counted 2)" in message
    )


# --- every ltdet2 piece on a registered dataset --------------------------------------------------------------


def test_repeat_factors_replay_targets_and_indicators(register):
    name, _ = register("ltdet2_test_pieces_train", lvis_json())
    dicts = get_detection_dataset_dicts(name)  # Detectron2's own route (filters empty images: none here)
    meta = lvis_meta_from_dataset(name)
    assert meta.category_ids == (3, 7, 20) and meta.names == ("three", "seven", "twenty")
    assert meta.image_count.tolist() == IMAGE_COUNT and meta.instance_count.tolist() == INSTANCE_COUNT
    # f_c = (1, 3, 2) / 4 images; t = 0.5, sqrt: r_c = (sqrt(2), 1, 1); image 103 holds class 0
    factors = repeat_factors_from_dataset_dicts(dicts, threshold=0.5, image_count=meta)
    assert factors.tolist() == pytest.approx([1.0, 1.0, math.sqrt(2.0), 1.0])
    assert torch.equal(factors, repeat_factors_from_dataset_dicts(dicts, threshold=0.5))  # counted from the dicts
    sampler = repeat_factor_sampler(dicts, threshold=0.5, image_count=meta, seed=0)
    assert isinstance(sampler, RepeatFactorTrainingSampler)

    replay = ObjectReplay(num_classes=3, feature_dim=4, dataset_name=name, max_images=2)
    assert replay.targeted_classes.tolist() == [0, 2]  # 1 and 2 images
    frequency = InstanceFrequency.from_lvis_meta(lvis_meta_from_dataset(name), normalize="none")
    assert frequency.counts.tolist() == INSTANCE_COUNT


def _train_and_val(register, val_format="lvis"):
    """A training json where class 20 is common (12 images) and a val json carrying the training
    counts (LVIS format, like LVIS val) or nothing (COCO format)."""
    train = lvis_json()
    for k in range(12):
        image_id = 200 + k
        train["images"].append(dict(train["images"][0], id=image_id, neg_category_ids=[]))
        train["annotations"].append(
            {
                "id": 100 + k,
                "image_id": image_id,
                "category_id": 20,
                "bbox": box_of(1),
                "segmentation": polygon_of(box_of(1)),
            }
        )
    train_name, train_path = register("ltdet2_test_eval_train", train)
    val = lvis_json() if val_format == "lvis" else coco_json()
    if val_format == "lvis":
        for c, (n_img, n_inst, group) in zip(val["categories"], ((14, 15, "c"), (1, 1, "r"), (3, 3, "r"))):
            c.update(image_count=n_img, instance_count=n_inst, frequency=group)  # ids 20, 3, 7: training counts
    val_name, _ = register(f"ltdet2_test_eval_val_{val_format}", val, train_json=train_path)
    return train_name, val_name, val


def _perfect_predictions(val, extra=()):
    """Detectron2 inputs / outputs detecting every annotation of ``val`` (contiguous classes), plus
    ``extra`` (image id, contiguous class, score) false positives."""
    contiguous = {3: 0, 7: 1, 20: 2}
    inputs, outputs = [], []
    for im in val["images"]:
        rows = [(a["bbox"], contiguous[a["category_id"]], 0.9) for a in val["annotations"] if a["image_id"] == im["id"]]
        rows += [([40.0, 40.0, 10.0, 10.0], c, s) for i, c, s in extra if i == im["id"]]
        xywh = torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4)
        instances = Instances((im["height"], im["width"]))
        instances.pred_boxes = Boxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1))
        instances.scores = torch.tensor([r[2] for r in rows])
        instances.pred_classes = torch.tensor([r[1] for r in rows], dtype=torch.int64)
        inputs.append({"image_id": im["id"]})
        outputs.append({"instances": instances})
    return inputs, outputs


def test_evaluator_on_a_registered_lvis_format_dataset(register, tmp_path):
    train_name, val_name, val = _train_and_val(register)
    meta = MetadataCatalog.get(val_name)
    # an evaluation split's counts and groups are the training ones
    assert meta.image_count == [1, 3, 14] and meta.frequency == ["r", "r", "c"]
    assert lvis_meta_from_dataset(val_name).image_count.tolist() == dataset_class_image_count(train_name).tolist()
    DatasetCatalog.get(val_name)  # the test loader loads it first

    evaluator = LTLVISEvaluator(val_name, tasks=("bbox",), distributed=False, output_dir=str(tmp_path))
    evaluator.reset()
    # a false positive of class 0 (json 3) in image 101, where 3 is a verified negative, ranked first
    evaluator.process(*_perfect_predictions(val, extra=[(101, 0, 0.95)]))
    results = evaluator.evaluate()["bbox"]
    with open(tmp_path / "per_class_ap_bbox.json") as f:
        per_class = {r["id"]: r["AP"] for r in json.load(f)}
    assert per_class[7] == pytest.approx(100.0) and per_class[20] == pytest.approx(100.0)
    assert per_class[3] == pytest.approx(50.0, abs=0.5)  # 1 FP then 1 TP: precision 1/2 at recall 1
    assert results["APc"] == pytest.approx(100.0)  # class 20: common by its 14 training images
    assert results["APr"] == pytest.approx((100.0 + per_class[3]) / 2)


def test_coco_format_dataset_evaluates_with_exhaustive_negatives(register):
    _, val_name, val = _train_and_val(register, val_format="coco")
    gt = evaluation_ground_truth(val_name)
    assert [c["frequency"] for c in gt["categories"]] == ["r", "r", "c"]  # ids 3, 7, 20 by training counts
    assert [c["image_count"] for c in gt["categories"]] == [1, 3, 14]
    by_id = {im["id"]: im for im in gt["images"]}
    assert by_id[101]["neg_category_ids"] == [3] and by_id[104]["neg_category_ids"] == [3, 7]
    assert all(im["not_exhaustive_category_ids"] == [] for im in gt["images"])
    assert {a["id"]: a["area"] for a in gt["annotations"]}[6] == 120.0
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in val["annotations"]
    ]
    results.append({"image_id": 104, "category_id": 7, "bbox": [40.0, 40.0, 10.0, 10.0], "score": 0.95})
    metrics, per_class = evaluate_lvis(gt, results, return_per_class=True)
    assert per_class["twenty"] == pytest.approx(100.0) and per_class["three"] == pytest.approx(100.0)
    # exhaustive: 7 is a negative of image 104, so the false positive ranked first counts: precision 1/2, 2/3,
    # 3/4 at recall 1/3, 2/3, 1, interpolated to 3/4 everywhere
    assert per_class["seven"] == pytest.approx(75.0)
    assert metrics["APc"] == pytest.approx(100.0)


def test_evaluator_on_a_registered_coco_format_dataset(register):
    _, val_name, val = _train_and_val(register, val_format="coco")
    evaluator = LTLVISEvaluator(val_name, tasks=("bbox",), distributed=False)
    evaluator.reset()
    evaluator.process(*_perfect_predictions(val))
    assert evaluator.evaluate()["bbox"]["AP"] == pytest.approx(100.0)


def test_stored_counts_describe_the_annotations_as_written(register):
    # an empty box was counted when the stored fields were made: only the box is reported, not stale counts
    d = lvis_json(stored_counts=True)
    d["annotations"][2]["bbox"] = [1.0, 1.0, 0.0, 3.0]  # id 3
    name, path = register("ltdet2_test_written_counts", d)
    with pytest.raises(
        ValueError,
        match=f"^{re.escape(path)}: 1 kinds of problems .*\n  \\* 1 annotations have a "
        r"box of zero or negative width or height: annotation ids \[3 \(1 in total\)\]$",
    ):
        DatasetCatalog.get(name)


def test_evaluation_ground_truth_of_lt_shapes_is_its_json(tiny_dataset):
    # LT-Shapes val is complete LVIS format: what the evaluator would read through evaluation_ground_truth is
    # exactly the file (so switching LTLVISEvaluator to it changes no LT-Shapes number)
    _, val = tiny_dataset
    gt = evaluation_ground_truth(val)  # generates the dataset on first use
    with open(MetadataCatalog.get(val).json_file) as f:
        assert gt == json.load(f)


def test_lt_shapes_subset_script(tiny_dataset, tmp_path):
    # the README's "Your own dataset" example: a subset with non-contiguous ids, registered from its files
    script = load_repo_module("scripts/make_lt_shapes_subset.py")
    train_name, val_name = tiny_dataset
    DatasetCatalog.get(train_name)  # generated
    with open(MetadataCatalog.get(train_name).json_file) as f:
        train = json.load(f)
    kept = np.array([1, 4, 7], dtype=np.int64)
    subset = script.subset_split(train, kept, lvis_format=True)
    assert {a["category_id"] for a in subset["annotations"]} <= {1, 4, 7}
    assert [c["id"] for c in subset["categories"]] == [1, 4, 7]
    assert all("image_count" not in c and "frequency" not in c for c in subset["categories"])
    path = tmp_path / "subset_train.json"
    path.write_text(json.dumps(subset))
    name = register_lvis_format_dataset(
        "ltdet2_test_subset_train", str(path), MetadataCatalog.get(train_name).image_root
    )
    try:
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == len(subset["images"]) and all(os.path.isfile(r["file_name"]) for r in dicts)
        classes = [a["category_id"] for r in dicts for a in r["annotations"]]
        expected = {1: 0, 4: 1, 7: 2}
        assert classes == [
            expected[a["category_id"]] for a in sorted(subset["annotations"], key=lambda a: (a["image_id"], a["id"]))
        ]
        full = MetadataCatalog.get(train_name).image_count
        assert MetadataCatalog.get(name).image_count == [full[0], full[3], full[6]]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_valid_flag_is_carried_into_the_dataset_dicts(register):
    d = lvis_json()
    d["annotations"][2]["valid"] = False  # annotation 3; others have no key (valid)
    d["annotations"][0]["valid"] = True
    name, _ = register("my_flagged_train", d)
    flags = {a["id"]: a.get("valid") for r in DatasetCatalog.get(name) for a in r["annotations"]}
    assert flags == {1: True, 2: None, 3: False, 4: None, 5: None, 6: None, 7: None}
