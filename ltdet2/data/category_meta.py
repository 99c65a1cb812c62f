"""LVIS category metadata (:class:`LVISMeta`): frequency groups and per-category image / instance counts.

Everything here is read from an LVIS-format json (a path or an already loaded dict); nothing is
hard-coded, so the same code serves LVIS v0.5, LVIS v1, LT-Shapes and any custom LVIS-format
dataset. Samplers (repeat factors), memories (targeted tail classes), evaluators (AP_r/c/f) and
replay-set builders all use :class:`LVISMeta`; the metadata of a registered dataset is
:func:`ltdet2.data.lvis_meta.lvis_meta_from_dataset`. Also importable from :mod:`ltdet2.data.lvis_meta`.

Index convention (Detectron2's LVIS mapping): the contiguous class index ``i`` corresponds to
``category_ids[i]``, the json category ids sorted ascending. For LVIS (ids ``1..C``) this equals
Detectron2's ``category_id - 1`` in ``load_lvis_json``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..utils.json_io import read_json
from .categories import FREQUENCY_GROUPS, _fmt_ids, _sorted_category_ids, class_counts, frequency_from_image_count

__all__ = [
    "LVISMeta",
    "load_lvis_meta",
    "count_from_annotations",
    "clear_lvis_meta_cache",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)  # arrays: identity equality/hash
class LVISMeta:
    """Per-category metadata of an LVIS-format dataset, indexed by contiguous class index.

    Attributes:
        category_ids: json category ids sorted ascending; index ``i`` <-> ``category_ids[i]``.
        names: category names, same order.
        frequency: [C] array of 'r' / 'c' / 'f'.
        image_count: [C] int64, number of (training) images containing each category.
        instance_count: [C] int64, number of (training) instances of each category.
        source: where it was read from (file path or "<dict>"), for messages.
    """

    category_ids: tuple
    names: tuple
    frequency: np.ndarray
    image_count: np.ndarray
    instance_count: np.ndarray
    source: str = "<dict>"

    def __post_init__(self):
        c = len(self.category_ids)
        for field_name in ("names", "frequency", "image_count", "instance_count"):
            n = len(getattr(self, field_name))
            if n != c:
                raise ValueError(
                    f"LVISMeta({self.source}): {field_name} has {n} entries, expected {c} (one per category)"
                )
        bad = ~np.isin(self.frequency, FREQUENCY_GROUPS)
        if bad.any():
            raise ValueError(
                f"LVISMeta({self.source}): frequency must be one of {FREQUENCY_GROUPS}; "
                f"category ids {_fmt_ids(np.asarray(self.category_ids)[bad])} have "
                f"{sorted(set(np.asarray(self.frequency)[bad].tolist()))}"
            )
        # arrays are shared through the cache: make them read-only
        for arr in (self.frequency, self.image_count, self.instance_count):
            arr.setflags(write=False)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def group_mask(self, group: str) -> np.ndarray:
        """Bool [C] mask of the categories in frequency group ``group`` ('r', 'c' or 'f')."""
        if group not in FREQUENCY_GROUPS:
            raise ValueError(f"unknown frequency group {group!r}; expected one of {FREQUENCY_GROUPS}")
        return self.frequency == group

    def group_indices(self) -> dict:
        """{'r': contiguous indices, 'c': ..., 'f': ...} (int64 arrays, ascending)."""
        return {g: np.nonzero(self.frequency == g)[0].astype(np.int64) for g in FREQUENCY_GROUPS}

    def head_classes(self, min_images: int = 30) -> np.ndarray:
        """Contiguous indices (int64, ascending) of the classes in at least ``min_images`` training images:
        the step-wise method's head classes (its paper: M = 30); the others are its tail."""
        if min_images < 1:
            raise ValueError(f"min_images must be >= 1, got {min_images}")
        return np.flatnonzero(self.image_count >= min_images).astype(np.int64)

    def contiguous_id(self, category_id: int) -> int:
        """Contiguous index of a json category id."""
        ids = np.asarray(self.category_ids)
        i = int(np.searchsorted(ids, category_id))
        if i >= len(ids) or ids[i] != category_id:
            raise KeyError(f"category id {category_id} not in {self.source}")
        return i

    def to_dict(self) -> dict:
        """Json-serialisable form (lists), e.g. for Detectron2 metadata or logging."""
        return {
            "category_ids": list(self.category_ids),
            "names": list(self.names),
            "frequency": self.frequency.tolist(),
            "image_count": self.image_count.tolist(),
            "instance_count": self.instance_count.tolist(),
        }

    def class_image_count(self) -> list:
        """Detectron2's ``class_image_count`` metadata format: [{"id", "image_count"}, ...]."""
        return [{"id": int(i), "image_count": int(n)} for i, n in zip(self.category_ids, self.image_count)]

    def summary(self) -> str:
        parts = []
        for g in FREQUENCY_GROUPS:
            m = self.frequency == g
            parts.append(f"{g}: {int(m.sum())} classes / {int(self.instance_count[m].sum())} instances")
        return f"{self.num_classes} categories ({'; '.join(parts)})"


def count_from_annotations(dataset_dict_json: Mapping[str, Any], *, source: str = "<dict>"):
    """Per-category (image_count, instance_count) from an LVIS-format json's annotations, counted by
    :func:`ltdet2.data.categories.class_counts` once the ids are checked.

    Arrays are aligned with the sorted category ids (contiguous index). Annotations pointing at
    an image id not in ``images`` or a category id not in ``categories`` are an error (listing
    some ids and how many), never silently dropped.

    Returns:
        (image_count, instance_count): two int64 arrays of shape [C].
    """
    d = dataset_dict_json
    for key in ("categories", "annotations", "images"):
        if key not in d:
            raise ValueError(f"{source}: missing '{key}' (needed to count images per category)")
    cat_ids = _sorted_category_ids(d["categories"], source)
    anns = d["annotations"]
    n = len(anns)
    try:
        ann_img = np.fromiter((a["image_id"] for a in anns), dtype=np.int64, count=n)
        ann_cat = np.fromiter((a["category_id"] for a in anns), dtype=np.int64, count=n)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{source}: every annotation needs integer 'image_id' and 'category_id' ({e!r})") from e
    try:
        img_ids = np.unique(np.fromiter((im["id"] for im in d["images"]), dtype=np.int64, count=len(d["images"])))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{source}: every record in 'images' needs an integer 'id' ({e!r})") from e

    bad_img = ~np.isin(ann_img, img_ids)
    if bad_img.any():
        raise ValueError(
            f"{source}: {int(bad_img.sum())} annotations point at unknown image ids "
            f"{_fmt_ids(np.unique(ann_img[bad_img]))}"
        )
    cat_idx = np.searchsorted(cat_ids, ann_cat)
    if len(cat_ids):
        bad_cat = cat_ids[np.minimum(cat_idx, len(cat_ids) - 1)] != ann_cat
    else:
        bad_cat = np.ones(n, dtype=bool)
    if bad_cat.any():
        raise ValueError(
            f"{source}: {int(bad_cat.sum())} annotations point at unknown category ids "
            f"{_fmt_ids(np.unique(ann_cat[bad_cat]))}"
        )
    return class_counts(ann_img, cat_idx, len(cat_ids))


def _build_meta(d: Mapping[str, Any], source: str, recompute_counts: bool, derive_frequency: bool) -> LVISMeta:
    if not isinstance(d, Mapping):
        raise ValueError(f"{source}: expected a json object at top level, got {type(d).__name__}")
    if "categories" not in d:
        raise ValueError(f"{source}: missing 'categories'")
    cats = d["categories"]
    cat_ids = _sorted_category_ids(cats, source)
    by_id = {int(c["id"]): c for c in cats}
    ordered = [by_id[int(i)] for i in cat_ids]

    names = []
    unnamed = []
    for c in ordered:
        name = c.get("name", c.get("synset"))
        if name is None:
            unnamed.append(c["id"])
        names.append(name)
    if unnamed:
        raise ValueError(f"{source}: categories without 'name' (or 'synset'): ids {_fmt_ids(unnamed)}")

    has_counts = all("image_count" in c and "instance_count" in c for c in ordered)
    if recompute_counts and has_counts and not d.get("annotations"):
        # a category table (LVIS test-dev, a cat-info file): no annotation to count, none to disagree
        logger.info("%s has no annotations: its stored image_count / instance_count are used", source)
        recompute_counts = False
    if recompute_counts or not has_counts:
        if not recompute_counts:
            missing = [c["id"] for c in ordered if "image_count" not in c or "instance_count" not in c]
            logger.info(
                "%s: %d categories lack image_count/instance_count; counting from annotations", source, len(missing)
            )
        image_count, instance_count = count_from_annotations(d, source=source)
    else:
        try:
            image_count = np.array([int(c["image_count"]) for c in ordered], dtype=np.int64)
            instance_count = np.array([int(c["instance_count"]) for c in ordered], dtype=np.int64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: non-integer image_count/instance_count in 'categories' ({e!r})") from e

    derived = frequency_from_image_count(image_count)
    if derive_frequency:
        frequency = derived
    else:
        missing = [int(c["id"]) for c in ordered if "frequency" not in c]
        if missing and not recompute_counts:
            raise ValueError(
                f"{source}: categories without 'frequency': ids {_fmt_ids(missing)} "
                f"(pass recompute_counts=True to derive it from image counts)"
            )
        frequency = np.array([c.get("frequency", d_) for c, d_ in zip(ordered, derived)], dtype="<U1")
        bad = [int(c["id"]) for c in ordered if c.get("frequency", "r") not in FREQUENCY_GROUPS]
        if bad:
            raise ValueError(
                f"{source}: 'frequency' must be one of {FREQUENCY_GROUPS}; bad category ids {_fmt_ids(bad)}"
            )
    return LVISMeta(
        category_ids=tuple(int(i) for i in cat_ids),
        names=tuple(str(n) for n in names),
        frequency=frequency,
        image_count=image_count,
        instance_count=instance_count,
        source=source,
    )


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 16


def clear_lvis_meta_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def load_lvis_meta(
    json_file_or_dict: str | os.PathLike | Mapping[str, Any],
    *,
    recompute_counts: bool = False,
    derive_frequency: bool = False,
) -> LVISMeta:
    """Read :class:`LVISMeta` from an LVIS-format json file (or an already loaded dict).

    Args:
        json_file_or_dict: path to the json, or the loaded json dict.
        recompute_counts: count images / instances per category from ``annotations`` instead of
            the categories' ``image_count`` / ``instance_count`` fields (which are also counted
            from annotations when any category lacks them). A category without ``frequency``
            then gets it from its (recomputed) image count instead of raising. A file without
            any annotation (a category table such as LVIS test-dev) keeps its stored counts.
        derive_frequency: ignore the json's ``frequency`` fields and derive every category's
            group from the image counts (LVIS thresholds). Off by default: on LVIS val files the
            ``frequency`` field refers to the *training* set, which is what AP_r/c/f needs.

    Results for paths are cached by (absolute path, mtime, size); arrays are read-only.
    """
    if isinstance(json_file_or_dict, Mapping):
        return _build_meta(json_file_or_dict, "<dict>", recompute_counts, derive_frequency)
    path = os.path.abspath(os.fspath(json_file_or_dict))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LVIS json file not found: {path}")
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size, bool(recompute_counts), bool(derive_frequency))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    meta = _build_meta(read_json(path, what="LVIS json"), path, recompute_counts, derive_frequency)
    with _CACHE_LOCK:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = meta
    logger.debug("Loaded LVIS metadata from %s: %s", path, meta.summary())
    return meta
