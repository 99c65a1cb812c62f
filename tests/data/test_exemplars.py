"""Step-wise exemplar selection (issue #12, reference §6 tests 1-2) and the exemplar-set builder on a fake context."""

import json
import logging

import numpy as np
import pytest
from test_derived import registered_source

from detectron2.data import DatasetCatalog, MetadataCatalog

from ltdet2.data import ExemplarSetBuilder, select_exemplars, smooth_tail_quota
from ltdet2.data.category_meta import LVISMeta

# (id, image_id, category_id, score): class 1 has two confident annotations in image 10, class 2 ties in score
TABLE = [
    (1, 10, 1, 0.9),
    (2, 10, 1, 0.8),
    (3, 11, 1, 0.6),
    (4, 12, 1, 0.4),
    (5, 13, 1, 0.45),
    (6, 10, 2, 0.7),
    (7, 11, 2, 0.7),
    (8, 11, 2, 0.55),
    (9, 12, 2, 0.5),  # not > 0.5: not confident
    (10, 12, 3, 0.3),
    (11, 13, 3, 0.2),
]


def table(rows=TABLE):
    return [dict(id=i, image_id=im, category_id=c, score=s) for i, im, c, s in rows]


def direct_selection(rows, per_class, threshold=0.5, one_per_image=True):
    """The official walk (main_data.py): confident + unused image by descending score, then the rest by score."""
    out = []
    for c in sorted(per_class):
        mine = sorted((r for r in rows if r[2] == c), key=lambda r: (-r[3], r[0]))
        used, first = set(), []
        for r in mine:
            if r[3] > threshold and (not one_per_image or r[1] not in used):
                first.append(r[0])
                used.add(r[1])
        ranked = first + [r[0] for r in mine if r[0] not in first]
        out += ranked if per_class[c] is None else ranked[: per_class[c]]
    return out


def test_split_29_30_31_is_tail_head_head():
    meta = LVISMeta(
        category_ids=(4, 5, 6),
        names=("a", "b", "c"),
        frequency=np.array(["c", "c", "c"]),
        image_count=np.array([29, 30, 31]),
        instance_count=np.array([29, 30, 31]),
        source="<test>",
    )
    assert meta.head_classes().tolist() == [1, 2]
    assert smooth_tail_quota(meta, head_quota=200, tail_quota=30) == {4: 30, 5: 200, 6: 200}
    assert smooth_tail_quota(meta, head_quota=50, tail_quota=None) == {4: None, 5: 50, 6: 50}
    assert smooth_tail_quota(meta, head_quota=50, tail_quota=None, min_images=31) == {4: None, 5: None, 6: 50}


def test_selection_order_threshold_one_per_image_fill_and_ties():
    # class 1: confident, first in its image: 1 (img 10), 3 (img 11); then the rest by score: 2, 5, 4
    # class 2: 6 and 7 tie at 0.7 (id breaks it), 8 is the second of image 11, 9 is not > 0.5
    assert select_exemplars(table(), {1: None, 2: None, 3: None}) == [1, 3, 2, 5, 4, 6, 7, 8, 9, 10, 11]
    assert select_exemplars(table(), {1: None}, one_per_image=False) == [1, 2, 3, 5, 4]
    assert select_exemplars(table(), {1: 3, 2: 1, 3: 0}) == [1, 3, 2, 6]
    assert select_exemplars(table(), {2: 3}, score_threshold=0.6) == [6, 7, 8]
    assert select_exemplars(table(), {}) == []
    # the same from a score table of arrays (as context.annotation_scores gives), in another row order
    rows = TABLE[::-1]
    arrays = {k: np.array([r[j] for r in rows]) for j, k in enumerate(["annotation_id", "image_id", "category_id"])}
    arrays["score"] = np.array([r[3] for r in rows])
    assert select_exemplars(arrays, {1: 3, 2: 1, 3: 0}) == [1, 3, 2, 6]


def test_selection_matches_the_official_walk_on_a_random_table():
    rng = np.random.default_rng(0)
    n = 400
    rows = list(
        zip(
            rng.permutation(np.arange(1000, 1000 + n)).tolist(),
            rng.integers(0, 40, n).tolist(),
            rng.integers(1, 6, n).tolist(),
            np.round(rng.uniform(0.3, 0.7, n), 2).tolist(),  # rounded: many ties around 0.5
        )
    )
    per_class = {1: 20, 2: 5, 3: None, 4: 0, 5: 200}
    for one in (True, False):
        got = select_exemplars(table(rows), per_class, one_per_image=one)
        assert got == direct_selection(rows, per_class, one_per_image=one)
        assert got == select_exemplars(table(rows[::-1]), per_class, one_per_image=one)  # input order irrelevant


@pytest.mark.parametrize(
    "rows, per_class, message",
    [
        ([{"id": 1, "image_id": 1, "score": 0.5}], {1: 1}, "field 'category_id' missing"),
        ([(1, 1, 1, float("nan")), (2, 1, 1, 0.4)], {1: 1}, r"non-finite 'score' for annotation ids \[1 "),
        ([(1, 1, 1, 0.5), (1, 2, 1, 0.4)], {1: 1}, r"repeated annotation ids \[1 "),
        (TABLE, {1: -1}, r"negative counts for category ids \[1 "),
    ],
)
def test_selection_bad_input(rows, per_class, message):
    rows = [r if isinstance(r, dict) else dict(zip(["id", "image_id", "category_id", "score"], r)) for r in rows]
    with pytest.raises(ValueError, match=message):
        select_exemplars(rows, per_class)


# --- the builder on a hand-made LVIS json and a fake context ----------------------------------------------


def lvis_json():
    """Category 1 in images 10-13 (head at min_images=3), 2 in 10-12 (head), 3 in 12-13 (tail); as TABLE."""
    images = [
        {"id": i, "file_name": f"{i}.jpg", "height": 50, "width": 50, "neg_category_ids": [],
         "not_exhaustive_category_ids": []}
        for i in (10, 11, 12, 13)
    ]  # fmt: skip
    annotations = [{"id": i, "image_id": im, "category_id": c, "bbox": [1.0, 1.0, 5.0 + i, 6.0], "area": 30.0}
                   for i, im, c, _ in TABLE]  # fmt: skip
    categories = [{"id": c, "name": f"class{c}"} for c in (1, 2, 3)]
    return {"images": images, "annotations": annotations, "categories": categories}


class FakeContext:
    def __init__(self, output_dir, rows=TABLE):
        self.phase_name, self.output_dir, self.seed = "head_expert", str(output_dir), 0
        self.rows = rows

    def annotation_scores(self, phase, *, dataset, score="max_foreground"):
        cols = list(zip(*self.rows))
        return {
            "annotation_id": np.array(cols[0]),
            "image_id": np.array(cols[1]),
            "category_id": np.array(cols[2]),
            "score": np.array(cols[3]),
        }

    def table_identity(self, phase, *, dataset, score):
        return {"phase": phase, "dataset": dataset, "score": score, "rows": len(self.rows)}


@pytest.fixture
def source(tmp_path):
    yield from registered_source(tmp_path, "stepwise_test_", lvis_json())


def test_builder_selects_writes_registers_and_logs(source, tmp_path, caplog):
    builder = ExemplarSetBuilder(
        name="stepwise_test_dhead", source=source, scores_from_phase="pretrain", head_quota=2, tail_quota=1,
        min_images=3,
    )  # fmt: skip
    assert builder.input_phases() == ["pretrain"]
    context = FakeContext(tmp_path / "phase")
    with caplog.at_level(logging.INFO, logger="ltdet2"):
        builder.prepare(context)
    builder.register(context)
    dicts = DatasetCatalog.get("stepwise_test_dhead")
    kept = sorted(a["id"] for r in dicts for a in r["annotations"])
    assert kept == sorted(select_exemplars(table(), {1: 2, 2: 2, 3: 1})) == [1, 3, 6, 7, 10]
    meta = MetadataCatalog.get("stepwise_test_dhead")
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
    assert meta.derived_from == source and meta.num_ignored_annotations == 0
    assert "2 head classes (quota 2): selected per class min 2 / median 2.0 / max 2, total 4; 0 classes left empty" in (
        caplog.text
    )
    with open(builder.json_path(context)) as f:
        record = json.load(f)["ltdet2_derived"]
    assert record["inputs"]["score_table"] == context.table_identity("pretrain", dataset=source, score="max_foreground")
    assert record["inputs"]["parameters"]["head_quota"] == 2


def test_builder_rejects_a_table_of_another_dataset(source, tmp_path):
    builder = ExemplarSetBuilder(
        name="stepwise_test_bad", source=source, scores_from_phase="pretrain", head_quota=2, tail_quota=1
    )
    wrong_category = [(i, im, 3 if i == 4 else c, s) for i, im, c, s in TABLE]
    for rows, ids in ((TABLE + [(99, 10, 1, 0.9)], r"\[99 "), (wrong_category, r"\[4 ")):
        with pytest.raises(ValueError, match=r"score table of phase 'pretrain' .* not a table of dataset .*" + ids):
            builder.prepare(FakeContext(tmp_path / "phase", rows))


def test_builder_on_lt_shapes_with_ignored_annotations(tiny_dataset, tmp_path):
    from ltdet2.data import ValidityDatasetMapper, lvis_meta_from_dataset

    train, _ = tiny_dataset
    dicts = DatasetCatalog.get(train)
    category_ids = np.asarray(lvis_meta_from_dataset(train).category_ids)
    rows = [(a["id"], r["image_id"], int(category_ids[a["category_id"]])) for r in dicts for a in r["annotations"]]
    rows = [row + (float(s),) for row, s in zip(rows, np.random.default_rng(0).random(len(rows)))]
    builder = ExemplarSetBuilder(
        name="stepwise_test_lt_dtail", source=train, scores_from_phase="pretrain", head_quota=3, tail_quota=None,
        min_images=5, unselected="ignore",
    )  # fmt: skip
    context = FakeContext(tmp_path / "phase", rows)
    builder.prepare(context)
    builder.register(context)
    try:
        subset = DatasetCatalog.get(builder.name)
        meta = MetadataCatalog.get(builder.name)
        assert meta.thing_classes == MetadataCatalog.get(train).thing_classes
        valid = [a for r in subset for a in r["annotations"] if a.get("valid", True)]
        quota = smooth_tail_quota(lvis_meta_from_dataset(train), head_quota=3, tail_quota=None, min_images=5)
        assert sorted(a["id"] for a in valid) == sorted(select_exemplars(table(rows), quota))
        assert meta.num_ignored_annotations == sum(len(r["annotations"]) for r in subset) - len(valid) > 0
        mapper = ValidityDatasetMapper(is_train=True, augmentations=[], image_format="BGR")
        record = next(r for r in subset if any(not a.get("valid", True) for a in r["annotations"]))
        instances = mapper(record)["instances"]
        assert instances.gt_valid.tolist() == [a.get("valid", True) for a in record["annotations"]]
    finally:
        DatasetCatalog.remove(builder.name)
        MetadataCatalog.remove(builder.name)
