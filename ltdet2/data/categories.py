"""Per-category array computations, the bottom layer of :mod:`ltdet2.data`: nothing here reads a file or a
catalog, and nothing here imports another ltdet2 module.

* (image, class) pairs and per-class image / instance counts (:func:`class_counts`): the one place (image, class)
  pairs are counted. Every caller that needs "how many images hold class c" goes through here: LVIS metadata,
  dataset validation, LT-Shapes, repeat-factor sampling, the class-balanced warm-up, replay targets. Class indices
  are contiguous (``0 .. C-1``); image keys are any integers (json ids or positions in a list).
* LVIS frequency groups from per-category training image counts (:func:`frequency_from_image_count`).
* The json category ids sorted ascending: the contiguous class index ``i`` corresponds to ``category_ids[i]``
  (Detectron2's LVIS mapping; for LVIS, ids ``1..C``, this equals Detectron2's ``category_id - 1``).

Also importable from their former modules: the counts from :mod:`ltdet2.data.class_counts`, the frequency groups
from :mod:`ltdet2.data.lvis_meta`.
"""

from collections.abc import Sequence

import numpy as np

__all__ = [
    "FREQUENCY_GROUPS",
    "RARE_MAX_IMAGES",
    "COMMON_MAX_IMAGES",
    "frequency_from_image_count",
    "unique_image_class_pairs",
    "class_counts",
    "dataset_dict_pairs",
]

FREQUENCY_GROUPS = ("r", "c", "f")
# LVIS thresholds on the number of *training images* containing a category:
# rare 1..10, common 11..100, frequent > 100.
RARE_MAX_IMAGES = 10
COMMON_MAX_IMAGES = 100

_MAX_IDS_IN_MESSAGE = 10


def _fmt_ids(ids) -> str:
    ids = [int(i) for i in ids]
    shown = ", ".join(str(i) for i in ids[:_MAX_IDS_IN_MESSAGE])
    more = f", ... ({len(ids)} in total)" if len(ids) > _MAX_IDS_IN_MESSAGE else f" ({len(ids)} in total)"
    return f"[{shown}{more}]"


def frequency_from_image_count(image_count) -> np.ndarray:
    """LVIS frequency group per category from its number of training images.

    'r' for 0..10 images (0 counts as rare), 'c' for 11..100, 'f' for > 100.

    Args:
        image_count: array-like of non-negative ints, shape [C].
    Returns:
        np.ndarray of dtype '<U1', shape [C], values in {'r', 'c', 'f'}.
    """
    counts = np.asarray(image_count)
    if counts.size and (counts < 0).any():
        raise ValueError(
            f"image_count must be >= 0, got negative values at indices {_fmt_ids(np.nonzero(counts < 0)[0])}"
        )
    out = np.full(counts.shape, "r", dtype="<U1")
    out[counts > RARE_MAX_IMAGES] = "c"
    out[counts > COMMON_MAX_IMAGES] = "f"
    return out


def _sorted_category_ids(categories, source: str) -> np.ndarray:
    try:
        ids = np.fromiter((int(c["id"]) for c in categories), dtype=np.int64, count=len(categories))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{source}: every record in 'categories' needs an integer 'id' ({e!r})") from e
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{source}: duplicate category ids {_fmt_ids(uniq[counts > 1])}")
    return uniq


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
