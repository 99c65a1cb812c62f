"""LST's class-incremental data (issue #13, reference §6 tests 1-3): the class split, replay counts, the phase
datasets (entries, renumbered ids, val json) and their loading through ``ValidityDatasetMapper``."""

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest

from ltdet2.data import LVISMeta, incremental_class_order, incremental_class_phases, replay_counts
from ltdet2.data.incremental import ClassIncrementalSplit


def toy_meta(instance_count, ids=None):
    instance_count = np.asarray(instance_count, dtype=np.int64)
    ids = tuple(range(1, len(instance_count) + 1)) if ids is None else tuple(ids)
    return LVISMeta(
        category_ids=ids,
        names=tuple(f"c{i}" for i in ids),
        frequency=np.full(len(ids), "r"),
        image_count=np.minimum(instance_count, 1),
        instance_count=instance_count,
    )


# --- the class split -----------------------------------------------------------------------------------------


def test_order_is_descending_instance_count_with_ties_by_ascending_id():
    meta = toy_meta([5, 9, 5, 0, 9, 7], ids=(10, 3, 4, 1, 8, 2))
    assert incremental_class_order(meta).tolist() == [3, 8, 2, 4, 10, 1]
    phases = incremental_class_phases(meta, base=2, num_phases=3)
    assert [p.tolist() for p in phases] == [[3, 8], [2, 4], [10], [1]]
    assert [p.tolist() for p in incremental_class_phases(meta, base=6, num_phases=0)] == [[3, 8, 2, 4, 10, 1]]


def test_lvis_v0_5_sized_split_is_270_plus_6_x_160():
    counts = np.random.default_rng(0).integers(0, 5000, size=1230)
    phases = incremental_class_phases(toy_meta(counts), base=270, num_phases=6)
    assert [len(p) for p in phases] == [270] + [160] * 6
    assert np.array_equal(np.concatenate(phases), incremental_class_order(toy_meta(counts)))
    # v1-sized: 933 classes after the base in near-equal bins, the larger ones first
    phases = incremental_class_phases(toy_meta(counts[:1203]), base=270, num_phases=6)
    assert [len(p) for p in phases] == [270, 156, 156, 156, 155, 155, 155]


@pytest.mark.parametrize(
    "base, num_phases, message",
    [(4, 3, "more phases than classes: 3 incremental phases for the 2 classes"), (0, 1, "base must be in"),
     (7, 0, "base must be in"), (2, -1, "num_phases must be >= 0")],
)  # fmt: skip
def test_split_errors_name_the_numbers(base, num_phases, message):
    with pytest.raises(ValueError, match=message):
        incremental_class_phases(toy_meta([6, 5, 4, 3, 2, 1]), base=base, num_phases=num_phases)


@pytest.mark.parametrize(
    "num_classes, base, num_phases", [(72, 30, 3), (1230, 270, 6), (1203, 270, 6), (8, 4, 2), (6, 2, 3), (6, 6, 0),
                                      (6, 4, 0), (10, 1, 9)],
)  # fmt: skip
def test_the_split_in_numbers_is_the_datasets_split(num_classes, base, num_phases):
    split = ClassIncrementalSplit(num_classes, base, num_phases)
    order = np.arange(100, 100 + num_classes)
    reference = [order[:base]] + (np.array_split(order[base:], num_phases) if num_phases else [])
    assert [p.tolist() for p in split.split(order)] == [p.tolist() for p in reference]
    assert split.sizes == tuple(len(p) for p in reference)
    assert split.class_counts == tuple(int(k) for k in np.cumsum([len(p) for p in reference]))
    assert all(type(k) is int for k in split.class_counts)
    assert [split.old_num_classes(t) for t in range(num_phases + 1)] == [0, *split.class_counts[:-1]]
    counts = np.random.default_rng(1).integers(0, 50, size=num_classes)
    assert [len(p) for p in incremental_class_phases(toy_meta(counts), base=base, num_phases=num_phases)] == list(
        split.sizes
    )


def test_split_in_numbers_errors():
    assert ClassIncrementalSplit(72, 30, 3).class_counts == (30, 44, 58, 72)  # LT-Shapes: projects/lst.py
    with pytest.raises(ValueError, match=r"more phases than classes: 3 incremental phases for the 2 classes"):
        ClassIncrementalSplit(6, 4, 3)
    with pytest.raises(ValueError, match=r"base must be in \[1, 6\]"):
        ClassIncrementalSplit(6, 0, 1)
    with pytest.raises(ValueError, match=r"phase must be in \[0, 2\], got 3"):
        ClassIncrementalSplit(8, 4, 2).old_num_classes(3)
    with pytest.raises(ValueError, match=r"splits 8 classes, got 7"):
        ClassIncrementalSplit(8, 4, 2).split(np.arange(7))


# --- replay counts ---------------------------------------------------------------------------------------------


def test_replay_counts_of_the_reference_toy_case():
    # class k in 3 images with 2, 1, 3 instances: n_k = 2; new classes with 4 and 8 instances: n_C = 6 -> 3
    for mode in ("ceil", "round"):
        assert replay_counts([6], [3], [4, 8], mode=mode).tolist() == [3]


def test_replay_counts_where_ceil_and_round_differ():
    # n_k = 5 / 2 = 2.5, n_C = 6: 2.4 -> ceil 3, round 2; n_k = 4 / 1, n_C = 6: 1.5 -> ceil 2, round (to even) 2;
    # n_k = 12 / 1: 0.5 -> ceil 1, round 0 -> 1 (the minimum); n_k = 2 / 2 = 1: 6 both
    args = ([5, 4, 12, 2], [2, 1, 1, 2], [4, 8])
    assert replay_counts(*args, mode="ceil").tolist() == [3, 2, 1, 6]
    assert replay_counts(*args, mode="round").tolist() == [2, 2, 1, 6]
    # halves round to even: n_C / n_k = 2.5 -> 2, 3.5 -> 4 (Python's round, as the official notebook)
    assert replay_counts([2, 2], [1, 1], [5, 5], mode="round").tolist() == [2, 2]
    assert replay_counts([2], [1], [7], mode="round").tolist() == [4]


def test_replay_count_errors():
    with pytest.raises(ValueError, match=r"positions \[1 \(1 in total\)\] have no training image"):
        replay_counts([3, 0], [1, 0], [4])
    with pytest.raises(ValueError, match="replay mode must be one of"):
        replay_counts([3], [1], [4], mode="floor")
    with pytest.raises(ValueError, match="at least one new class"):
        replay_counts([3], [1], [])


# --- the phase datasets ------------------------------------------------------------------------------------------
# classes (json id: name, training instances): 4 big 12, 7 k 9, 9 n2 8, 2 n1 4, 5 unseen 1 -> ranks 0..4;
# base=2, num_phases=2: phase 0 = [4, 7], phase 1 = [9, 2], phase 2 = [5]
NAMES = {4: "big", 7: "k", 9: "n2", 2: "n1", 5: "unseen"}
TRAIN_IMAGES = {10: {7: 3, 4: 1}, 11: {7: 3}, 12: {7: 3, 2: 1}, 13: {2: 2, 9: 3, 5: 1}, 14: {9: 5, 4: 2},
                15: {2: 1}, 16: {4: 9}}  # fmt: skip
VAL_IMAGES = {100: {4: 1, 2: 2}, 101: {5: 1, 9: 1}, 102: {}}
SOURCE_ID = {4: 1, 7: 2, 9: 3, 2: 4, 5: 5}  # source id -> renumbered id (rank + 1)


def lvis_json(images, first_annotation_id=1, lists=None):
    lists = lists or {}
    out_images, annotations = [], []
    for image_id, per_class in images.items():
        neg, not_exhaustive = lists.get(image_id, ([], []))
        out_images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 40, "width": 40,
                           "neg_category_ids": neg, "not_exhaustive_category_ids": not_exhaustive})  # fmt: skip
        for category, n in per_class.items():
            for j in range(n):
                box = [1.0 + j, 2.0, 5.0, 6.0]
                annotations.append({"id": first_annotation_id + len(annotations), "image_id": image_id,
                                    "category_id": category, "bbox": box, "area": 30.0})  # fmt: skip
    categories = [{"id": c, "name": n} for c, n in sorted(NAMES.items())]
    return {"images": out_images, "annotations": annotations, "categories": categories}


@pytest.fixture
def toy(tmp_path):
    """(train, val) dataset names of the toy source; unregisters every 'incr_test_' dataset after."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ltdet2.data import register_lvis_format_dataset

    train_path, val_path = tmp_path / "incr_train.json", tmp_path / "incr_val.json"
    train_path.write_text(json.dumps(lvis_json(TRAIN_IMAGES)))
    val_lists = {100: ([9, 5], [2]), 101: ([7], []), 102: ([4, 2, 5], [9])}
    val_path.write_text(json.dumps(lvis_json(VAL_IMAGES, first_annotation_id=500, lists=val_lists)))
    root = str(tmp_path / "images")
    yield (
        register_lvis_format_dataset("incr_test_train", str(train_path), root),
        register_lvis_format_dataset("incr_test_val", str(val_path), root, train_json=str(train_path)),
    )
    for n in [n for n in DatasetCatalog.keys() if n.startswith("incr_test_")]:
        DatasetCatalog.remove(n)
        MetadataCatalog.remove(n)


def build(toy, tmp_path, phase, seed=0, folder=None, **kwargs):
    """Prepares and registers phase ``phase``'s datasets; returns (builder, train json, val json)."""
    from ltdet2.data import IncrementalPhaseBuilder

    name = kwargs.pop("name", f"incr_test_phase{phase}")
    kwargs.setdefault("num_phases", 2)
    builder = IncrementalPhaseBuilder(
        name=name, source=toy[0], source_val=toy[1], base=2, phase=phase, seed=seed, **kwargs
    )
    context = SimpleNamespace(output_dir=str(tmp_path / (folder or name)), seed=123)
    builder.prepare(context)
    builder.register(context)
    with open(builder.json_path(context)) as f:
        train = json.load(f)
    with open(builder.val_json_path(context)) as f:
        val = json.load(f)
    return builder, train, val


def entries(train):
    """[(source image id, sorted [(renumbered category id, valid)])] per entry, in entry order."""
    per_image = {im["id"]: [] for im in train["images"]}
    for a in train["annotations"]:
        per_image[a["image_id"]].append((a["category_id"], a.get("valid", True)))
    return [(im["source_image_id"], sorted(per_image[im["id"]])) for im in train["images"]]


def test_base_phase_holds_the_base_class_images_with_their_base_annotations_valid(toy, tmp_path):
    builder, train, _ = build(toy, tmp_path, phase=0)
    assert builder.seen_category_ids().tolist() == [4, 7] and builder.num_old_classes() == 0
    assert [(c["id"], c["source_id"], c["name"]) for c in train["categories"]] == [(1, 4, "big"), (2, 7, "k")]
    assert entries(train) == [
        (10, [(1, True)] + [(2, True)] * 3),
        (11, [(2, True)] * 3),
        (12, [(2, True)] * 3),
        (14, [(1, True)] * 2),
        (16, [(1, True)] * 9),
    ]
    assert [im["id"] for im in train["images"]] == [1, 2, 3, 4, 5]
    assert len({a["id"] for a in train["annotations"]}) == len(train["annotations"])


def test_incremental_phase_entries_new_classes_and_balanced_replay(toy, tmp_path):
    builder, train, _ = build(toy, tmp_path, phase=1, seed=0)
    assert builder.num_old_classes() == 2 and builder.seen_category_ids().tolist() == [4, 7, 9, 2]
    # old classes keep their ids; new ones append (rank + 1)
    assert [(c["id"], c["source_id"]) for c in train["categories"]] == [(1, 4), (2, 7), (3, 9), (4, 2)]
    got = entries(train)
    # new-class images (paper reading): all new classes valid, old classes ignored, the unseen class removed
    assert got[:4] == [
        (12, [(2, False)] * 3 + [(4, True)]),
        (13, [(3, True)] * 3 + [(4, True)] * 2),
        (14, [(1, False)] * 2 + [(3, True)] * 5),
        (15, [(4, True)]),
    ]
    # replay: n_C = (8 + 4) / 2 = 6; big: n = 12 / 3 = 4 -> ceil(1.5) = 2 images; k: 9 / 3 = 3 -> 2 images
    replay = got[4:]
    assert len(replay) == 4
    for (image, annotations), k in zip(replay, (1, 1, 2, 2)):
        assert image in {1: (10, 14, 16), 2: (10, 11, 12)}[k]
        assert {c for c, v in annotations if v} == {k}  # only k valid, and it is in the image
        assert all(c != 5 for c, _ in annotations)
    assert len({image for image, _ in replay[:2]}) == 2 and len({image for image, _ in replay[2:]}) == 2
    # an image used by several entries appears once per entry, each with its own ids
    assert [im["id"] for im in train["images"]] == list(range(1, 9))
    sources = [a["source_annotation_id"] for a in train["annotations"]]
    assert len(sources) > len(set(sources))
    assert [a["id"] for a in train["annotations"]] == list(range(1, len(sources) + 1))


def test_entry_class_mode_gives_one_entry_per_image_and_new_class(toy, tmp_path):
    _, train, _ = build(toy, tmp_path, phase=1, new_images="entry_class")
    assert entries(train)[:5] == [
        (12, [(2, False)] * 3 + [(4, True)]),
        (13, [(3, True)] * 3 + [(4, False)] * 2),
        (13, [(3, False)] * 3 + [(4, True)] * 2),
        (14, [(1, False)] * 2 + [(3, True)] * 5),
        (15, [(4, True)]),
    ]


def test_replay_is_seeded_and_deterministic(toy, tmp_path):
    draws = {}
    for seed in range(6):
        _, train, _ = build(toy, tmp_path, phase=1, seed=seed, folder=f"s{seed}", name=f"incr_test_s{seed}")
        _, again, _ = build(toy, tmp_path, phase=1, seed=seed, folder=f"s{seed}b", name=f"incr_test_s{seed}b")
        assert entries(train) == entries(again)
        draws[seed] = tuple(image for image, _ in entries(train)[4:])
    assert len(set(draws.values())) > 1  # the seed decides the replay draw


def test_val_json_seen_classes_renumbered_with_the_full_training_counts(toy, tmp_path):
    from detectron2.data import MetadataCatalog

    from ltdet2.data import evaluation_ground_truth

    builder, _, val = build(toy, tmp_path, phase=1)
    assert builder.val_name == "incr_test_phase1_val"
    assert [im["id"] for im in val["images"]] == [100, 101, 102]
    assert sorted((a["image_id"], a["category_id"]) for a in val["annotations"]) == [
        (100, 1),
        (100, 4),
        (100, 4),
        (101, 3),
    ]
    # federated lists: unseen ids (5) dropped, the others renumbered
    assert [(im["neg_category_ids"], im["not_exhaustive_category_ids"]) for im in val["images"]] == [
        ([3], [4]),
        ([2], []),
        ([1, 4], [3]),
    ]
    # the categories' counts are the full source training set's, not the phase's entries'
    expected = [(1, 4, 12, 3), (2, 7, 9, 3), (3, 9, 8, 2), (4, 2, 4, 3)]
    assert [(c["id"], c["source_id"], c["instance_count"], c["image_count"]) for c in val["categories"]] == expected
    metadata = MetadataCatalog.get(builder.val_name)
    assert metadata.instance_count == [12, 9, 8, 4] and metadata.image_count == [3, 3, 2, 3]
    assert metadata.thing_classes == ["big", "k", "n2", "n1"]
    ground_truth = evaluation_ground_truth(builder.val_name)
    assert [(c["id"], c["instance_count"], c["frequency"]) for c in ground_truth["categories"]] == [
        (1, 12, "r"),
        (2, 9, "r"),
        (3, 8, "r"),
        (4, 4, "r"),
    ]


def test_phase_datasets_load_through_detectron2(toy, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts

    builder, train, _ = build(toy, tmp_path, phase=1)
    dicts = get_detection_dataset_dicts([builder.name], filter_empty=False)
    assert len(dicts) == 8
    assert sorted((a["category_id"], a.get("valid", True)) for a in dicts[-1]["annotations"]) == sorted(
        (c - 1, v) for c, v in entries(train)[-1][1]
    )
    assert MetadataCatalog.get(builder.name).derived_from == "incr_test_train"
    assert len(DatasetCatalog.get(builder.val_name)) == 3


def test_rebuild_skipped_with_the_same_inputs(toy, tmp_path, caplog):
    build(toy, tmp_path, phase=1, folder="same")
    with caplog.at_level(logging.INFO, logger="ltdet2.data.derived"):
        build(toy, tmp_path, phase=1, folder="same")
    assert sum("up to date" in r.getMessage() for r in caplog.records) == 3


def test_errors_name_the_phase_and_class(toy, tmp_path):
    from ltdet2.data import IncrementalPhaseBuilder

    with pytest.raises(ValueError, match="phase 3 out of range: phases are 0 \\(base\\) .. 2"):
        IncrementalPhaseBuilder(name="x", source=toy[0], source_val=toy[1], base=2, num_phases=2, phase=3)
    with pytest.raises(ValueError, match="more phases than classes: 4 incremental phases for the 3 classes"):
        build(toy, tmp_path, phase=1, num_phases=4)


def test_an_old_class_without_image_to_replay_is_warned_about(tmp_path, caplog):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ltdet2.data import IncrementalPhaseBuilder, register_lvis_format_dataset

    d = lvis_json({1: {4: 2}, 2: {4: 1}})  # only "big" annotated: "n1" (2) is old in phase 1, with no image
    path = tmp_path / "empty_class.json"
    path.write_text(json.dumps(d))
    name = register_lvis_format_dataset("incr_test_empty", str(path), str(tmp_path))
    builder = IncrementalPhaseBuilder(
        name="incr_test_empty_p1", source=name, source_val=name, base=2, num_phases=1, phase=1, seed=0
    )
    try:
        with caplog.at_level(logging.WARNING, logger="ltdet2.data.incremental"):
            builder.prepare(SimpleNamespace(output_dir=str(tmp_path / "p1"), seed=0))
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(
            "phase 1: 1 of its 2 old classes have no image in incr_test_empty to replay" in m
            and "'n1' (category id 2)" in m
            for m in warnings
        ), warnings
        with open(tmp_path / "p1" / "incr_test_empty_p1.json") as f:
            train = json.load(f)
        assert train["ltdet2_derived"]["output"]["old_classes_without_replay"] == [
            {"id": 2, "source_id": 2, "name": "n1"}
        ]
        # no new class has an image either (warned too): the set is big's replay, one image (n_C = 0 -> at least 1)
        ((image, annotations),) = entries(train)
        assert image in (1, 2) and {c for c, _ in annotations} == {1} and all(v for _, v in annotations)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_tiny_lt_shapes_phase_loads_through_the_validity_mapper(tiny_dataset, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts

    from ltdet2.data import IncrementalPhaseBuilder, ValidityDatasetMapper, lvis_meta_from_dataset

    train, val = tiny_dataset
    builder = IncrementalPhaseBuilder(
        name="incr_test_shapes_p1", source=train, source_val=val, base=4, num_phases=2, phase=1, seed=0
    )
    context = SimpleNamespace(output_dir=str(tmp_path / "p1"), seed=0)
    try:
        builder.prepare(context)
        builder.register(context)
        seen = builder.seen_category_ids()
        assert len(seen) == 6 and builder.num_old_classes() == 4
        assert MetadataCatalog.get(builder.name).thing_classes == [
            lvis_meta_from_dataset(train).names[int(c) - 1] for c in seen
        ]
        dicts = get_detection_dataset_dicts([builder.name], filter_empty=False)
        mapper = ValidityDatasetMapper(is_train=True, augmentations=[], image_format="BGR", use_instance_mask=True)
        replayed = np.zeros(4, dtype=np.int64)
        for record in dicts:
            instances = mapper(record)["instances"]
            classes, valid = instances.gt_classes, instances.gt_valid
            assert len(classes) == len(record["annotations"]) and classes.max() < 6
            valid_classes = set(classes[valid].tolist())
            if valid_classes and max(valid_classes) < 4:  # a replay entry: one old class valid
                assert len(valid_classes) == 1
                replayed[valid_classes.pop()] += 1
            else:  # a new-class image: new classes valid, old ones ignored
                assert valid_classes and min(valid_classes) >= 4
                assert set(classes[~valid].tolist()) <= {0, 1, 2, 3}
        # every old class of LT-Shapes has one instance per image: n_k = 1, n_C = (9 + 4) / 2 -> 7 images each
        meta = lvis_meta_from_dataset(train)
        assert meta.instance_count[seen - 1].tolist() == [48, 31, 20, 13, 9, 4]
        assert replayed.tolist() == [7, 7, 7, 7]
        assert len(DatasetCatalog.get(builder.val_name)) == 20
    finally:
        for n in (builder.name, builder.val_name):
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)
