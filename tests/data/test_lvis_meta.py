import json
import os
from collections import defaultdict

import numpy as np
import pytest

from ltdet2.data.categories import FREQUENCY_GROUPS, frequency_from_image_count
from ltdet2.data.category_meta import LVISMeta, clear_lvis_meta_cache, count_from_annotations, load_lvis_meta

from fixtures.models import RESOURCES

LVIS_VAL_100 = os.path.join(RESOURCES, "lvis_v0.5_val_100.json")


def _tiny():
    # ids deliberately unsorted; json counts deliberately differ from the annotations
    return {
        "images": [{"id": 10}, {"id": 11}, {"id": 12}],
        "categories": [
            {"id": 5, "name": "five", "frequency": "c", "image_count": 40, "instance_count": 50},
            {"id": 2, "name": "two", "frequency": "f", "image_count": 500, "instance_count": 900},
            {"id": 9, "name": "nine", "frequency": "r", "image_count": 3, "instance_count": 3},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 2},
            {"id": 2, "image_id": 10, "category_id": 2},
            {"id": 3, "image_id": 11, "category_id": 2},
            {"id": 4, "image_id": 11, "category_id": 5},
            {"id": 5, "image_id": 12, "category_id": 5},
        ],
    }


def _write(tmp_path, obj, name="ann.json"):
    p = tmp_path / name
    p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return str(p)


def test_frequency_thresholds():
    f = frequency_from_image_count([0, 1, 10, 11, 100, 101, 5000])
    assert f.tolist() == ["r", "r", "r", "c", "c", "f", "f"]
    assert FREQUENCY_GROUPS == ("r", "c", "f")
    with pytest.raises(ValueError):
        frequency_from_image_count([3, -1])


def test_tiny_json_fields(tmp_path):
    m = load_lvis_meta(_write(tmp_path, _tiny()))
    assert isinstance(m, LVISMeta)
    assert m.category_ids == (2, 5, 9)
    assert m.names == ("two", "five", "nine")
    assert m.num_classes == 3
    assert m.frequency.tolist() == ["f", "c", "r"]
    assert m.image_count.tolist() == [500, 40, 3]
    assert m.instance_count.tolist() == [900, 50, 3]
    assert m.image_count.dtype == np.int64 and m.instance_count.dtype == np.int64
    assert m.group_mask("r").tolist() == [False, False, True]
    gi = m.group_indices()
    assert {k: v.tolist() for k, v in gi.items()} == {"r": [2], "c": [1], "f": [0]}
    assert m.contiguous_id(5) == 1
    assert m.to_dict()["category_ids"] == [2, 5, 9]
    with pytest.raises(ValueError):
        m.group_mask("x")
    with pytest.raises(ValueError):  # read-only (shared through the cache)
        m.image_count[0] = 1


def test_tiny_recompute_and_missing_counts(tmp_path):
    d = _tiny()
    m = load_lvis_meta(d, recompute_counts=True)
    # category 2: images 10, 11 (3 instances); 5: images 11, 12; 9: none
    assert m.image_count.tolist() == [2, 2, 0]
    assert m.instance_count.tolist() == [3, 2, 0]
    assert m.frequency.tolist() == ["f", "c", "r"]  # json frequency kept
    assert load_lvis_meta(d, recompute_counts=True, derive_frequency=True).frequency.tolist() == ["r", "r", "r"]
    ic, nc = count_from_annotations(d)
    assert ic.tolist() == [2, 2, 0] and nc.tolist() == [3, 2, 0]
    # missing count fields -> counted from annotations
    for c in d["categories"]:
        del c["image_count"]
    m2 = load_lvis_meta(_write(tmp_path, d))
    assert m2.image_count.tolist() == [2, 2, 0]
    assert m2.instance_count.tolist() == [3, 2, 0]


def test_lvis_v05_val_subset():
    m = load_lvis_meta(LVIS_VAL_100)
    with open(LVIS_VAL_100) as f:
        d = json.load(f)
    assert m.num_classes == 1230
    assert list(m.category_ids) == sorted(c["id"] for c in d["categories"])
    assert {g: int(m.group_mask(g).sum()) for g in FREQUENCY_GROUPS} == {"r": 454, "c": 461, "f": 315}
    # independent count with plain python
    imgs, inst = defaultdict(set), defaultdict(int)
    for a in d["annotations"]:
        imgs[a["category_id"]].add(a["image_id"])
        inst[a["category_id"]] += 1
    exp_img = np.array([len(imgs[i]) for i in m.category_ids])
    exp_inst = np.array([inst[i] for i in m.category_ids])
    r = load_lvis_meta(LVIS_VAL_100, recompute_counts=True)
    assert (r.image_count == exp_img).all() and (r.instance_count == exp_inst).all()
    assert int(r.instance_count.sum()) == 977
    assert (m.image_count == exp_img).all()  # the file's fields were recomputed for the subset
    assert (r.frequency == m.frequency).all()
    assert int((m.image_count > 0).sum()) == 190  # classes annotated in the 100 images


def test_cache_by_mtime(tmp_path):
    clear_lvis_meta_cache()
    p = _write(tmp_path, _tiny())
    a = load_lvis_meta(p)
    assert load_lvis_meta(p) is a
    d = _tiny()
    d["categories"][0]["image_count"] = 41
    p2 = _write(tmp_path, d)
    st = os.stat(p2)
    os.utime(p2, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    b = load_lvis_meta(p2)
    assert b is not a and b.image_count.tolist() == [500, 41, 3]


def test_missing_file(tmp_path):
    p = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match=r"LVIS json file not found: .*nope\.json"):
        load_lvis_meta(p)


def test_malformed_json(tmp_path):
    p = _write(tmp_path, '{"categories": [1, 2', "bad.json")
    with pytest.raises(ValueError, match=r"LVIS json file .*bad\.json is not valid JSON: Expecting"):
        load_lvis_meta(p)


def test_missing_categories(tmp_path):
    p = _write(tmp_path, {"images": [], "annotations": []}, "nocat.json")
    with pytest.raises(ValueError, match=r"nocat\.json.*categories"):
        load_lvis_meta(p)


def test_duplicate_category_ids(tmp_path):
    d = _tiny()
    d["categories"].append(dict(d["categories"][0]))
    p = _write(tmp_path, d, "dup.json")
    with pytest.raises(ValueError, match=r"dup\.json.*duplicate category ids \[5 "):
        load_lvis_meta(p)


def test_unknown_image_id(tmp_path):
    d = _tiny()
    d["annotations"] += [{"id": 7, "image_id": 99, "category_id": 2}, {"id": 8, "image_id": 77, "category_id": 2}]
    p = _write(tmp_path, d, "badimg.json")
    with pytest.raises(ValueError, match=r"badimg\.json: 2 annotations .*unknown image ids \[77, 99 \(2 in total\)\]"):
        load_lvis_meta(p, recompute_counts=True)


def test_unknown_category_id(tmp_path):
    d = _tiny()
    d["annotations"].append({"id": 7, "image_id": 10, "category_id": 1234})
    p = _write(tmp_path, d, "badcat.json")
    with pytest.raises(ValueError, match=r"badcat\.json: 1 annotations .*unknown category ids \[1234 "):
        load_lvis_meta(p, recompute_counts=True)


def test_missing_frequency(tmp_path):
    d = _tiny()
    del d["categories"][0]["frequency"]  # id 5
    del d["categories"][2]["frequency"]  # id 9
    p = _write(tmp_path, d, "nofreq.json")
    with pytest.raises(ValueError, match=r"nofreq\.json.*without 'frequency'.*\[5, 9 "):
        load_lvis_meta(p)
    m = load_lvis_meta(p, recompute_counts=True)  # derived from the recomputed image counts
    assert m.frequency.tolist() == ["f", "r", "r"]


def test_bad_frequency_value(tmp_path):
    d = _tiny()
    d["categories"][1]["frequency"] = "x"  # id 2
    p = _write(tmp_path, d, "badfreq.json")
    with pytest.raises(ValueError, match=r"badfreq\.json.*\[2 "):
        load_lvis_meta(p)


def _register_plain(name, path):
    """A dataset registered the Detectron2 way (metadata json_file only), removed by the caller."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(json_file=path)
    return name


def test_lvis_meta_from_dataset_counts_from_annotations(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ltdet2.data.lvis_meta import lvis_meta_from_dataset

    # the json's stored counts (500 / 40 / 3 images) disagree with its annotations
    name = _register_plain("lvis_meta_test_stale_counts", _write(tmp_path, _tiny()))
    try:
        m = lvis_meta_from_dataset(name)
        assert m.image_count.tolist() == [2, 2, 0] and m.instance_count.tolist() == [3, 2, 0]
        assert m.frequency.tolist() == ["f", "c", "r"]  # stored frequency kept: on LVIS val it is the training one
        assert lvis_meta_from_dataset(name, recompute_counts=False).image_count.tolist() == [500, 40, 3]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_category_table_without_annotations_keeps_stored_counts(tmp_path):
    d = _tiny()
    d["annotations"] = []  # like LVIS test-dev: nothing to count, nothing to disagree
    m = load_lvis_meta(_write(tmp_path, d), recompute_counts=True)
    assert m.image_count.tolist() == [500, 40, 3] and m.instance_count.tolist() == [900, 50, 3]


def test_lvis_meta_from_dataset_of_a_registered_lvis_format_dataset(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ltdet2.data import register_lvis_format_dataset
    from ltdet2.data.lvis_meta import lvis_meta_from_dataset

    d = _tiny()
    for c in d["categories"]:
        del c["image_count"], c["instance_count"], c["frequency"]
    for a in d["annotations"]:
        a["bbox"] = [0.0, 0.0, 4.0, 4.0]
    name = register_lvis_format_dataset("lvis_meta_test_registered", _write(tmp_path, d), str(tmp_path))
    try:
        m = lvis_meta_from_dataset(name)
        assert m.category_ids == (2, 5, 9) and m.names == ("two", "five", "nine")
        assert m.image_count.tolist() == [2, 2, 0] and m.instance_count.tolist() == [3, 2, 0]
        assert m.frequency.tolist() == ["r", "r", "r"]  # LVIS groups of the counted images
        with pytest.raises(TypeError, match="recompute_counts"):
            lvis_meta_from_dataset(name, recompute_counts=False)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
