"""Method helpers compose in any order: every helper appends its feature source (ltdet2.config.long_tail:
add_feature_source), so each ordered pair of MFS, RIO's object replay and BACL's FHM gives a model with both sources
that trains; a second source of one type is refused."""

import itertools

import pytest
import torch

from detectron2.config import instantiate

from ltdet2.config import bacl, loce, rio

from fixtures.models import TEST_DEVICE, make_batch, small_model_cfg, train_losses


@pytest.fixture
def helpers():
    return {
        "MemoryFeatureSampler": lambda model: loce.add_mfs(model, capacity=8, num_sampled_classes=2, per_class=2),
        "ObjectReplay": lambda model: rio.add_object_replay(model, targeted_classes=[0, 1, 2], capacity=8, per_class=2),
        "FeatureHallucination": lambda model: bacl.add_fhm(model, num_sampled_classes=2, per_class=2),
    }


PAIRS = list(itertools.permutations(["MemoryFeatureSampler", "ObjectReplay", "FeatureHallucination"], 2))


@pytest.mark.parametrize("first, second", PAIRS, ids=[f"{a}-then-{b}" for a, b in PAIRS])
def test_every_pair_of_feature_sources_composes_in_either_order(helpers, first, second):
    cfg = small_model_cfg()
    helpers[first](cfg)
    helpers[second](cfg)
    assert [s._target_.__name__ for s in cfg.roi_heads.feature_sources] == [first, second]
    torch.manual_seed(0)
    model = instantiate(cfg).to(TEST_DEVICE)
    assert [type(s).__name__ for s in model.roi_heads.feature_sources] == [first, second]
    for seed in (0, 1):  # the second step samples from memories the first one filled
        losses = train_losses(model, make_batch(seed=seed), seed=seed)
        assert losses and all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("name", ["MemoryFeatureSampler", "ObjectReplay", "FeatureHallucination"])
def test_a_second_source_of_one_type_is_refused(helpers, name):
    cfg = small_model_cfg()
    helpers[name](cfg)
    with pytest.raises(ValueError, match=rf"feature_sources already holds a {name}; a model takes one source"):
        helpers[name](cfg)
