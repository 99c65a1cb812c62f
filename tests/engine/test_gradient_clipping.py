"""ltdet2.config.optim.add_gradient_clipping / ltdet2.solver: Detectron2's SOLVER.CLIP_GRADIENTS for LazyConfig
optimizers: per-parameter clipping by value or norm before each step, the optimizer's state dict unchanged."""

import os

import pytest
import torch
from omegaconf import DictConfig

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate

from ltdet2.config.optim import add_gradient_clipping
from ltdet2.solver import gradient_clipping_optimizer


def two_parameters():
    first = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    second = torch.nn.Parameter(torch.tensor([[0.5, -0.5], [0.0, 1.0]]))
    first.grad = torch.tensor([5.0, -0.5, -3.0])
    second.grad = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    return first, second


def sgd_cfg(params, **clipping):
    cfg = L(torch.optim.SGD)(params=params, lr=0.1, momentum=0.0)
    return add_gradient_clipping(cfg, **clipping)


def test_each_gradient_is_clipped_by_value_before_the_step():
    first, second = two_parameters()
    optimizer = instantiate(sgd_cfg([first, second]))  # Detectron2's defaults: by value at 1.0
    assert isinstance(optimizer, torch.optim.SGD)
    optimizer.step()
    torch.testing.assert_close(first.detach(), torch.tensor([1.0, 2.0, 3.0]) - 0.1 * torch.tensor([1.0, -0.5, -1.0]))
    torch.testing.assert_close(second.detach(), torch.tensor([[0.4, -0.5], [0.0, 0.9]]))


def test_each_gradient_is_clipped_to_its_own_norm():
    first, second = two_parameters()
    optimizer = instantiate(sgd_cfg([first, second], clip_type="norm", clip_value=2.5))
    optimizer.step()
    # norms 5.85 and 5.0, each scaled to 2.5 on its own (not the global norm of both)
    first_grad = torch.tensor([5.0, -0.5, -3.0])
    expected_first = torch.tensor([1.0, 2.0, 3.0]) - 0.1 * first_grad * (2.5 / (first_grad.norm() + 1e-6))
    torch.testing.assert_close(first.detach(), expected_first)
    torch.testing.assert_close(second.detach(), torch.tensor([[0.5 - 0.1 * 1.5, -0.5], [0.0, 1.0 - 0.1 * 2.0]]))


def test_the_state_dict_is_the_plain_optimizers_and_the_config_saves_as_yaml(tmp_path):
    first, second = two_parameters()
    cfg = L(torch.optim.SGD)(params=[first, second], lr=0.1, momentum=0.9)
    clipped = instantiate(add_gradient_clipping(cfg.copy()))
    clipped.step()
    plain = torch.optim.SGD([first, second], lr=0.1, momentum=0.9)
    plain.load_state_dict(clipped.state_dict())  # a checkpoint of either loads into the other
    torch.testing.assert_close(plain.state[first]["momentum_buffer"], torch.tensor([1.0, -0.5, -1.0]))

    saved = L(torch.optim.SGD)(params=None, lr=0.1)
    add_gradient_clipping(saved, clip_value=0.5)
    path = str(tmp_path / "config.yaml")
    LazyConfig.save(DictConfig({"optimizer": saved}, flags={"allow_objects": True}), path)
    loaded = LazyConfig.load(path).optimizer
    assert loaded._target_ == "ltdet2.solver.gradient_clipping_optimizer"
    assert (loaded.optimizer_class, loaded.clip_type, loaded.clip_value) == ("torch.optim.sgd.SGD", "value", 0.5)
    assert not os.path.exists(path + ".pkl")  # plain YAML, no pickle
    assert gradient_clipping_optimizer.__module__ == "ltdet2.solver"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=r"clip_type must be one of 'value', 'norm', got 'global'"):
        sgd_cfg([], clip_type="global")
    with pytest.raises(ValueError, match="clip_value must be positive, got 0"):
        sgd_cfg([], clip_value=0)
    with pytest.raises(ValueError, match="clips its gradients already"):
        add_gradient_clipping(sgd_cfg([]))
