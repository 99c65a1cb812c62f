"""Derived datasets (issue #12, reference §6 test 3): the written json, its registration, skip and rebuild."""

import json
import logging
import os

import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog

from ltdet2.data import build_derived_dataset, register_derived_dataset, register_lvis_format_dataset

# (annotation id, image id, json category id); categories 1, 2, 5 (5: only in image 3)
ANNOTATIONS = [(1, 1, 1), (2, 1, 2), (3, 2, 1), (4, 2, 2), (5, 3, 5), (6, 3, 1), (7, 4, 2)]


def source_json():
    images = [
        {"id": i, "coco_url": f"http://x/train2017/{i:06d}.jpg", "height": 40, "width": 40,
         "neg_category_ids": [], "not_exhaustive_category_ids": []}
        for i in (1, 2, 3, 4)
    ]  # fmt: skip
    annotations = [{"id": a, "image_id": i, "category_id": c, "bbox": [2.0, 3.0, 10.0, 8.0 + a], "area": 80.0}
                   for a, i, c in ANNOTATIONS]  # fmt: skip
    # stored counts / frequency of the full set: the derived file must recompute them
    counts = {1: (3, 3), 2: (3, 3), 5: (1, 1)}
    categories = [{"id": c, "name": f"c{c}", "image_count": n, "instance_count": k, "frequency": "r"}
                  for c, (n, k) in counts.items()]  # fmt: skip
    return {"info": {"year": 2026}, "images": images, "annotations": annotations, "categories": categories}


def registered_source(tmp_path, prefix: str, json_dict: dict):
    """Fixture body: registers ``json_dict`` as ``<prefix>src``, yields the name, then unregisters every dataset
    named ``<prefix>...`` (the derived ones the test made)."""
    path = tmp_path / f"{prefix}src.json"
    path.write_text(json.dumps(json_dict))
    yield register_lvis_format_dataset(f"{prefix}src", str(path), str(tmp_path / "images"))
    for n in [n for n in DatasetCatalog.keys() if n.startswith(prefix)]:
        DatasetCatalog.remove(n)
        MetadataCatalog.remove(n)


@pytest.fixture
def source(tmp_path):
    yield from registered_source(tmp_path, "derived_test_", source_json())


def build(source, tmp_path, ids=(1, 4, 6), unselected="drop", inputs=None, name="derived_test_set"):
    return build_derived_dataset(
        name,
        source=source,
        output_dir=tmp_path / "phase",
        valid_annotation_ids=ids,
        unselected=unselected,
        inputs={"seed": 0} if inputs is None else inputs,
    )


def by_image(dicts):
    return {r["image_id"]: [(a["id"], a["category_id"], a.get("valid", True)) for a in r["annotations"]] for r in dicts}


def test_drop_keeps_selected_annotations_and_their_images_with_the_source_ids(source, tmp_path):
    path = build(source, tmp_path)
    assert path == os.path.join(str(tmp_path / "phase"), "derived_test_set.json")
    with open(path) as f:
        d = json.load(f)
    assert sorted(a["id"] for a in d["annotations"]) == [1, 4, 6]
    assert sorted(im["id"] for im in d["images"]) == [1, 2, 3]  # image 4 had no selected annotation
    assert [(c["id"], c["image_count"], c["instance_count"]) for c in d["categories"]] == [
        (1, 2, 2),
        (2, 1, 1),
        (5, 0, 0),
    ]
    assert d["info"] == {"year": 2026}
    assert d["ltdet2_derived"]["inputs"] == {"seed": 0} and d["ltdet2_derived"]["unselected"] == "drop"

    name = register_derived_dataset("derived_test_set", path, source=source)
    assert register_derived_dataset("derived_test_set", path, source=source) == name  # idempotent
    dicts = DatasetCatalog.get(name)
    meta = MetadataCatalog.get(name)
    assert meta.thing_dataset_id_to_contiguous_id == MetadataCatalog.get(source).thing_dataset_id_to_contiguous_id
    assert meta.image_root == MetadataCatalog.get(source).image_root
    assert meta.derived_from == source and meta.num_ignored_annotations == 0
    assert by_image(dicts) == {1: [(1, 0, True)], 2: [(4, 1, True)], 3: [(6, 0, True)]}


def test_ignore_keeps_unselected_annotations_of_kept_images_flagged(source, tmp_path):
    path = build(source, tmp_path, ids=(2, 6), unselected="ignore")
    name = register_derived_dataset("derived_test_ign", path, source=source)
    assert MetadataCatalog.get(name).num_ignored_annotations == 2
    # image 2 (nothing selected) and 4 removed; the class of 5 (json 5 -> 2) is counted: it is in the file
    assert by_image(DatasetCatalog.get(name)) == {1: [(1, 0, False), (2, 1, True)], 3: [(5, 2, False), (6, 0, True)]}
    assert MetadataCatalog.get(name).image_count == [2, 1, 1]


def test_skip_when_unchanged_rebuild_with_warning_when_inputs_change(source, tmp_path, caplog):
    path = build(source, tmp_path)
    mtime = os.stat(path).st_mtime_ns
    with caplog.at_level(logging.INFO, logger="ltdet2.data.derived"):
        build(source, tmp_path)
    assert os.stat(path).st_mtime_ns == mtime and "up to date" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ltdet2.data.derived"):
        build(source, tmp_path, ids=(1, 4), inputs={"seed": 1})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "inputs changed: inputs.seed, selection.count, selection.sha1" in warnings[0]
    with open(path) as f:
        assert sorted(a["id"] for a in json.load(f)["annotations"]) == [1, 4]


def test_bad_input(source, tmp_path):
    with pytest.raises(ValueError, match=r"2 selected annotation ids are not annotations of derived_test_src.*\[8, 9 "):
        build(source, tmp_path, ids=(1, 8, 9))
    with pytest.raises(ValueError, match="unselected must be one of"):
        build(source, tmp_path, unselected="keep")


def test_validity_mapper_keeps_gt_valid_aligned_through_crowd_and_empty_box_removal(tmp_path):
    import numpy as np
    from PIL import Image

    from detectron2.data import DatasetMapper
    from detectron2.data import transforms as T
    from detectron2.structures import BoxMode

    from ltdet2.data import ValidityDatasetMapper

    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8)).save(image)
    # (box xywh, class, valid, iscrowd): a crowd box and a degenerate box in the middle
    objects = [
        ([1, 1, 10, 10], 4, True, 0),
        ([2, 2, 10, 10], 1, False, 0),
        ([3, 3, 10, 10], 2, True, 1),  # crowd: removed
        ([4, 4, 0, 10], 3, False, 0),  # empty: removed
        ([5, 5, 10, 10], 0, False, 0),
        ([6, 6, 10, 10], 3, True, 0),
    ]
    record = {
        "file_name": str(image),
        "height": 40,
        "width": 60,
        "image_id": 1,
        "annotations": [
            dict(
                {"bbox": [float(x) for x in b], "bbox_mode": BoxMode.XYWH_ABS, "category_id": c, "iscrowd": k},
                **({} if v else {"valid": v}),
            )
            for b, c, v, k in objects
        ],
    }
    options = dict(is_train=True, augmentations=[T.ResizeShortestEdge(20, 100)], image_format="BGR")
    out = ValidityDatasetMapper(**options)(record)["instances"]
    stock = DatasetMapper(**options)(record)["instances"]
    assert out.gt_classes.tolist() == stock.gt_classes.tolist() == [4, 1, 0, 3]
    assert torch.equal(out.gt_boxes.tensor, stock.gt_boxes.tensor)
    assert out.gt_valid.tolist() == [True, False, False, True]
    assert out.gt_boxes.tensor[:, 0].tolist() == [0.5, 1.0, 2.5, 3.0]  # scale 0.5: boxes 1, 2, 5, 6
    assert record["annotations"][1]["valid"] is False and record["annotations"][1]["category_id"] == 1  # untouched
    # no "valid" anywhere: all True
    plain = dict(record, annotations=[{k: v for k, v in a.items() if k != "valid"} for a in record["annotations"]])
    assert ValidityDatasetMapper(**options)(plain)["instances"].gt_valid.tolist() == [True] * 4
