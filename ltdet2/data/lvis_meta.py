"""LVIS category metadata of a registered Detectron2 dataset: :func:`lvis_meta_from_dataset`.

The metadata itself, :class:`LVISMeta` read from an LVIS-format json by :func:`load_lvis_meta`, is defined in
:mod:`ltdet2.data.category_meta`, and the frequency groups in :mod:`ltdet2.data.categories`; their names are
importable from here too, as they always were.
"""

from __future__ import annotations

import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from .categories import COMMON_MAX_IMAGES, FREQUENCY_GROUPS, RARE_MAX_IMAGES, frequency_from_image_count
from .category_meta import LVISMeta, clear_lvis_meta_cache, count_from_annotations, load_lvis_meta
from .datasets import dataset_lvis_meta, is_lvis_format_dataset

__all__ = [
    "FREQUENCY_GROUPS",
    "RARE_MAX_IMAGES",
    "COMMON_MAX_IMAGES",
    "frequency_from_image_count",
    "LVISMeta",
    "load_lvis_meta",
    "count_from_annotations",
    "clear_lvis_meta_cache",
    "lvis_meta_from_dataset",
]


def lvis_meta_from_dataset(dataset_name: str, **kwargs) -> LVISMeta:
    """:class:`LVISMeta` of a registered Detectron2 dataset, with counts from its annotations.

    A dataset registered by :func:`ltdet2.data.register_lvis_format_dataset` (or LT-Shapes) gives its
    validated metadata: counts of its training annotations (its ``train_json``'s for an evaluation
    split) and frequency groups by LVIS's thresholds on them (``kwargs`` are not accepted). Any other
    dataset is read from its metadata's ``json_file`` with :func:`load_lvis_meta`, by default with
    ``recompute_counts=True``: counts from the annotations, not from the categories' stored fields;
    the stored ``frequency`` is kept (on LVIS val files it refers to the training set, as AP_r/c/f
    needs), derived from the counts where absent.

    A dataset whose json is made on first load (LT-Shapes) is loaded once to create it.
    """
    if is_lvis_format_dataset(dataset_name):
        if kwargs:
            raise TypeError(
                f"dataset {dataset_name!r} is registered by register_lvis_format_dataset: its counts "
                f"and groups come from its annotations; {sorted(kwargs)} do not apply"
            )
        return dataset_lvis_meta(dataset_name)
    json_file = MetadataCatalog.get(dataset_name).get("json_file", None)
    if json_file is None:
        raise ValueError(f"dataset {dataset_name!r} has no 'json_file' in its metadata (not LVIS-format?)")
    if not os.path.isfile(json_file):
        DatasetCatalog.get(dataset_name)
    kwargs.setdefault("recompute_counts", True)
    return load_lvis_meta(json_file, **kwargs)
