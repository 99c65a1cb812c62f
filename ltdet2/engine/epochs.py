"""Schedules in epochs of a phase's own training set (LST trains every phase for 10 epochs of its phase set).

A phase with ``train.epochs = E`` and ``train.max_iter = None`` gets its length when its training datasets are
registered (for a derived phase set: right after it is built), from their entries::

    max_iter = round(E * entries / dataloader.train.total_batch_size)      (at least 1)

An epoch is every entry once; in a phase set with resampled replay draws (entries tagged
:data:`~ltdet2.data.incremental.REPLAY_DRAW_KEY`, LST's official per-epoch replay) it is the untagged entries and
one draw, the epoch of :class:`~ltdet2.data.samplers.ReplayDrawSampler`. The length is logged and written into
the phase's config before it trains (its ``config.yaml`` records it), so a learning-rate schedule that reads
``train.max_iter`` (:func:`warmup_multi_step`, ``max_iter="${..train.max_iter}"``) follows it.
"""

import logging
import math

import numpy as np
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.data import DatasetCatalog
from detectron2.solver import WarmupParamScheduler

from ..data.incremental import REPLAY_DRAW_KEY
from .train_loop import check_dataset_names

__all__ = ["epoch_entries", "resolve_epoch_schedule", "warmup_multi_step"]

logger = logging.getLogger("detectron2")


def warmup_multi_step(*, max_iter, step_fractions, warmup_iters=0, warmup_factor=0.001):
    """Linear warm-up over ``warmup_iters`` iterations, then the learning rate x0.1 at each of
    ``step_fractions`` of ``max_iter`` (e.g. (0.6,): a step after 6 of 10 epochs; steps that fall on iteration 0,
    on the end or on another step, in a schedule of a few iterations, are left out). LazyConfig use with a length
    that is known only when the phase's set is built: ``max_iter="${..train.max_iter}"``."""
    if max_iter is None or int(max_iter) < 1:
        raise ValueError(
            f"warmup_multi_step: max_iter={max_iter!r}; a phase with train.epochs gets its train.max_iter when its "
            "training set is registered (ltdet2.engine.epochs.resolve_epoch_schedule)"
        )
    max_iter = int(max_iter)
    fractions = [float(f) for f in step_fractions]
    if any(not 0 < f < 1 for f in fractions) or fractions != sorted(fractions):
        raise ValueError(f"warmup_multi_step: step_fractions={list(step_fractions)} must increase within (0, 1)")
    # a schedule too short to hold every step (a few iterations, in tests) keeps the steps that fit, once each
    milestones = sorted({m for m in (int(max_iter * f) for f in fractions) if 0 < m < max_iter})
    return WarmupParamScheduler(
        MultiStepParamScheduler(
            values=[0.1**k for k in range(len(milestones) + 1)], milestones=milestones, num_updates=max_iter
        ),
        warmup_factor=warmup_factor,
        warmup_length=min(warmup_iters, max_iter) / max_iter,
        warmup_method="linear",
    )


def epoch_entries(dataset_dicts) -> int:
    """Entries of one epoch: all of them, or, with resampled replay draws, the untagged ones and one draw (the
    largest, so the epoch is not short)."""
    draws = np.fromiter((d.get(REPLAY_DRAW_KEY, -1) for d in dataset_dicts), np.int64, len(dataset_dicts))
    tagged = draws[draws >= 0]
    if len(tagged) == 0:
        return len(draws)
    return int((draws < 0).sum() + np.bincount(tagged).max())


def _dataset_names(names):
    return [names] if isinstance(names, str) else list(names)


def resolve_epoch_schedule(cfg, where="the phase"):
    """Sets ``cfg.train.max_iter`` of a phase with ``train.epochs`` from its training datasets (registered
    already); returns it (None for a phase without ``train.epochs``)."""
    epochs = cfg.train.get("epochs", None)
    if epochs is None:
        return None
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not math.isfinite(epochs) or epochs <= 0:
        raise ValueError(f"{where}: train.epochs={epochs!r} must be a positive number")
    if cfg.train.get("max_iter", None) is not None:
        raise ValueError(
            f"{where}: train.epochs={epochs} and train.max_iter={cfg.train.max_iter} both set the length; set "
            "train.max_iter=None to count it in epochs of the training set, or train.epochs=None"
        )
    check_dataset_names(cfg, where, ("dataloader.train.dataset.names",))  # a misspelt name, with the closest ones
    names = _dataset_names(cfg.dataloader.train.dataset.names)
    entries = sum(epoch_entries(DatasetCatalog.get(name)) for name in names)
    batch_size = int(cfg.dataloader.train.total_batch_size)
    max_iter = max(1, int(round(epochs * entries / batch_size)))
    logger.info(
        f"{where}: {epochs} epochs of {entries} entries ({', '.join(names)}) at batch {batch_size}: "
        f"train.max_iter = {max_iter}"
    )
    cfg.train.max_iter = max_iter
    return max_iter
