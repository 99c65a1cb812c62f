"""Phase lengths in epochs of the phase's own set (ltdet2.engine.epochs; LST trains every phase 10 epochs, step-wise
its head expert 1 and its transfer 2), the LVIS LST and step-wise projects' schedules and LST's COCO initialisation,
and train.init_reinitialize (a COCO-shaped checkpoint's class-specific heads start fresh)."""

import copy
import os

import pytest
import torch
from omegaconf import OmegaConf

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog

from ltdet2.config import lst as lst_configs
from ltdet2.config.schedules import set_phase_length
from ltdet2.config.stepwise_detr import stepwise_detr_phases
from ltdet2.data.incremental import REPLAY_DRAW_KEY
from ltdet2.engine.checkpoint import AtomicCheckpointer
from ltdet2.engine.derived import derived_dataset_builders, prepare_derived_datasets
from ltdet2.engine.epochs import epoch_entries, resolve_epoch_schedule, warmup_multi_step
from ltdet2.engine.phases import load_config, resolve_phases

from fixtures.models import ROOT


def phase_cfg(names, *, epochs, max_iter=None, batch_size=8):
    cfg = OmegaConf.create(
        {
            "train": {"epochs": epochs, "max_iter": max_iter},
            "dataloader": {"train": {"dataset": {"names": names}, "total_batch_size": batch_size}},
        }
    )
    cfg.lr_multiplier = L(warmup_multi_step)(max_iter="${..train.max_iter}", step_fractions=(0.6, 0.8), warmup_iters=5)
    return cfg


def steps(scheduler, max_iter):
    """The iterations where the multiplier drops by 10x."""
    values = [scheduler(i / max_iter) for i in range(max_iter)]
    return [i for i in range(1, max_iter) if values[i] < 0.5 * values[i - 1]]


@pytest.fixture
def registered():
    names = []

    def register(name, dicts):
        DatasetCatalog.register(name, lambda: dicts)
        names.append(name)
        return name

    yield register
    for name in names:
        DatasetCatalog.remove(name)


def test_an_epoch_is_every_entry_or_with_replay_draws_the_untagged_ones_and_one_draw():
    assert epoch_entries([{}] * 7) == 7
    tagged = [{}] * 5 + [{REPLAY_DRAW_KEY: 0}] * 3 + [{REPLAY_DRAW_KEY: 1}] * 4
    assert epoch_entries(tagged) == 5 + 4


def test_max_iter_is_epochs_times_entries_over_the_batch_and_the_schedule_follows(registered):
    first = registered("epochs_test_a", [{"image_id": i} for i in range(37)])
    second = registered("epochs_test_b", [{"image_id": i} for i in range(3)])
    cfg = phase_cfg([first, second], epochs=10)
    assert resolve_epoch_schedule(cfg, "phase 'x'") == 50  # 10 x 40 / 8
    assert cfg.train.max_iter == 50
    scheduler = instantiate(cfg.lr_multiplier)
    assert steps(scheduler, 50) == [30, 40]  # after 6 and 8 of 10 epochs
    assert scheduler(35 / 50) == pytest.approx(0.1) and scheduler(45 / 50) == pytest.approx(0.01)
    assert scheduler(0.0) == pytest.approx(0.001)  # the warm-up's start
    assert resolve_epoch_schedule(phase_cfg(first, epochs=0.1), "p") == 1  # at least one iteration
    for short in (1, 2, 3):  # too short for both steps: those that fit, once each
        scheduler = warmup_multi_step(max_iter=short, step_fractions=(0.6, 0.8))
        assert steps(scheduler, short) == {1: [], 2: [1], 3: [1, 2]}[short]
    assert resolve_epoch_schedule(OmegaConf.create({"train": {"max_iter": 9}}), "p") is None  # not in epochs


def test_a_length_in_both_units_or_a_bad_epoch_count_is_refused(registered):
    name = registered("epochs_test_c", [{}] * 8)
    with pytest.raises(ValueError, match=r"phase 'x': train.epochs=10 and train.max_iter=100 both set the length"):
        resolve_epoch_schedule(phase_cfg(name, epochs=10, max_iter=100), "phase 'x'")
    with pytest.raises(ValueError, match=r"train.epochs=-1 must be a positive number"):
        resolve_epoch_schedule(phase_cfg(name, epochs=-1), "phase 'x'")
    with pytest.raises(ValueError, match=r"max_iter=None; a phase with train.epochs gets its train.max_iter"):
        instantiate(phase_cfg(name, epochs=10).lr_multiplier)


@pytest.mark.parametrize("name", ["lst_lvis_v0_5.py", "lst_lvis_v1.py"])
def test_lvis_lst_phases_run_ten_epochs_of_their_sets_at_800_from_coco(name):
    phases = resolve_phases(load_config(os.path.join(ROOT, "projects", name), ["train.device=cpu"]))
    for index, phase in enumerate(phases):
        cfg = phase.cfg
        assert cfg.train.epochs == 10 and cfg.train.max_iter is None
        assert cfg.dataloader.train.total_batch_size == 8
        resize = cfg.dataloader.train.mapper.augmentations[0]
        assert resize.short_edge_length == 800 and resize.max_size == 1333
        cfg = copy.deepcopy(cfg)
        cfg.train.max_iter = 10000  # what resolve_epoch_schedule writes once the set is built
        scheduler = instantiate(cfg.lr_multiplier)
        if index == 0:
            assert cfg.optimizer.lr == 0.01 and steps(scheduler, 10000) == [6000, 8000]
            assert cfg.train.init_checkpoint == lst_configs.COCO_MASK_RCNN
            assert cfg.train.init_checkpoint.startswith("detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x/")
            assert list(cfg.train.init_reinitialize) == [r"roi_heads\.box_predictor\."]
        else:
            assert cfg.optimizer.lr == 0.002 and steps(scheduler, 10000) == [6000]
            assert cfg.train.init_checkpoint == "" and list(cfg.train.init_reinitialize) == []


@pytest.mark.parametrize(
    "name", ["stepwise_lvis_v0_5.py", "stepwise_lvis_v1.py", "stepwise_detr_lvis_v0_5.py", "stepwise_detr_lvis_v1.py"]
)
def test_lvis_stepwise_phases_run_one_and_two_epochs_of_their_sets(name):
    phases = {p.name: p.cfg for p in resolve_phases(load_config(os.path.join(ROOT, "projects", name)))}
    assert phases["pretrain"].train.epochs is None and phases["pretrain"].train.max_iter > 0
    warmup = 0 if "detr" in name else 100  # DETR trains without warm-up
    for phase, epochs, expected_steps in (("head_expert", 1, []), ("transfer", 2, [5000])):
        cfg = copy.deepcopy(phases[phase])
        assert cfg.train.epochs == epochs and cfg.train.max_iter is None
        cfg.train.max_iter = 10000  # what resolve_epoch_schedule writes once the set is built
        scheduler = instantiate(cfg.lr_multiplier)
        assert steps(scheduler, 10000) == expected_steps  # transfer: x0.1 after the first of its two epochs
        assert scheduler(warmup / 10000) == pytest.approx(1.0) and (warmup == 0 or scheduler(0.0) < 0.01)
    assert phases["head_expert"].optimizer.lr == pytest.approx(0.1 * phases["pretrain"].optimizer.lr)


def test_the_stepwise_detr_control_needs_lengths_in_iterations():
    with pytest.raises(ValueError, match=r"the control trains head_iters \+ transfer_iters iterations"):
        stepwise_detr_phases(
            None,
            None,
            None,
            None,
            None,
            source="s",
            checkpoint_period=10,
            head_epochs=1,
            transfer_epochs=2,
            control=True,
        )
    with pytest.raises(ValueError, match=r"head_expert: give a phase's length either in iterations or in epochs"):
        set_phase_length({"train": OmegaConf.create({})}, iters=10, epochs=1, where="head_expert")


def test_imagenet_is_the_named_alternative_init():
    train = OmegaConf.create({"init_checkpoint": "", "init_reinitialize": []})
    lst_configs.use_lst_lvis_init(train, "imagenet")
    assert train.init_checkpoint == "detectron2://ImageNetPretrained/MSRA/R-50.pkl" and not train.init_reinitialize
    with pytest.raises(ValueError, match=r"init='coco80' must be one of \('coco', 'imagenet'\)"):
        lst_configs.use_lst_lvis_init(train, "coco80")


def test_every_lst_phase_built_on_tiny_data_is_as_long_as_its_epochs(tiny_dataset, tmp_path):
    """The rule on real phase sets: LST phases (tiny LT-Shapes, base 4 classes then 2 phases of 2) built by the
    runner's own step, each phase's length from its built set."""
    config = LazyConfig.load(os.path.join(ROOT, "tests", "configs", "tiny_lst.py"))
    config.train.max_iter, config.train.epochs = None, 3
    base_schedule = L(warmup_multi_step)(max_iter="${..train.max_iter}", step_fractions=(0.5,))
    phases_cfg = lst_configs.lst_phases(
        config.phases.base.model,
        config.phases.base.dataloader,
        config.phases.base.optimizer,
        base_schedule,
        config.train,
        num_classes=8,
        source=tiny_dataset[0],
        source_val=tiny_dataset[1],
        base=4,
        num_phases=2,
        incremental_iters=None,
        incremental_epochs=2,
        incremental_schedule=lambda max_iter: L(warmup_multi_step)(max_iter=max_iter, step_fractions=(0.6,)),
        incremental_lr=0.004,
        name_prefix="epochs_tiny_lst",
    )
    project = OmegaConf.create({"train": {"output_dir": str(tmp_path)}})
    project.phases = phases_cfg
    phases = resolve_phases(project)
    lengths = {}
    for phase in phases:
        prepare_derived_datasets(phase, phases, derived_dataset_builders(phase.cfg))
        entries = len(DatasetCatalog.get(phase.cfg.dataloader.train.dataset.names))
        lengths[phase.name] = (entries, resolve_epoch_schedule(phase.cfg, phase.name))
        assert phase.cfg.train.max_iter == lengths[phase.name][1]
        instantiate(phase.cfg.lr_multiplier)  # the schedule builds from the computed length
    assert list(lengths) == ["base", "incremental_1", "incremental_2"]
    for name, (entries, max_iter) in lengths.items():
        epochs = 3 if name == "base" else 2
        assert entries > 0 and max_iter == round(epochs * entries / 4)  # tiny_lst's batch: 4
    assert len({entries for entries, _ in lengths.values()}) == 3  # three sets, three lengths


def mask_rcnn(num_classes, lst=False):
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "models", "mask_rcnn_r18_fpn_small.py")).model
    if lst:
        return lst_configs.use_lst_model(cfg, num_classes=num_classes, agnostic_mlp_dim=16)
    cfg.roi_heads.num_classes = num_classes
    return cfg


def test_a_coco_shaped_checkpoint_loads_into_the_base_phase_with_its_box_predictor_reinitialised(tmp_path):
    torch.manual_seed(0)
    coco = instantiate(mask_rcnn(80)).state_dict()  # 81-class heads, as Detectron2's COCO models
    path = str(tmp_path / "coco.pth")
    torch.save({"model": coco}, path)
    torch.manual_seed(1)
    fresh = instantiate(mask_rcnn(30, lst=True))
    initial = {k: v.clone() for k, v in fresh.state_dict().items()}
    AtomicCheckpointer(fresh, reinitialize=lst_configs.COCO_REINITIALIZE).resume_or_load(path, resume=False)
    loaded = fresh.state_dict()
    predictor = [k for k in loaded if k.startswith("roi_heads.box_predictor.")]
    assert predictor and all(torch.equal(loaded[k], initial[k]) for k in predictor)  # fresh, for 30 classes
    shared = [k for k in loaded if k in coco and not k.startswith("roi_heads.box_predictor.")]
    assert any(k.startswith("roi_heads.box_head.") for k in shared)
    assert any(k.startswith("roi_heads.mask_head.mask_fcn") for k in shared)
    assert all(torch.equal(loaded[k], coco[k]) for k in shared)  # backbone, RPN, box FCs, mask convolutions
    with pytest.raises(ValueError, match=r"patterns \['roi_heads\\\\.box_predictr\\\\.'\] match no entry"):
        AtomicCheckpointer(fresh, reinitialize=[r"roi_heads\.box_predictr\."]).resume_or_load(path, resume=False)
