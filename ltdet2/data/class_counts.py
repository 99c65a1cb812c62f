"""Per-class image and instance counts: the one place (image, class) pairs are counted.

Every caller that needs "how many images hold class c" goes through here: LVIS metadata, LT-Shapes,
repeat-factor sampling, the class-balanced warm-up, replay targets. Class indices are contiguous
(``0 .. C-1``); image keys are any integers (json ids or positions in a list).
"""
from typing import Sequence, Tuple

import numpy as np

__all__ = [
    "unique_image_class_pairs",
    "class_counts",
    "dataset_dict_pairs",
    "dataset_class_image_count",
]


def unique_image_class_pairs(image_keys, class_index) -> Tuple[np.ndarray, np.ndarray]:
    """Unique (image, class) pairs of per-annotation arrays, sorted by image key, then class.

    Args:
        image_keys: [A] integer image key of each annotation.
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
        raise ValueError(f"class indices must be >= 0, got {int(class_index.min())}")
    images, image_position = np.unique(image_keys, return_inverse=True)
    stride = int(class_index.max()) + 1
    pairs = np.unique(image_position * stride + class_index)
    return images[pairs // stride], pairs % stride


def class_counts(image_keys, class_index, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(image_count [C], instance_count [C])`` int64 from per-annotation image keys and classes.

    Raises ValueError if a class index is outside ``[0, num_classes)``.
    """
    class_index = np.asarray(class_index, dtype=np.int64).reshape(-1)
    if class_index.size and (class_index.min() < 0 or class_index.max() >= num_classes):
        bad = np.unique(class_index[(class_index < 0) | (class_index >= num_classes)])
        raise ValueError(f"class indices {bad[:10].tolist()} outside [0, {num_classes})")
    instance_count = np.bincount(class_index, minlength=num_classes).astype(np.int64)
    _, pair_classes = unique_image_class_pairs(image_keys, class_index)
    image_count = np.bincount(pair_classes, minlength=num_classes).astype(np.int64)
    return image_count, instance_count


def dataset_dict_pairs(dataset_dicts: Sequence[dict]) -> Tuple[np.ndarray, np.ndarray]:
    """Unique (image position, class) pairs of Detectron2 dataset dicts (``category_id`` contiguous).

    Returns:
        (image_index [P], class_index [P]) int64, image_index the position in ``dataset_dicts``;
        sorted by image, then class.
    """
    lengths = np.fromiter((len(d.get("annotations", ())) for d in dataset_dicts), dtype=np.int64,
                          count=len(dataset_dicts))
    classes = np.fromiter((a["category_id"] for d in dataset_dicts for a in d.get("annotations", ())),
                          dtype=np.int64, count=int(lengths.sum()))
    images = np.repeat(np.arange(len(dataset_dicts), dtype=np.int64), lengths)
    return unique_image_class_pairs(images, classes)


def dataset_class_image_count(dataset_names) -> np.ndarray:
    """``[C]`` int64 training images per class of one registered LVIS-format dataset, or the sum over
    several (same categories), counted from its json (:func:`ltdet2.data.lvis_meta.lvis_meta_from_dataset`)."""
    from .lvis_meta import lvis_meta_from_dataset

    names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
    if not names:
        raise ValueError("dataset_class_image_count needs at least one dataset name")
    counts = [np.asarray(lvis_meta_from_dataset(name).image_count, dtype=np.int64) for name in names]
    if len({c.shape for c in counts}) > 1:
        raise ValueError(f"datasets {names} have different numbers of classes: {[c.size for c in counts]}")
    return np.sum(counts, axis=0)
