"""train.trainable (ltdet2.engine.freezing.freeze_all_but): what freezes, BatchNorm statistics, and patterns that
match nothing."""

import logging

import pytest
import torch
from torch import nn

from detectron2.layers import FrozenBatchNorm2d

from ltdet2.engine.freezing import check_frozen_terms, freeze_all_but, training_terms


def small_model():
    torch.manual_seed(0)
    model = nn.Module()
    model.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.roi_heads = nn.Sequential(nn.Linear(4, 2))
    return model


def test_parameters_outside_the_patterns_freeze_and_their_batch_norm_statistics_too():
    model = small_model()
    assert freeze_all_but(model, [r"roi_heads\."]) == (10, 112)  # Linear 4x2 + 2; conv 108 + 4 (BatchNorm: buffers now)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["roi_heads.0.weight", "roi_heads.0.bias"]
    assert isinstance(model.backbone[1], FrozenBatchNorm2d)
    assert freeze_all_but(small_model(), None) == (130, 0)  # with BatchNorm 4 + 4


def test_a_pattern_that_matches_nothing_is_logged_and_patterns_that_all_do_raise(caplog):
    with caplog.at_level(logging.WARNING, logger="ltdet2.engine.freezing"):
        freeze_all_but(small_model(), [r"roi_heads\.", r"roi_heads\.mask_head\."])
    assert "['roi_heads\\\\.mask_head\\\\.'] match no parameter" in caplog.text
    with pytest.raises(ValueError, match=r"no pattern of \['roi_head\\\\.'\] matches .*\['backbone', 'roi_heads'\]"):
        freeze_all_but(small_model(), [r"roi_head\."])  # the typo would have frozen the whole model


def model_with_terms():
    model = small_model()
    model.distillers = nn.ModuleList([nn.Identity(), nn.Linear(4, 4)])  # a parameter-free term, then one with
    model.roi_heads.cls_loss = nn.Linear(4, 1)
    return model


def test_a_loss_or_distillation_term_that_the_trainable_patterns_freeze_entirely_is_refused():
    model = model_with_terms()
    assert [name for name, _ in training_terms(model)] == ["roi_heads.cls_loss", "distillers.0", "distillers.1"]
    freeze_all_but(model, [r"roi_heads\."])  # the LST mistake: the generator under distillers matched nothing
    with pytest.raises(ValueError, match=r"freezes every parameter of the training terms distillers\.1 \(Linear\)"):
        check_frozen_terms(model)
    check_frozen_terms(model, ["distillers.1"])  # frozen on purpose, said explicitly
    with pytest.raises(ValueError, match=r"train.frozen_terms names \['roi_heads.cls_loss'\], which are not frozen"):
        check_frozen_terms(model, ["distillers.1", "roi_heads.cls_loss"])  # it trains: the list would go stale
    model = model_with_terms()
    freeze_all_but(model, [r"roi_heads\.", r"distillers\.1\."])
    check_frozen_terms(model)  # every term with parameters trains
    freeze_all_but(model, [r"distillers\."])
    with pytest.raises(ValueError, match=r"training terms roi_heads.cls_loss \(Linear\)"):
        check_frozen_terms(model)
