"""Per-class image counts of registered Detectron2 datasets: :func:`dataset_class_image_count`.

The counting itself, the one place (image, class) pairs are counted (:func:`class_counts`,
:func:`unique_image_class_pairs`, :func:`dataset_dict_pairs`), is defined in :mod:`ltdet2.data.categories`;
those names are importable from here too, as they always were.
"""

from collections.abc import Sequence

import numpy as np

from detectron2.data import MetadataCatalog

from .categories import class_counts, dataset_dict_pairs, unique_image_class_pairs
from .lvis_meta import lvis_meta_from_dataset

__all__ = [
    "unique_image_class_pairs",
    "class_counts",
    "dataset_dict_pairs",
    "dataset_class_image_count",
]


def _registered_image_count(dataset_name: str) -> tuple[tuple, np.ndarray]:
    """(json category ids ascending, [C] image count) of one registered dataset."""
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
