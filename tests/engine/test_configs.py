"""Every file in configs/ and projects/ loads, and its model / optimizer / schedule instantiate; a
project's root holds `train` and `phases` only, and a one-phase project is a plain config."""

import ast
import glob
import os

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError

from detectron2.config import LazyConfig, instantiate
from detectron2.model_zoo import get_config

from ltdet2.data.lt_shapes import LTShapesSpec
from ltdet2.engine.freezing import check_frozen_terms, freeze_all_but
from ltdet2.engine.phases import load_config, resolve_phases
from ltdet2.engine.project_config import PHASE_KEYS, PROJECT_ROOT_KEYS
from ltdet2.modeling.meta_arch import DeformableDETR

from fixtures.models import ROOT

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
        if isinstance(model, DeformableDETR):
            # sigmoid scores: C columns (no background) on every decoder layer and the encoder's proposals
            assert {head.out_features for head in model.detr.class_embed} == {model.num_classes}
        else:
            # the classifier gives C+1 columns (background last) for the model's class count
            predictor = model.roi_heads.box_predictor
            features = torch.zeros(2, predictor.bbox_pred.in_features)
            num_logits = getattr(predictor, "num_logits", model.roi_heads.num_classes + 1)
            assert predictor.cls_score(features).shape == (2, num_logits)
    if "optimizer" in cfg and model is not None:
        cfg.optimizer.params.model = model
        optimizer = instantiate(cfg.optimizer)
        assert isinstance(optimizer, torch.optim.Optimizer)
    if "lr_multiplier" in cfg:
        if cfg.get("train", {}).get("epochs", None) is not None and cfg.train.max_iter is None:
            cfg.train.max_iter = 1000  # a length in epochs: the runner sets max_iter once the set is built
        scheduler = instantiate(cfg.lr_multiplier)
        assert 0 < scheduler(0.0) <= 1.0 and 0 < scheduler(0.999) <= 1.0
    if "dataloader" in cfg:
        assert {"train", "test", "evaluator"} <= set(cfg.dataloader.keys())
    return model


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_instantiates(path):
    if path.endswith("federated_loss_lvis_v1.py"):  # its model reads lvis_v1_train's json: test_lvis_projects.py
        pytest.skip("building the federated loss's class weights reads the LVIS v1 training json")
    cfg = LazyConfig.load(path)
    with open(path) as f:
        body = ast.parse(f.read()).body
    defines_functions = any(isinstance(node, ast.FunctionDef) for node in body)
    # configs/<method>.py: the helpers of ltdet2.config.<method>, imported for the LazyConfig files that import them
    imports_helpers = any(isinstance(n, ast.ImportFrom) and (n.module or "").startswith("ltdet2.config.") for n in body)
    assert len(cfg) > 0 or defines_functions or imports_helpers, f"{path} defines neither config keys nor helpers"
    if os.path.relpath(path, ROOT).startswith("configs" + os.sep):
        assert not defines_functions, (
            f"{path}: config helpers belong in ltdet2.config (importable outside the checkout)"
        )
    _instantiate_namespace(cfg)


MULTI_PHASE_PROJECTS = [
    "bacl.py",
    "bacl_ablation.py",
    "bacl_lvis_v0_5.py",
    "bacl_lvis_v1.py",
    "bacl_lvis_v1_mask.py",
    "crt_lvis_v1.py",
    "leaderboard.py",
    "leaderboard_quick.py",
    "leaderboard_v2.py",
    "leaderboard_v2_quick.py",
    "loce.py",
    "loce_ablation.py",
    "loce_lvis_v1.py",
    "lst.py",
    "lst_ablation.py",
    "lst_lvis_v0_5.py",
    "lst_lvis_v1.py",
    "rio_ablation.py",
    "stepwise.py",
    "stepwise_ablation.py",
    "stepwise_detr.py",
    "stepwise_detr_ablation.py",
    "stepwise_detr_lvis_v0_5.py",
    "stepwise_detr_lvis_v1.py",
    "stepwise_lvis_v0_5.py",
    "stepwise_lvis_v1.py",
]
ONE_PHASE_PROJECTS = [
    "baseline.py",
    "baseline_lvis_v1.py",
    "deformable_detr.py",
    "deformable_detr_lvis_v1.py",
    "eqlv2.py",
    "eqlv2_lvis_v1.py",
    "federated_loss.py",
    "federated_loss_lvis_v1.py",
    "rio.py",
    "rio_lvis_v0_5.py",
    "rio_lvis_v1.py",
    "seesaw.py",
    "seesaw_lvis_v1.py",
]


def test_every_project_is_listed_once():
    assert sorted(MULTI_PHASE_PROJECTS + ONE_PHASE_PROJECTS) == [os.path.basename(p) for p in PROJECT_FILES]


@pytest.mark.parametrize("name", MULTI_PHASE_PROJECTS)
def test_project_phases_are_complete(name):
    cfg = load_config(os.path.join(ROOT, "projects", name))
    assert sorted(cfg.keys()) == sorted(PROJECT_ROOT_KEYS) and len(cfg.phases) >= 2
    phases = resolve_phases(cfg)
    for phase in phases:
        assert set(PHASE_KEYS) <= set(phase.cfg.keys())
        assert phase.output_dir == os.path.join(cfg.train.output_dir, phase.name)
    _instantiate_namespace(phases[-1].cfg)


@pytest.mark.parametrize("path", PROJECT_FILES, ids=os.path.basename)
def test_every_phase_config_saves_as_readable_yaml(path, tmp_path):
    """Each phase's config.yaml (Detectron2's LazyConfig.save, as the runner writes it) is YAML that loads back,
    not the cloudpickle file Detectron2 falls back to for a value YAML cannot hold (a torch.dtype, a lambda)."""
    phases = resolve_phases(load_config(path))
    for phase in phases:
        saved = tmp_path / f"{phase.name or 'config'}.yaml"
        LazyConfig.save(phase.cfg, str(saved))
        assert saved.is_file() and not os.path.exists(f"{saved}.pkl"), phase.name
        loaded = LazyConfig.load(str(saved))  # the callables as their dotted names
        assert sorted(loaded.keys()) == sorted(phase.cfg.keys()), phase.name
        assert loaded.train.max_iter == phase.cfg.train.max_iter and loaded.model.keys() == phase.cfg.model.keys()


@pytest.mark.parametrize("name", MULTI_PHASE_PROJECTS)
def test_detectron2_script_refuses_a_multi_phase_project(name):
    """Detectron2's tools/lazyconfig_train_net.py loads the file, applies overrides and instantiates
    ``cfg.model`` first: with no phase's pieces at the root it stops there, naming the missing key."""
    cfg = LazyConfig.apply_overrides(LazyConfig.load(os.path.join(ROOT, "projects", name)), ["train.max_iter=7"])
    with pytest.raises(ConfigAttributeError, match="Missing key model"):
        instantiate(cfg.model)


@pytest.mark.parametrize("name", ONE_PHASE_PROJECTS)
def test_one_phase_project_is_a_plain_config(name):
    """What Detectron2's script reads is at the root; ltdet2's runner trains it in train.output_dir."""
    cfg = load_config(os.path.join(ROOT, "projects", name), ["train.output_dir=some/dir"])
    assert "phases" not in cfg and set(PHASE_KEYS) <= set(cfg.keys())
    [phase] = resolve_phases(cfg)
    assert phase.name == "" and phase.output_dir == "some/dir" and phase.cfg is cfg


def test_overrides_reach_every_phase_and_one_phase():
    cfg = load_config(
        os.path.join(ROOT, "projects", "loce.py"),
        ["phases.pretrain.train.log_period=3", "train.max_iter=7", "train.log_period=5"],
    )
    assert cfg.train.max_iter == 7
    assert cfg.phases.pretrain.train.max_iter == cfg.phases.finetune.train.max_iter == 7
    assert cfg.phases.pretrain.train.log_period == 3  # the phase's own override wins
    assert cfg.phases.finetune.train.log_period == 5
    assert cfg.train.log_period == 5

    cfg = load_config(os.path.join(ROOT, "projects", "baseline.py"), ["train.max_iter=7"])
    assert cfg.train.max_iter == 7
    with pytest.raises(ValueError, match="baseline.py has no phases.*phases.baseline.train.max_iter=7"):
        load_config(os.path.join(ROOT, "projects", "baseline.py"), ["phases.baseline.train.max_iter=7"])


def test_project_root_holds_only_train_and_phases(tmp_path):
    config = tmp_path / "unpacked.py"
    config.write_text(
        f"from ltdet2.engine import make_phase\n"
        f"from detectron2.config import LazyConfig\n"
        f"base = LazyConfig.load({os.path.join(ROOT, 'projects', 'baseline.py')!r})\n"
        f"train = base.train\n"
        f"phases = dict(only=make_phase(base))\n"
        f"model = phases['only']['model']\n"
    )
    with pytest.raises(
        ValueError,
        match=r"unpacked.py: a project with phases holds only 'train' and 'phases' at "
        r"its root, but it also has \['base', 'model'\]",
    ):
        load_config(str(config))


def test_lt_shapes_class_count_is_set_once_by_the_lt_shapes_defaults():
    detectron2_default = get_config("common/models/mask_rcnn_fpn.py").model.roi_heads.num_classes
    for name in ("mask_rcnn_r18_fpn_small.py", "faster_rcnn_r18_fpn_small.py", "mask_rcnn_r50_fpn.py"):
        model = LazyConfig.load(os.path.join(ROOT, "configs", "models", name)).model
        assert model.roi_heads.num_classes == detectron2_default, name  # the data's defaults set it
    defaults = LazyConfig.load(os.path.join(ROOT, "configs", "lt_shapes_defaults.py"))
    assert defaults.model.roi_heads.num_classes == LTShapesSpec().num_classes == 72


def test_method_pieces_hold_their_sizes_and_datasets_and_resolve_anywhere():
    """The method pieces copy the class count, feature sizes and training dataset when added: a phase
    resolves the same nested anywhere (no interpolation reaches outside the piece)."""
    loce = load_config(os.path.join(ROOT, "projects", "loce.py")).phases.finetune
    roi_heads = loce.model.roi_heads
    assert roi_heads.indicators.mean_score.num_classes == 72
    assert roi_heads.feature_sources[0].num_classes == 72
    assert list(roi_heads.feature_sources[0].feature_shape) == [128, 7, 7]
    rio = load_config(os.path.join(ROOT, "projects", "rio_ablation.py")).phases.rio
    roi_heads = rio.model.roi_heads
    assert roi_heads.box_predictor.classifier.num_classes == roi_heads.feature_sources[0].num_classes == 72
    assert roi_heads.box_predictor.classifier.input_dim == roi_heads.feature_sources[0].feature_dim == 256
    assert roi_heads.feature_sources[0].dataset_name == "lt_shapes_train"
    assert rio.dataloader.train.sampler.dataset_dicts == rio.dataloader.train.dataset
    for phase in (loce, rio):
        for key in ("model", "dataloader"):
            in_place = OmegaConf.to_container(phase[key], resolve=True)
            elsewhere = OmegaConf.create({"outer": {key: phase[key]}}, flags={"allow_objects": True}).outer[key]
            assert OmegaConf.to_container(elsewhere, resolve=True) == in_place, key


def test_class_count_override_that_misses_the_method_pieces_is_refused():
    with pytest.raises(
        ValueError,
        match=r"loce.py, phase 'finetune': model.roi_heads.indicators.mean_score"
        r".num_classes is 72 but model.roi_heads.num_classes is 8",
    ):
        load_config(os.path.join(ROOT, "projects", "loce.py"), ["model.roi_heads.num_classes=8"])
    cfg = load_config(
        os.path.join(ROOT, "projects", "loce.py"),
        [
            "model.roi_heads.num_classes=8",
            "phases.finetune.model.roi_heads.indicators.mean_score.num_classes=8",
            "phases.finetune.model.roi_heads.feature_sources.0.num_classes=8",
        ],
    )
    assert cfg.phases.finetune.model.roi_heads.num_classes == 8


def test_init_from_phase_names_an_earlier_phase_or_none():
    from ltdet2.engine.phase_graph import chain_checkpoints

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


LOCE = os.path.join(ROOT, "projects", "loce.py")


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "train.max_itr=5",
            r"'train.max_itr=5'.*has no key 'train.max_itr'; did you mean train.max_iter\? "
            r"\(to add a new key, write \+train.max_itr=5\)",
        ),
        ("trian.max_iter=5", r"has no key 'trian.max_iter'; did you mean train.max_iter\?"),
        ("model.roi_heads.num_clases=5", r"did you mean model.roi_heads.num_classes"),
        (
            "phases.finetune.train.max_itr=5",
            r"phase 'finetune' of .*loce.py has no key 'train.max_itr'; did you mean "
            r"train.max_iter",
        ),
        (
            "phases.finetun.train.max_iter=5",
            r"loce.py has no phase 'finetun'; did you mean 'phases.finetune'\? "
            r"\(its phases: \['pretrain', 'finetune'\]\)",
        ),
        ("+train.max_iter=5", r"'train.max_iter' already exists .*drop the '\+'"),
    ],
)
def test_mistyped_override_is_refused_with_the_closest_names(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(LOCE, [override])


def test_mistyped_override_of_a_plain_config_is_refused():
    with pytest.raises(ValueError, match=r"baseline.py has no key 'train.max_itr'; did you mean train.max_iter"):
        load_config(os.path.join(ROOT, "projects", "baseline.py"), ["train.max_itr=5"])


def test_plus_adds_a_key_and_overrides_change_only_the_phases_holding_the_key():
    cfg = load_config(
        LOCE,
        [
            "+train.new_key=5",
            "++train.max_iter=9",
            "+phases.pretrain.train.other=1",
            "model.roi_heads.indicators.mean_score.num_classes=8",
            "phases.finetune.model.roi_heads.feature_sources.0.num_classes=8",
            "model.roi_heads.num_classes=8",
            "dataloader.train.num_workers=0",
        ],
    )
    assert cfg.train.new_key == cfg.phases.pretrain.train.new_key == cfg.phases.finetune.train.new_key == 5
    assert cfg.train.max_iter == cfg.phases.pretrain.train.max_iter == cfg.phases.finetune.train.max_iter == 9
    assert cfg.phases.pretrain.train.other == 1 and "other" not in cfg.phases.finetune.train
    assert cfg.phases.finetune.model.roi_heads.indicators.mean_score.num_classes == 8
    assert "indicators" not in cfg.phases.pretrain.model.roi_heads  # only the fine-tune has indicators
    assert sorted(cfg.keys()) == sorted(PROJECT_ROOT_KEYS)  # nothing but train reaches the root


@pytest.mark.parametrize("name", [n for n in MULTI_PHASE_PROJECTS + ONE_PHASE_PROJECTS if "lvis" not in n])
def test_every_phase_trains_each_of_its_loss_and_distillation_terms(name):
    """The guard of issue 25 on every LT-Shapes phase: no term with parameters is frozen whole by the phase's
    train.trainable (LST's generator under model.distillers was, and never trained)."""
    cfg = load_config(os.path.join(ROOT, "projects", name), ["train.device=cpu"])
    phase_cfgs = [p.cfg for p in resolve_phases(cfg)] if "phases" in cfg else [cfg]
    for phase_cfg in phase_cfgs:
        model = instantiate(phase_cfg.model)
        freeze_all_but(model, phase_cfg.train.get("trainable", None))
        check_frozen_terms(model, phase_cfg.train.get("frozen_terms", None) or ())
