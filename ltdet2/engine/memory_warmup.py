"""Filling memories and indicators before a phase trains (LOCE's official code, as an option).

LOCE's official implementation runs a class-balanced pass over the training set before the
fine-tune: a few images per class, no backward, so the feature memory and the mean scores start
from the pretrained model's view instead of empty / 0.01. The paper does not describe it; ltdet2
offers it as ``train.memory_warmup = dict(images_per_class=5)``.
"""
import logging

import numpy as np
import torch

from detectron2.config import instantiate
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from ..data.class_counts import dataset_dict_pairs

logger = logging.getLogger("detectron2")


def class_balanced_images(dataset_dicts, num_classes, images_per_class, seed=0):
    """Indices of up to ``images_per_class`` images per class (drawn without replacement, seeded),
    deduplicated, in dataset order.

    Returns:
        int64 array of positions in ``dataset_dicts``, ascending.
    """
    image_index, classes = dataset_dict_pairs(dataset_dicts)
    # a random rank within each class, then keep ranks < images_per_class
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(classes)), classes))
    sorted_classes = classes[order]
    starts = np.searchsorted(sorted_classes, np.arange(num_classes))
    rank = np.arange(len(order)) - starts[sorted_classes]
    return np.unique(image_index[order[rank < images_per_class]])


@torch.no_grad()
def warm_up_memories(model, cfg, images_per_class=5):
    """One pass of the training forward (sampling, feature sources, indicator updates) without
    backward and with BatchNorm in eval mode, over a class-balanced set of training images."""
    dataset_dicts = instantiate(cfg.dataloader.train.dataset)
    mapper = instantiate(cfg.dataloader.train.mapper)
    num_classes = cfg.model.roi_heads.num_classes
    seed = cfg.train.get("seed", None)
    selected = class_balanced_images(dataset_dicts, num_classes, images_per_class,
                                     seed=seed if seed is not None and seed >= 0 else None)
    # each rank takes its share of every global batch; the list is padded (wrapping around) to whole
    # global batches, so all ranks make the same number of forward calls (global sync collectives)
    world_size, rank = comm.get_world_size(), comm.get_rank()
    total_batch_size = cfg.dataloader.train.total_batch_size
    batch_size = max(total_batch_size // world_size, 1)
    global_batch = batch_size * world_size
    num_padded = -(-len(selected) // global_batch) * global_batch if len(selected) else 0
    selected = np.resize(selected, num_padded)[rank::world_size]
    logger.info(f"Memory warm-up: {len(selected)} images on this rank ({images_per_class} per class), no backward")
    was_training = model.training
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    with EventStorage(0):
        for start in range(0, len(selected), batch_size):
            model([mapper(dataset_dicts[i]) for i in selected[start:start + batch_size]])
    model.train(was_training)
