"""LOCE's memory warm-up: the official class-balanced image lists per rank, and a warm-up that fills the
memory and the mean score of every class that has training images."""

import math
import os

import numpy as np
import pytest
import torch

from detectron2.config import instantiate

import ltdet2.hooks.memory_warmup as memory_warmup
from ltdet2.engine.phases import load_config
from ltdet2.engine.train_loop import build_model
from ltdet2.hooks.memory_warmup import class_balanced_passes, warm_up_memories, warmup_images

from fixtures.models import ROOT, TINY_LT_SHAPES, loce_tiny_overrides

# 12 images, 5 classes; class 4 in no image, class 3 in one, class 0 in 11; image 5 has none
IMAGE_CLASSES = [[0, 1], [0], [0, 2, 2], [0, 1], [1, 0], [], [0, 3], [0], [2, 0], [0, 1], [0], [0, 0, 1]]


def dicts():
    return [{"annotations": [{"category_id": c} for c in cats]} for cats in IMAGE_CLASSES]


def official_sampler(class_images, num_samples, rank, world_size):
    """LOCE's DistributedBalancedSampler.__iter__, given each class's images in its (shuffled) order."""
    out = []
    total_size = num_samples * world_size
    for images in class_images:
        indices = (images * math.ceil(total_size / len(images)))[:total_size]
        out += indices[rank:total_size:world_size]
    return out


def class_orders(seed):
    """Each class's images in the random order class_balanced_passes draws (same generator use)."""
    from ltdet2.data.class_counts import dataset_dict_pairs

    image_index, classes = dataset_dict_pairs(dicts())
    order = np.lexsort((np.random.default_rng(seed).random(len(classes)), classes))
    return [image_index[order][classes[order] == c].tolist() for c in range(5) if (classes == c).any()]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("images_per_class", [1, 5])
def test_every_rank_gets_the_full_images_per_class(world_size, images_per_class):
    orders = class_orders(seed=4)
    per_rank = []
    for rank in range(world_size):
        selected = class_balanced_passes(dicts(), 5, images_per_class, seed=4, rank=rank, world_size=world_size)
        assert selected.dtype == np.int64
        assert selected.tolist() == official_sampler(orders, images_per_class, rank, world_size)
        per_rank.append(selected)
        # images_per_class entries for each of the 4 classes with images, each holding its class
        assert len(selected) == 4 * images_per_class
        for k, c in enumerate((0, 1, 2, 3)):
            chunk = selected[k * images_per_class : (k + 1) * images_per_class]
            assert all(c in IMAGE_CLASSES[i] for i in chunk)
    # class 0 (11 images): the ranks' images are distinct as long as 11 images suffice
    class0 = np.concatenate([s[:images_per_class] for s in per_rank])
    assert len(set(class0.tolist())) == min(11, images_per_class * world_size)
    # class 3 (one image): every rank runs it images_per_class times
    assert all(s[3 * images_per_class :].tolist() == [6] * images_per_class for s in per_rank)


def test_deduplicated_lists_are_padded_to_the_longest_rank():
    lists = [warmup_images(dicts(), 5, 3, seed=1, rank=r, world_size=2, deduplicate=True) for r in range(2)]
    assert len(lists[0]) == len(lists[1])
    for rank, selected in enumerate(lists):
        unique = np.unique(class_balanced_passes(dicts(), 5, 3, seed=1, rank=rank, world_size=2))
        assert set(selected.tolist()) == set(unique.tolist())
        assert selected[: len(unique)].tolist() == unique.tolist()  # then cyclic repeats
    official = warmup_images(dicts(), 5, 3, seed=1, rank=1, world_size=2)
    assert official.tolist() == class_balanced_passes(dicts(), 5, 3, seed=1, rank=1, world_size=2).tolist()
    assert warmup_images([], 5, 3).shape == (0,)


def test_warm_up_fills_every_class_with_training_images_on_every_rank(tmp_path, tiny_dataset, monkeypatch):
    cfg = load_config(
        os.path.join(ROOT, "projects", "loce.py"),
        [*loce_tiny_overrides(tiny_dataset, str(tmp_path)), "dataloader.train.total_batch_size=8"],
    )
    cfg = cfg.phases.finetune
    cfg.train.seed = 3
    dataset_dicts = instantiate(cfg.dataloader.train.dataset)
    num_classes = TINY_LT_SHAPES.num_classes
    image_count = np.bincount(
        [a["category_id"] for d in dataset_dicts for a in d["annotations"]], minlength=num_classes
    )
    assert (image_count > 0).all()
    for rank in range(2):  # rank `rank` of 2 processes (the comm answers only; nothing is communicated)
        monkeypatch.setattr(memory_warmup.comm, "get_world_size", lambda: 2)
        monkeypatch.setattr(memory_warmup.comm, "get_rank", lambda rank=rank: rank)
        torch.manual_seed(0)
        model = build_model(cfg)
        seen = []
        model.register_forward_pre_hook(lambda m, args, seen=seen: seen.append([d["image_id"] for d in args[0]]))
        warm_up_memories(model, cfg, images_per_class=5)
        assert model.training  # restored
        # this rank ran 5 images per class, in batches of the per-rank batch size (8 / 2)
        expected = class_balanced_passes(dataset_dicts, num_classes, 5, seed=3, rank=rank, world_size=2)
        assert [len(b) for b in seen] == [4] * 10
        assert sum(seen, []) == [dataset_dicts[i]["image_id"] for i in expected]
        # >= 5 images x 16 dense boxes per class: every queue full; every mean score moved from 0.01
        mfs = model.roi_heads.feature_sources[0]
        assert mfs.queue.counts.tolist() == [mfs.queue.capacity] * num_classes
        scores = model.roi_heads.indicators["mean_score"].vector()
        assert (scores[:num_classes] != 0.01).all() and scores[-1].item() == pytest.approx(0.01)
