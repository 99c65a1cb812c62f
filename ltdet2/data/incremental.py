"""Class-incremental phases of LST (issue #13; reference §2.1-2.2): the class split, balanced replay and the
phase datasets.

* :func:`incremental_class_order` / :func:`incremental_class_phases`: classes sorted by training instance count
  (descending; ties by json category id ascending), a base phase of the top ``base`` classes, then ``num_phases``
  near-equal bins (``np.array_split`` sizes).
* :func:`replay_counts`: images replayed per old class, ``ceil(n_C / n_k)`` (paper) or ``round`` with a minimum of
  1 (official code).
* :class:`IncrementalPhaseBuilder`: a derived-dataset builder (the phase runner's protocol) writing phase t's
  training json (entries: new-class images + balanced replay) and its val json.

Ids in the phase datasets: the categories are the classes seen so far, renumbered in the sorted order (json
category id = rank + 1, ``"source_id"`` = the dataset's own id), so a class keeps its contiguous index
(rank) in every phase: old classes are a prefix, new classes append, Detectron2's background stays last (K_t).
"""

import logging

import numpy as np

from .lvis_meta import LVISMeta, _fmt_ids

__all__ = [
    "incremental_class_order",
    "incremental_class_phases",
    "replay_counts",
    "REPLAY_MODES",
    "NEW_IMAGE_MODES",
]

logger = logging.getLogger(__name__)

REPLAY_MODES = ("ceil", "round")
NEW_IMAGE_MODES = ("new_classes", "entry_class")


def _meta(meta) -> LVISMeta:
    if isinstance(meta, str):
        from .lvis_meta import lvis_meta_from_dataset

        return lvis_meta_from_dataset(meta)
    return meta


def incremental_class_order(meta) -> np.ndarray:
    """[C] json category ids by training instance count, descending; ties by json id, ascending.

    Args:
        meta: an :class:`~ltdet2.data.LVISMeta` (its ``instance_count``) or a registered dataset's name.
    """
    meta = _meta(meta)
    ids = np.asarray(meta.category_ids, dtype=np.int64)
    return ids[np.lexsort((ids, -np.asarray(meta.instance_count, dtype=np.int64)))]


def incremental_class_phases(meta, *, base: int, num_phases: int) -> list:
    """The classes of each phase: json category ids (int64 arrays, in the sorted order of
    :func:`incremental_class_order`); phase 0 = the top ``base`` classes, then ``num_phases`` bins of the rest
    with ``np.array_split`` sizes (the first ``r`` bins one larger). LVIS v0.5, ``base=270, num_phases=6``:
    270 + 6 x 160 (paper). ``num_phases=0``: one phase of the top ``base`` classes.

    Raises:
        ValueError: ``base < 1``, ``base`` above the number of classes, ``num_phases < 0``, or more phases than
            classes left after the base (an empty phase).
    """
    order = incremental_class_order(meta)
    num_classes = len(order)
    base, num_phases = int(base), int(num_phases)
    if base < 1 or base > num_classes:
        raise ValueError(f"base must be in [1, {num_classes}] (the dataset's number of classes), got {base}")
    if num_phases < 0:
        raise ValueError(f"num_phases must be >= 0, got {num_phases}")
    rest = num_classes - base
    if num_phases > rest:
        raise ValueError(
            f"more phases than classes: {num_phases} incremental phases for the {rest} classes left after the "
            f"{base} base classes ({num_classes} classes in all); every phase needs at least one class"
        )
    return [order[:base]] + (np.array_split(order[base:], num_phases) if num_phases else [])


def replay_counts(old_instance_count, old_image_count, new_instance_count, *, mode: str = "ceil") -> np.ndarray:
    """Images replayed per old class (LST's instance-level balanced replay, paper Sec. 3.3).

    With ``n_k = old_instance_count[k] / old_image_count[k]`` (instances of class k per image containing it) and
    ``n_C = mean(new_instance_count)`` (instances per new class): ``ceil(n_C / n_k)`` (``mode="ceil"``, paper) or
    ``round(n_C / n_k)`` with halves to even as Python's ``round`` (``mode="round"``, official
    ``balanced_replay.ipynb``); both at least 1. Computed on integers (no floating-point edge at whole ratios).

    Args:
        old_instance_count, old_image_count: [K_old] ints, each old class's training instances and images.
        new_instance_count: [N] ints (N >= 1), each new class's training instances.
    Returns:
        [K_old] int64.
    Raises:
        ValueError: an unknown mode, no new class, different lengths, an old class without an image or an
            instance (naming its positions).
    """
    if mode not in REPLAY_MODES:
        raise ValueError(f"replay mode must be one of {REPLAY_MODES}, got {mode!r}")
    instances = np.asarray(old_instance_count, dtype=np.int64).reshape(-1)
    images = np.asarray(old_image_count, dtype=np.int64).reshape(-1)
    new = np.asarray(new_instance_count, dtype=np.int64).reshape(-1)
    if instances.shape != images.shape:
        raise ValueError(f"{instances.size} old instance counts but {images.size} old image counts")
    if not new.size:
        raise ValueError("replay counts need at least one new class")
    empty = (images < 1) | (instances < 1)
    if empty.any():
        raise ValueError(f"old classes at positions {_fmt_ids(np.flatnonzero(empty))} have no training image to replay")
    # n_C / n_k = (sum_new / N) / (instances / images) = sum_new * images / (N * instances)
    numerator = int(new.sum()) * images
    denominator = len(new) * instances
    quotient, remainder = np.divmod(numerator, denominator)
    if mode == "ceil":
        count = quotient + (remainder > 0)
    else:
        twice = 2 * remainder
        count = quotient + ((twice > denominator) | ((twice == denominator) & (quotient % 2 == 1)))
    return np.maximum(count, 1).astype(np.int64)
