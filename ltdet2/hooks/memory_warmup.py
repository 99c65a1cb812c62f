"""Filling memories and indicators before a phase trains (LOCE's official code).

LOCE's official implementation runs a class-balanced pass over the training set before the
fine-tune: a few images per class, no backward, so the feature memory and the mean scores start
from the pretrained model's view instead of empty / 0.01. The paper's supplement says the memory
is initialised with 5 randomly selected instances per class; the official code takes 5 images per
class on every GPU (``queue_size // 16``). A phase turns it on with the hook :class:`MemoryWarmup` in its
``train.hooks``: ``L(MemoryWarmup)(images_per_class=5)`` (``ltdet2/config/loce.py:add_memory_warmup``).
"""

import logging

import numpy as np
import torch

from detectron2.config import instantiate
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from ..data.class_counts import dataset_dict_pairs

__all__ = ["MemoryWarmup", "class_balanced_images", "class_balanced_passes", "warm_up_memories", "warmup_images"]

logger = logging.getLogger("detectron2")


class MemoryWarmup(HookBase):
    """LOCE's memory warm-up as a phase hook (``train.hooks``): before the first iteration of a run that does not
    resume, :func:`warm_up_memories` fills the model's memories and indicators (``images_per_class``, ``deduplicate``:
    its arguments). A resumed run gets them back from its checkpoint and is not warmed up again.

    It runs in ``before_train``, after Detectron2's standard hooks' (which draw no random numbers), so the RNG draws
    come in the order of a warm-up run right after the checkpoint is loaded. It reads the engine's ``trainer.cfg``
    (the phase config), ``trainer.model`` and ``trainer.resumed_from`` (:mod:`ltdet2.engine.train_loop`)."""

    def __init__(self, images_per_class=5, deduplicate=False):
        self.images_per_class = images_per_class
        self.deduplicate = deduplicate

    def before_train(self):
        if self.trainer.resumed_from:
            return  # the memories come back from the checkpoint
        warm_up_memories(
            self.trainer.model,
            self.phase_config(),
            images_per_class=self.images_per_class,
            deduplicate=self.deduplicate,
        )

    def phase_config(self):
        """The config :func:`warm_up_memories` reads (the training data, batch, class count, seed): the engine's
        ``trainer.cfg``. A trainer with another kind of config overrides this."""
        return self.trainer.cfg

    def __repr__(self):
        return f"MemoryWarmup(images_per_class={self.images_per_class}, deduplicate={self.deduplicate})"


def class_balanced_passes(dataset_dicts, num_classes, images_per_class, seed=0, rank=0, world_size=1):
    """One rank's warm-up list: for every class that has images, ``images_per_class`` images holding it.

    As the official sampler (``DistributedBalancedSampler``): the images of a class, in a seeded random
    order (the same on every rank), are repeated cyclically to ``images_per_class * world_size``
    entries and rank r takes entries r, r + world_size, ...; so every rank gets the full
    ``images_per_class`` per class (different images on different ranks while the class has enough,
    repeats where it has fewer). Classes come in index order; an image drawn for several classes is
    listed once per class.

    Returns:
        int64 array of positions in ``dataset_dicts``, ``images_per_class`` per class that has images.
    """
    image_index, classes = dataset_dict_pairs(dataset_dicts)
    # pairs grouped by class, in a random order within each class
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(classes)), classes))
    counts = np.bincount(classes, minlength=num_classes)
    starts = np.cumsum(counts) - counts
    present = np.nonzero(counts)[0]
    positions = rank + world_size * np.arange(images_per_class)  # in the cyclic list of every class
    picks = starts[present][:, None] + positions[None, :] % counts[present][:, None]
    return image_index[order[picks.reshape(-1)]].astype(np.int64)


def class_balanced_images(dataset_dicts, num_classes, images_per_class, seed=0):
    """Indices of up to ``images_per_class`` images per class (drawn without replacement, seeded),
    deduplicated, in dataset order: the distinct images of one process's :func:`class_balanced_passes`.

    Returns:
        int64 array of positions in ``dataset_dicts``, ascending.
    """
    return np.unique(class_balanced_passes(dataset_dicts, num_classes, images_per_class, seed=seed))


def warmup_images(dataset_dicts, num_classes, images_per_class, seed=0, rank=0, world_size=1, deduplicate=False):
    """The images rank ``rank`` runs in the warm-up, padded (cyclically) to the longest rank's list, so
    every rank makes the same number of forward calls (``global`` sync updates are collectives).

    ``deduplicate=False`` (official): :func:`class_balanced_passes`; ``True``: each image once per rank.
    """

    def passes(r):
        selected = class_balanced_passes(dataset_dicts, num_classes, images_per_class, seed, r, world_size)
        return np.unique(selected) if deduplicate else selected

    selected = passes(rank)
    longest = max(len(passes(r)) for r in range(world_size)) if deduplicate else len(selected)
    return np.resize(selected, longest) if len(selected) else selected


@torch.no_grad()
def warm_up_memories(model, cfg, images_per_class=5, deduplicate=False):
    """One pass of the training forward (sampling, feature sources, indicator updates) without
    backward and with BatchNorm in eval mode, over class-balanced training images: on every rank
    ``images_per_class`` images per class (:func:`warmup_images`), in batches of the per-rank batch size.

    The image choice is seeded with ``train.seed`` (0 when unset), the same on every rank.
    """
    dataset_dicts = instantiate(cfg.dataloader.train.dataset)
    mapper = instantiate(cfg.dataloader.train.mapper)
    num_classes = cfg.model.roi_heads.num_classes
    seed = cfg.train.get("seed", None)
    seed = seed if seed is not None and seed >= 0 else 0
    world_size, rank = comm.get_world_size(), comm.get_rank()
    selected = warmup_images(
        dataset_dicts,
        num_classes,
        images_per_class,
        seed=seed,
        rank=rank,
        world_size=world_size,
        deduplicate=deduplicate,
    )
    batch_size = max(cfg.dataloader.train.total_batch_size // world_size, 1)
    logger.info(f"Memory warm-up: {len(selected)} images on this rank ({images_per_class} per class), no backward")
    was_training = model.training
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    with EventStorage(0):
        for start in range(0, len(selected), batch_size):
            model([mapper(dataset_dicts[i]) for i in selected[start : start + batch_size]])
    model.train(was_training)
