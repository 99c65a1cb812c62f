"""Per-class (image, class) pair counting: ltdet2.data.categories (also importable from ltdet2.data.class_counts)
and the class-balanced warm-up set."""

import json
from collections import defaultdict

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.registry import locate

from ltdet2.data import dataset_class_image_count, dataset_dict_pairs, load_lvis_meta, unique_image_class_pairs
from ltdet2.data.categories import class_counts
from ltdet2.hooks.memory_warmup import class_balanced_images


def random_annotations(seed=0, num_annotations=500, num_classes=7):
    """Per-annotation (image key, class): large and negative json-like ids, repeats; class 6 never drawn."""
    rng = np.random.default_rng(seed)
    image_ids = np.array([-3, 0, 5, 2**40, 2**40 + 1, 10**15, 123456789], dtype=np.int64)
    image_keys = rng.choice(image_ids, size=num_annotations)
    classes = rng.integers(0, num_classes - 1, size=num_annotations)
    return image_keys, classes


def test_counts_match_direct_computation():
    image_keys, classes = random_annotations()
    images_of, instances = defaultdict(set), defaultdict(int)
    for key, c in zip(image_keys.tolist(), classes.tolist()):
        images_of[c].add(key)
        instances[c] += 1
    image_count, instance_count = class_counts(image_keys, classes, 7)
    assert image_count.dtype == np.int64 and instance_count.dtype == np.int64
    assert image_count.tolist() == [len(images_of[c]) for c in range(7)]
    assert instance_count.tolist() == [instances[c] for c in range(7)]
    assert image_count[6] == 0 and instance_count.sum() == 500

    pair_images, pair_classes = unique_image_class_pairs(image_keys, classes)
    expected = sorted({(key, c) for key, c in zip(image_keys.tolist(), classes.tolist())})
    assert list(zip(pair_images.tolist(), pair_classes.tolist())) == expected


def test_module_reachable_by_name():
    # LazyConfig resolves "_target_" strings this way; ltdet2.data must not hide the module
    assert locate("ltdet2.data.class_counts.dataset_dict_pairs") is dataset_dict_pairs
    assert locate("ltdet2.data.class_counts.class_counts") is class_counts


def test_empty_input():
    image_count, instance_count = class_counts([], [], 4)
    assert image_count.tolist() == [0, 0, 0, 0] and instance_count.tolist() == [0, 0, 0, 0]
    assert image_count.dtype == np.int64
    assert class_counts([], [], 0)[0].shape == (0,)
    images, classes = unique_image_class_pairs([], [])
    assert images.shape == classes.shape == (0,) and images.dtype == classes.dtype == np.int64
    for dicts in ([], [{"image_id": 1}, {"image_id": 2, "annotations": []}]):
        images, classes = dataset_dict_pairs(dicts)
        assert images.shape == classes.shape == (0,) and images.dtype == classes.dtype == np.int64


def test_bad_class_indices():
    with pytest.raises(ValueError, match=r"2 annotations have class indices outside \[0, 5\): \[5, 9\]"):
        class_counts([1, 2, 3], [0, 5, 9], 5)
    with pytest.raises(ValueError, match=r"1 annotations have class indices outside \[0, 5\): \[-1\]"):
        class_counts([1, 2], [0, -1], 5)
    with pytest.raises(ValueError, match=r"must be >= 0, got -2 \(annotation 1, image key 2\)"):
        unique_image_class_pairs([1, 2], [0, -2])
    with pytest.raises(ValueError, match="3 image keys but 2 classes"):
        class_counts([1, 2, 3], [0, 1], 5)
    with pytest.raises(ValueError, match="must be >= 0, got -1"):
        dataset_dict_pairs([{"annotations": [{"category_id": -1}]}])


def test_dataset_dict_pairs():
    dicts = [
        {"annotations": [{"category_id": 3}, {"category_id": 0}, {"category_id": 3}]},
        {"image_id": 7},  # no annotations key
        {"annotations": [{"category_id": 1}]},
        {"annotations": []},
        {"annotations": [{"category_id": 1}, {"category_id": 1}, {"category_id": 0}]},
    ]
    images, classes = dataset_dict_pairs(dicts)
    assert images.dtype == classes.dtype == np.int64
    assert list(zip(images.tolist(), classes.tolist())) == [(0, 0), (0, 3), (2, 1), (4, 0), (4, 1)]


# 10 images, classes 0..5 (class 5 in no image, image 6 without annotations)
WARMUP_IMAGE_CLASSES = [[0, 0, 1], [0], [0, 2], [0, 1], [0], [0, 3, 3], [], [1, 0], [2, 4], [0, 4, 1]]


@pytest.mark.parametrize(
    "images_per_class,seed,expected",
    [(1, 0, [2, 5, 7, 8]), (1, 1, [1, 2, 5, 9]), (1, 5, [2, 4, 5, 7, 9]), (2, 0, [1, 2, 5, 7, 8, 9])],
)
def test_class_balanced_images(images_per_class, seed, expected):
    dicts = [{"annotations": [{"category_id": c} for c in cats]} for cats in WARMUP_IMAGE_CLASSES]
    selected = class_balanced_images(dicts, 6, images_per_class, seed=seed)
    # the values of the per-image loop it replaced (same random draws, same order)
    assert selected.dtype == np.int64 and selected.tolist() == expected
    for c in range(6):
        holding = {i for i, cats in enumerate(WARMUP_IMAGE_CLASSES) if c in cats}
        assert len(holding & set(expected)) >= min(images_per_class, len(holding))
    everything = class_balanced_images(dicts, 6, 100, seed=seed)
    assert everything.tolist() == [i for i, cats in enumerate(WARMUP_IMAGE_CLASSES) if cats]
    assert class_balanced_images([], 6, 2).shape == (0,)


# --- registered datasets ------------------------------------------------------------------------


def lvis_json(image_classes, category_ids=(3, 1, 8)):
    """An LVIS-format dict without count fields (they are counted from annotations); huge image ids."""
    images = [{"id": 10**12 + i} for i in range(len(image_classes))]
    ordered = sorted(category_ids)
    annotations = [
        {"id": k, "image_id": 10**12 + i, "category_id": ordered[c]}
        for k, (i, c) in enumerate((i, c) for i, cats in enumerate(image_classes) for c in cats)
    ]
    categories = [{"id": i, "name": f"c{i}", "frequency": "r"} for i in category_ids]
    return {"images": images, "categories": categories, "annotations": annotations}


@pytest.fixture
def register(tmp_path):
    """register(name, json_dict=None, **metadata): a dataset with the given metadata (json_file written from
    json_dict); removed from the catalogs afterwards."""
    names = []

    def _register(name, json_dict=None, **metadata):
        if json_dict is not None:
            path = tmp_path / f"{name}.json"
            path.write_text(json.dumps(json_dict))
            metadata["json_file"] = str(path)
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(**metadata)
        names.append(name)
        return name

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_dataset_class_image_count_from_json(register):
    # contiguous classes (json ids 1, 3, 8): images per class 3, 2, 0 / 1, 0, 2
    first = register("class_counts_test_a", lvis_json([[0, 0, 1], [0], [1, 0], []]))
    second = register("class_counts_test_b", lvis_json([[2], [0, 2, 2]]))
    count = dataset_class_image_count(first)
    assert count.dtype == np.int64 and count.tolist() == [3, 2, 0]
    assert dataset_class_image_count([second]).tolist() == [1, 0, 2]
    assert dataset_class_image_count([first, second]).tolist() == [4, 2, 2]
    assert dataset_class_image_count((first, first)).tolist() == [6, 4, 0]


def test_dataset_class_image_count_from_metadata_and_errors(register):
    # Detectron2's class_image_count metadata (any order of records) is read when set
    records = [{"id": 8, "image_count": 5}, {"id": 1, "image_count": 7}, {"id": 3, "image_count": 0}]
    from_metadata = register("class_counts_test_meta", class_image_count=records)
    from_json = register("class_counts_test_json", lvis_json([[0, 2], [2]]))
    assert dataset_class_image_count(from_metadata).tolist() == [7, 0, 5]
    assert dataset_class_image_count([from_metadata, from_json]).tolist() == [8, 0, 7]

    other_ids = register("class_counts_test_other", lvis_json([[0]], category_ids=(1, 3, 9)))
    with pytest.raises(ValueError, match="different categories"):
        dataset_class_image_count([from_json, other_ids])
    fewer = register("class_counts_test_fewer", lvis_json([[0]], category_ids=(1, 3)))
    with pytest.raises(ValueError, match=r"different categories \(\[3, 2\] category ids\)"):
        dataset_class_image_count([from_json, fewer])
    bare = register("class_counts_test_bare")
    with pytest.raises(ValueError, match="'class_counts_test_bare' has neither 'class_image_count' nor 'json_file'"):
        dataset_class_image_count(bare)
    with pytest.raises(ValueError, match="at least one dataset name"):
        dataset_class_image_count([])


def test_dataset_class_image_count_of_lt_shapes_train(tiny_dataset):
    train, _ = tiny_dataset
    dicts = DatasetCatalog.get(train)  # loading the train split sets its class_image_count metadata
    _, classes = dataset_dict_pairs(dicts)
    meta = load_lvis_meta(MetadataCatalog.get(train).json_file, recompute_counts=True)
    expected = np.bincount(classes, minlength=meta.num_classes)
    assert dataset_class_image_count(train).tolist() == expected.tolist() == meta.image_count.tolist()


def test_counts_come_from_annotations_not_from_builtin_or_stored_counts(register):
    # Detectron2's register_lvis_instances with LVIS v1's metadata (what its loader gives any name with "v1"):
    # 1203 built-in class counts, and a json whose categories store counts that disagree with its annotations
    from detectron2.data.datasets.lvis import get_lvis_instances_meta

    d = lvis_json([[0, 0, 1], [0], [1, 0], []])
    for c, stored in zip(d["categories"], (40, 50, 60)):
        c.update(image_count=stored, instance_count=stored)
    name = register("class_counts_test_custom_v1", d, **get_lvis_instances_meta("lvis_v1"))
    assert len(MetadataCatalog.get(name).class_image_count) == 1203
    assert dataset_class_image_count(name).tolist() == [3, 2, 0]


def test_unique_pairs_sort_based_matches_numpy_unique():
    image_keys, classes = random_annotations(seed=3, num_annotations=5000, num_classes=40)
    images, pair_classes = unique_image_class_pairs(image_keys, classes)
    expected = np.unique(np.stack([image_keys, classes], axis=1), axis=0)
    assert np.array_equal(np.stack([images, pair_classes], axis=1), expected)
