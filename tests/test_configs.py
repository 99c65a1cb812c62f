"""Every file in configs/ and projects/ loads, and its model / optimizer / schedule instantiate."""
import ast
import glob
import os

import pytest
import torch

from detectron2.config import LazyConfig, instantiate

from ltdet2.engine.phases import PHASE_KEYS, load_config, resolve_phases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(
    glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
    + glob.glob(os.path.join(ROOT, "projects", "*.py"))
)
PROJECT_FILES = sorted(glob.glob(os.path.join(ROOT, "projects", "*.py")))


def _instantiate_namespace(cfg):
    """Instantiates the parts that need no dataset on disk; returns the model if there is one."""
    model = None
    if "model" in cfg:
        model = instantiate(cfg.model)
        assert isinstance(model, torch.nn.Module)
        assert sum(p.numel() for p in model.parameters()) > 0
    if "optimizer" in cfg and model is not None:
        cfg.optimizer.params.model = model
        optimizer = instantiate(cfg.optimizer)
        assert isinstance(optimizer, torch.optim.Optimizer)
    if "lr_multiplier" in cfg:
        scheduler = instantiate(cfg.lr_multiplier)
        assert 0 < scheduler(0.0) <= 1.0 and 0 < scheduler(0.999) <= 1.0
    if "dataloader" in cfg:
        assert {"train", "test", "evaluator"} <= set(cfg.dataloader.keys())
    return model


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_instantiates(path):
    cfg = LazyConfig.load(path)
    with open(path) as f:
        defines_functions = any(isinstance(node, ast.FunctionDef) for node in ast.parse(f.read()).body)
    assert len(cfg) > 0 or defines_functions, f"{path} defines neither config keys nor helper functions"
    _instantiate_namespace(cfg)


@pytest.mark.parametrize("path", PROJECT_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_project_phases_are_complete(path):
    cfg = load_config(path)
    assert "phases" in cfg and len(cfg.phases) >= 1
    phases = resolve_phases(cfg)
    for phase in phases:
        assert set(PHASE_KEYS) <= set(phase.cfg.keys())
        assert phase.output_dir == os.path.join(cfg.train.output_dir, phase.name)
    _instantiate_namespace(phases[-1].cfg)


def test_overrides_reach_every_phase_and_one_phase():
    cfg = load_config(
        os.path.join(ROOT, "projects", "baseline.py"),
        ["phases.baseline.train.log_period=3", "train.max_iter=7", "train.log_period=5"],
    )
    assert cfg.train.max_iter == 7
    assert cfg.phases.baseline.train.max_iter == 7
    assert cfg.phases.baseline.train.log_period == 3  # the phase's own override wins
    assert cfg.train.log_period == 5


def test_init_from_phase_names_an_earlier_phase_or_none():
    from ltdet2.engine.phases import chain_checkpoints

    cfg = load_config(os.path.join(ROOT, "projects", "loce_ablation.py"))
    cfg.phases.finetune_ebl.train.init_from_phase = ""  # independent: keeps its own init_checkpoint
    cfg.phases.finetune_ebl.train.init_checkpoint = "some/weights.pth"
    phases = resolve_phases(cfg)
    chain_checkpoints(phases)
    by_name = {p.name: p for p in phases}
    assert by_name["finetune_ebl"].cfg.train.init_checkpoint == "some/weights.pth"
    assert by_name["finetune_mfs"].cfg.train.init_checkpoint == by_name["pretrain"].final_checkpoint

    cfg.phases.finetune_ce.train.init_from_phase = "finetune_loce"  # a later phase
    with pytest.raises(ValueError, match="finetune_ce.*not an earlier phase"):
        chain_checkpoints(resolve_phases(cfg))
