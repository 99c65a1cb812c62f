"""Per-class image and instance counts: the one place (image, class) pairs are counted.

Every caller that needs "how many images hold class c" goes through here: LVIS metadata, LT-Shapes,
repeat-factor sampling, the class-balanced warm-up, replay targets. Class indices are contiguous
(``0 .. C-1``); image keys are any integers (json ids or positions in a list).
"""

from collections.abc import Sequence

import numpy as np

__all__ = [
    "unique_image_class_pairs",
    "class_counts",
    "dataset_dict_pairs",
    "dataset_class_image_count",
]


def unique_image_class_pairs(image_keys, class_index) -> tuple[np.ndarray, np.ndarray]:
    """Unique (image, class) pairs of per-annotation arrays, sorted by image key, then class.

    Args:
        image_keys: [A] integer image key of each annotation (any int64 value, e.g. a json id).
        class_index: [A] integer class (>= 0) of each annotation.
    Returns:
        (image_keys [P], class_index [P]) int64: pair p says image ``image_keys[p]`` holds at least one
        annotation of class ``class_index[p]``.
    """
    image_keys = np.asarray(image_keys, dtype=np.int64).reshape(-1)
    class_index = np.asarray(class_index, dtype=np.int64).reshape(-1)
    if image_keys.shape != class_index.shape:
        raise ValueError(f"{image_keys.size} image keys but {class_index.size} classes")
    if class_index.size == 0:
        return image_keys, class_index
    if class_index.min() < 0:
        first = int(np.argmax(class_index < 0))
        raise ValueError(
            f"class indices must be >= 0, got {int(class_index[first])} (annotation {first}, image key "
            f"{int(image_keys[first])})"
        )
    # keys are replaced by their rank among the unique keys, so key * stride + class cannot overflow
    images, image_position = np.unique(image_keys, return_inverse=True)
    stride = int(class_index.max()) + 1
    pairs = _sorted_unique(image_position.reshape(-1) * stride + class_index)
    return images[pairs // stride], pairs % stride


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` by sorting: numpy >= 2.3's hash-based ``np.unique`` is about 15x slower
    on a million int64 keys."""
    values = np.sort(values)
    return values[np.concatenate([[True], values[1:] != values[:-1]])] if len(values) else values


def class_counts(image_keys, class_index, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class numbers of images and of instances from per-annotation arrays.

    Args:
        image_keys: [A] integer image key of each annotation.
        class_index: [A] contiguous class of each annotation, in ``[0, num_classes)``.
        num_classes: C.
    Returns:
        (image_count [C], instance_count [C]) int64: images holding the class, annotations of the class.
    Raises:
        ValueError: a class index outside ``[0, num_classes)`` (some of them named, and how many
            annotations), or arrays of different lengths.
    """
    class_index = np.asarray(class_index, dtype=np.int64).reshape(-1)
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    outside = (class_index < 0) | (class_index >= num_classes)
    if outside.any():
        raise ValueError(
            f"{int(outside.sum())} annotations have class indices outside [0, {num_classes}): "
            f"{np.unique(class_index[outside])[:10].tolist()}"
        )
    _, pair_classes = unique_image_class_pairs(image_keys, class_index)
    image_count = np.bincount(pair_classes, minlength=num_classes).astype(np.int64)
    instance_count = np.bincount(class_index, minlength=num_classes).astype(np.int64)
    return image_count, instance_count


def dataset_dict_pairs(dataset_dicts: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Unique (image position, class) pairs of Detectron2 dataset dicts (``category_id`` contiguous).

    Returns:
        (image_index [P], class_index [P]) int64, ``image_index`` the position in ``dataset_dicts``;
        sorted by image, then class. A dict without ``annotations`` has no pair.
    """
    lengths = np.fromiter(
        (len(d.get("annotations", ())) for d in dataset_dicts), dtype=np.int64, count=len(dataset_dicts)
    )
    classes = np.fromiter(
        (a["category_id"] for d in dataset_dicts for a in d.get("annotations", ())),
        dtype=np.int64,
        count=int(lengths.sum()),
    )
    images = np.repeat(np.arange(len(dataset_dicts), dtype=np.int64), lengths)
    return unique_image_class_pairs(images, classes)


def _registered_image_count(dataset_name: str) -> tuple[tuple, np.ndarray]:
    """(json category ids ascending, [C] image count) of one registered dataset."""
    from detectron2.data import MetadataCatalog

    from .lvis_meta import lvis_meta_from_dataset

    metadata = MetadataCatalog.get(dataset_name)
    if metadata.get("json_file", None) is not None:
        meta = lvis_meta_from_dataset(dataset_name)
        return meta.category_ids, np.array(meta.image_count, dtype=np.int64)
    records = metadata.get("class_image_count", None)
    if records is None:
        raise ValueError(f"dataset {dataset_name!r} has neither 'class_image_count' nor 'json_file' in its metadata")
    records = sorted(records, key=lambda r: r["id"])
    return (tuple(int(r["id"]) for r in records), np.asarray([int(r["image_count"]) for r in records], dtype=np.int64))


def dataset_class_image_count(dataset_names: str | Sequence[str]) -> np.ndarray:
    """``[C]`` int64 training images per contiguous class of a registered dataset, or the sum over
    several (as ``get_detection_dataset_dicts`` takes them; same categories).

    Counted from the annotations of the dataset's ``json_file`` (the training json's for an evaluation
    split registered with ``train_json``) through :func:`ltdet2.data.lvis_meta.lvis_meta_from_dataset`,
    never from counts a file or a built-in table may carry stale (Detectron2 gives every dataset
    named like "lvis_v1..." LVIS v1's ``class_image_count``). Only a dataset without ``json_file``
    is read from its ``class_image_count`` metadata.
    """
    names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
    if not names:
        raise ValueError("dataset_class_image_count needs at least one dataset name")
    category_ids, counts = zip(*(_registered_image_count(name) for name in names))
    if len(set(category_ids)) > 1:
        raise ValueError(
            f"datasets {names} have different categories ({[len(ids) for ids in category_ids]} "
            "category ids); their image counts cannot be summed"
        )
    return np.sum(counts, axis=0, dtype=np.int64)
