"""Step-wise repeat-factor sampling (issue #12, reference §2.4 and §6 test 4)."""

import itertools
import math

import numpy as np
import pytest
import torch

from ltdet2.data.samplers import (
    STEPWISE_HEAD_GROUPS,
    STEPWISE_TAIL_GROUPS,
    StepwiseRepeatFactorSampler,
    stepwise_repeat_factor_sampler,
    stepwise_repeat_factors,
)

# full source dataset's image counts of classes 0..5: frequent, common[30, 100], common < 30, rare, rare, absent
SOURCE_IMAGE_COUNT = [500, 60, 20, 5, 1, 0]


def make_set(seed=0, num_images=2000):
    """A set with classes 0..4 in about 50%, 5%, 1%, 0.1%, 0.05% of the images, 10% of the annotations ignored."""
    rng = np.random.default_rng(seed)
    dicts = []
    for i in range(num_images):
        annotations = [
            {"category_id": c, **({"valid": False} if rng.random() < 0.1 else {})}
            for c in range(5)
            if rng.random() < (0.5, 0.05, 0.01, 0.001, 0.0005)[c]
        ]
        dicts.append({"image_id": i, "annotations": annotations})
    return dicts


def direct_factors(dicts, groups, source_count):
    """Per-class loop: the group of each class by its source count, f_c on the set (valid annotations only),
    r_c = factor or max(1, (t / f_c)^p), r_I = max over the image's classes."""
    n = len(dicts)
    images_of = {}
    for i, d in enumerate(dicts):
        for a in d["annotations"]:
            if a.get("valid", True):
                images_of.setdefault(a["category_id"], set()).add(i)
    r = {}
    for c, images in images_of.items():
        group = next((g for g in sorted(groups, key=lambda g: -g["min_images"]) if source_count[c] >= g["min_images"]),
                     None)  # fmt: skip
        f = len(images) / n
        if group is None:
            r[c] = 1.0
        elif "factor" in group:
            r[c] = group["factor"]
        else:
            r[c] = max(1.0, (group["threshold"] / f) ** group["power"])
    return [max([r[c] for c in images_of if i in images_of[c]], default=1.0) for i in range(n)]


@pytest.mark.parametrize("groups", [STEPWISE_HEAD_GROUPS, STEPWISE_TAIL_GROUPS])
def test_factors_match_a_direct_per_class_loop(groups):
    dicts = make_set()
    got = stepwise_repeat_factors(dicts, groups=groups, group_image_count=SOURCE_IMAGE_COUNT)
    expected = direct_factors(dicts, groups, SOURCE_IMAGE_COUNT)
    assert got.dtype == torch.float64 and np.allclose(got.numpy(), expected, rtol=1e-12)
    assert max(expected) > 1.5  # the set has classes to repeat
    ceil = [math.ceil(x) for x in expected]
    sampler = StepwiseRepeatFactorSampler(got, rounding="ceil", epoch_length="expanded", seed=0)
    assert np.bincount(list(itertools.islice(iter(sampler), sum(ceil))), minlength=len(dicts)).tolist() == ceil


def test_head_classes_get_one_in_d_tail():
    # one image per class: f_c = 1/6 for each; only the tail classes (< 30 source images) can exceed 1
    dicts = [{"annotations": [{"category_id": c}]} for c in range(5)] + [{"annotations": []}]
    tail = stepwise_repeat_factors(dicts * 100, groups=STEPWISE_TAIL_GROUPS, group_image_count=SOURCE_IMAGE_COUNT)
    # f = 1/6: t / f = 0.009 < 1 -> 1 for all; with a rarer set (1 image of 600) the tail classes rise
    assert tail[:6].tolist() == [1.0] * 6
    rare = [{"annotations": [{"category_id": c}]} for c in range(5)] + [{"annotations": []}] * 995
    factors = stepwise_repeat_factors(rare, groups=STEPWISE_TAIL_GROUPS, group_image_count=SOURCE_IMAGE_COUNT)
    assert factors[:5].tolist() == [1.0, 1.0, 1.5, 1.5, 1.5]  # (0.0015 / 0.001)^1 for classes < 30 images
    head = stepwise_repeat_factors(rare, groups=STEPWISE_HEAD_GROUPS, group_image_count=SOURCE_IMAGE_COUNT)
    assert np.allclose(head[:5].numpy(), [1.0, 3**0.3, 3**0.5, 3**0.5, 3**0.5])


def test_ceil_and_stochastic_rounding_epoch_length_and_determinism():
    factors = torch.tensor([1.0, 1.5, 2.2, 1.0])
    ceil = StepwiseRepeatFactorSampler(factors, rounding="ceil", epoch_length="expanded", seed=3)
    epoch = list(itertools.islice(iter(ceil), 8))  # 1 + 2 + 3 + 1 = 7 per epoch, deterministic counts
    assert np.bincount(epoch[:7], minlength=4).tolist() == [1, 2, 3, 1]
    stochastic = StepwiseRepeatFactorSampler(factors, rounding="stochastic", epoch_length="expanded", seed=3)
    counts = np.bincount(list(itertools.islice(iter(stochastic), 6000)), minlength=4) / 6000
    assert np.allclose(counts, np.array([1.0, 1.5, 2.2, 1.0]) / 5.7, atol=0.02)  # the factors in expectation
    # epoch length unchanged: each block of 4 indices is one epoch, drawn from the expanded (ceil) multiset
    cut = list(itertools.islice(iter(StepwiseRepeatFactorSampler(factors, seed=3)), 4000))
    assert np.allclose(np.bincount(cut, minlength=4) / 4000, np.array([1, 2, 3, 1]) / 7, atol=0.03)
    assert list(itertools.islice(iter(StepwiseRepeatFactorSampler(factors, seed=3)), 50)) == cut[:50]
    assert list(itertools.islice(iter(StepwiseRepeatFactorSampler(factors, seed=4)), 50)) != cut[:50]
    with pytest.raises(ValueError, match="rounding must be one of"):
        StepwiseRepeatFactorSampler(factors, rounding="floor", seed=0)


def test_two_ranks_are_disjoint_shards_of_one_stream(monkeypatch):
    from detectron2.data.samplers import distributed_sampler

    factors = torch.tensor([1.0, 2.5, 1.0, 4.0, 1.2])
    single = list(itertools.islice(iter(StepwiseRepeatFactorSampler(factors, seed=7)), 40))
    monkeypatch.setattr(distributed_sampler.comm, "get_world_size", lambda: 2)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed_sampler.comm, "get_rank", lambda rank=rank: rank)
        shards.append(list(itertools.islice(iter(StepwiseRepeatFactorSampler(factors, seed=7)), 20)))
    assert shards[0] == single[0::2] and shards[1] == single[1::2]


def test_factory_takes_counts_from_the_source_dataset(tiny_dataset):
    from detectron2.data import DatasetCatalog

    from ltdet2.data import lvis_meta_from_dataset

    train, _ = tiny_dataset
    dicts = DatasetCatalog.get(train)[::3]  # a subset: f_c on the subset, groups by the full set's counts
    groups = [{"min_images": 30, "factor": 1.0}, {"min_images": 1, "threshold": 0.3, "power": 1.0}]
    sampler = stepwise_repeat_factor_sampler(dicts, groups=groups, image_count_from=train, seed=0)
    expected = direct_factors(dicts, groups, lvis_meta_from_dataset(train).image_count.tolist())
    assert sampler._int_part.tolist() == [math.ceil(x) for x in expected] and max(expected) > 1
