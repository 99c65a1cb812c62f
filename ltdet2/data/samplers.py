"""Repeat-factor sampling (RFS, LVIS paper appendix B.2) on Detectron2's own sampler.

The factors are computed here, vectorized with numpy over a flat array of unique (image, class)
pairs (:func:`ltdet2.data.class_counts.dataset_dict_pairs`), and handed to
:class:`detectron2.data.samplers.RepeatFactorTrainingSampler`, which already shards the infinite
index stream across ranks with a shared seed and rounds fractional factors stochastically each epoch.

Definitions (``f_c``: fraction of the training images that contain class ``c``):

* class factor  ``r_c = max(1, (t / f_c) ** p)`` with threshold ``t`` (0.001) and power ``p``;
  ``p = 0.5`` is LVIS' square-root rule (used by RIO and Detectron2's default), ``p = 1`` its
  ``sqrt=False`` variant; other powers serve the step-wise method's re-sampling.
* image factor ``r_I = max_{c in I} r_c`` (1 for an image without annotations).

Class indices are Detectron2's contiguous ``category_id`` of the dataset dicts; for LVIS-format
data this is the contiguous index of :class:`ltdet2.data.LVISMeta` (json id order).
"""

from collections.abc import Sequence

import numpy as np
import torch

from .class_counts import dataset_dict_pairs
from .lvis_meta import LVISMeta

__all__ = [
    "class_repeat_factors",
    "image_repeat_factors",
    "repeat_factors_from_dataset_dicts",
    "repeat_factor_sampler",
]


def class_repeat_factors(image_fraction, *, threshold: float = 0.001, power: float = 0.5) -> np.ndarray:
    """``r_c = max(1, (t / f_c) ** p)`` per class.

    Args:
        image_fraction: [C] ``f_c`` in [0, 1]. A class in no image (``f_c = 0``) gets 1: it never
            decides an image's factor.
        threshold: t. power: p (0.5: square root, LVIS / RIO).
    Returns:
        [C] float64 array, all >= 1.
    """
    if threshold <= 0 or power < 0:
        raise ValueError(f"need threshold > 0 and power >= 0, got {threshold}, {power}")
    f = np.asarray(image_fraction, dtype=np.float64)
    factors = np.ones_like(f)
    seen = f > 0
    factors[seen] = np.maximum(1.0, (threshold / f[seen]) ** power)
    return factors


def image_repeat_factors(image_index, class_index, num_images: int, class_factors) -> np.ndarray:
    """``r_I = max_{c in I} r_c`` from flat (image, class) pairs; 1 for images with no pair.

    Returns:
        [num_images] float64 array.
    """
    factors = np.ones(num_images, dtype=np.float64)
    class_factors = np.asarray(class_factors, dtype=np.float64)
    if len(image_index):
        np.maximum.at(factors, np.asarray(image_index), class_factors[np.asarray(class_index)])
    return factors


def repeat_factors_from_dataset_dicts(
    dataset_dicts: Sequence[dict],
    *,
    threshold: float = 0.001,
    power: float = 0.5,
    image_count: None | np.ndarray | Sequence[int] | LVISMeta = None,
    num_images: int | None = None,
) -> torch.Tensor:
    """Per-image repeat factors of a Detectron2 dataset.

    Args:
        dataset_dicts: Detectron2 dataset dicts (list[dict] with ``annotations`` / ``category_id``),
            in the order the sampler indexes them.
        threshold, power: see :func:`class_repeat_factors`.
        image_count: per-class number of training images ([C] array or an :class:`LVISMeta`); by
            default counted from ``dataset_dicts``. Give the LVIS json's counts to use the
            dataset's official frequencies (e.g. when the dicts are a filtered or merged subset).
        num_images: the denominator of ``f_c``; default ``len(dataset_dicts)`` (as Detectron2).
    Returns:
        [len(dataset_dicts)] float32 tensor, what :class:`RepeatFactorTrainingSampler` takes.
    """
    images, classes = dataset_dict_pairs(dataset_dicts)
    num_images = len(dataset_dicts) if num_images is None else int(num_images)
    if num_images <= 0:
        raise ValueError("repeat factors need at least one image")
    if image_count is None:
        counts = np.bincount(classes, minlength=int(classes.max()) + 1 if len(classes) else 0)
    else:
        counts = np.asarray(
            image_count.image_count if isinstance(image_count, LVISMeta) else image_count, dtype=np.float64
        )
        if len(classes) and classes.max() >= len(counts):
            raise ValueError(
                f"dataset dicts hold category_id {int(classes.max())} but image_count has only {len(counts)} classes"
            )
    class_factors = class_repeat_factors(counts / num_images, threshold=threshold, power=power)
    factors = image_repeat_factors(images, classes, len(dataset_dicts), class_factors)
    return torch.as_tensor(factors, dtype=torch.float32)


def repeat_factor_sampler(
    dataset_dicts: Sequence[dict],
    *,
    threshold: float = 0.001,
    power: float = 0.5,
    image_count: None | np.ndarray | Sequence[int] | LVISMeta = None,
    num_images: int | None = None,
    shuffle: bool = True,
    seed: int | None = None,
):
    """Detectron2's :class:`RepeatFactorTrainingSampler` with ltdet2's repeat factors.

    LazyConfig use (the sampler must index the same dicts as the loader's dataset)::

        dataloader.train.sampler = L(repeat_factor_sampler)(dataset_dicts="${..dataset}")

    The interpolation copies the dataset's LazyCall, so the dicts are built a second time for the
    sampler (same names and filters: same order); overrides of ``dataloader.train.dataset`` reach
    both.

    Args:
        dataset_dicts: the dataset dicts (list[dict]).
        threshold, power, image_count, num_images: see :func:`repeat_factors_from_dataset_dicts`.
        shuffle, seed: of :class:`RepeatFactorTrainingSampler` (seed None: a random seed shared by
            all ranks, reproducible under ``train.seed``).
    """
    from detectron2.data.samplers import RepeatFactorTrainingSampler

    factors = repeat_factors_from_dataset_dicts(
        dataset_dicts, threshold=threshold, power=power, image_count=image_count, num_images=num_images
    )
    return RepeatFactorTrainingSampler(factors, shuffle=shuffle, seed=seed)
