"""Runs that used to lose work or report a wrong result (issue #26): a kill during the final save, a class count
unlike the data's, a checkpoint that does not fit the model, and a schedule without iterations. Tiny LT-Shapes on
CPU; the phases have no evaluator (what is checked happens before or after it), except where said."""

import glob
import os

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from detectron2.config import instantiate

from ltdet2.engine import phases as phases_module
from ltdet2.engine.checkpoint import AtomicCheckpointer, CheckpointMismatchError
from ltdet2.engine.phase_checks import check_class_counts
from ltdet2.engine.phases import DONE_FILE, Phase, run_phases

from fixtures.models import TINY_LT_SHAPES, small_model_cfg
from fixtures.runs import copy_of_run, load_tiny_run

load = load_tiny_run  # the tiny two-phase run (fixtures.runs); `trained`: tests/engine/conftest.py


def checkpoint_at(path):
    return torch.load(path, map_location="cpu", weights_only=False)


# --- 1. a kill during the final save ----------------------------------------------------------------------


@pytest.mark.parametrize("left", ["killed_during_the_final_save", "garbage_last_checkpoint"])
def test_a_resume_at_the_end_of_the_schedule_writes_the_final_checkpoint(trained, tmp_path, tiny_dataset, left):
    out = copy_of_run(trained, tmp_path)
    pretrain = os.path.join(out, "pretrain")
    os.remove(os.path.join(pretrain, "model_final.pth"))
    os.remove(os.path.join(pretrain, DONE_FILE))
    with open(os.path.join(pretrain, ".tmp-model_final.pth"), "wb") as f:
        f.write(b"PK\x03\x04 half a checkpoint")  # what the kill left of the final save
    with open(os.path.join(pretrain, "last_checkpoint"), "w") as f:
        f.write("model_0000003.pth" if left == "killed_during_the_final_save" else "\x00garbage")

    results = run_phases(load(out, tiny_dataset), resume=True)  # the next phase was refused: no model_final

    assert list(results) == ["pretrain", "finetune"]
    final = checkpoint_at(os.path.join(pretrain, "model_final.pth"))
    last_periodic = checkpoint_at(os.path.join(pretrain, "model_0000003.pth"))
    assert final["iteration"] == 3 and final["trainer"]["iteration"] == 3
    assert all(torch.equal(final["model"][k], last_periodic["model"][k]) for k in last_periodic["model"])
    assert os.path.isfile(os.path.join(pretrain, DONE_FILE))
    assert os.path.isfile(os.path.join(out, "finetune", "model_final.pth"))
    assert os.path.isfile(os.path.join(out, "finetune", DONE_FILE))


@pytest.mark.parametrize("final", ["missing", "unreadable"])
def test_a_phase_without_a_loadable_final_checkpoint_is_not_marked_done(tmp_path, tiny_dataset, monkeypatch, final):
    out = tmp_path / "run"

    def training_that_left_no_final(cfg, *, resume=False):
        os.makedirs(cfg.train.output_dir, exist_ok=True)
        if final == "unreadable":
            with open(os.path.join(cfg.train.output_dir, "model_final.pth"), "wb") as f:
                f.write(b"not a checkpoint")
        return nn.Linear(1, 1)

    monkeypatch.setattr(phases_module, "do_train", training_that_left_no_final)
    with pytest.raises(RuntimeError, match=r"phase 'pretrain': .*model_final.pth.*not marked done"):
        run_phases(load(out, tiny_dataset), only="pretrain")
    assert not os.path.exists(out / "pretrain" / DONE_FILE)


# --- 3. the class count against the data -------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [20, 3])
def test_a_class_count_unlike_the_datasets_is_refused_before_training(tmp_path, tiny_dataset, num_classes):
    out = tmp_path / "run"
    train_name = tiny_dataset[0]
    with pytest.raises(
        ValueError,
        match=rf"phase 'pretrain': model.roi_heads.num_classes={num_classes} but dataset '{train_name}' "
        rf"\(dataloader.train.dataset.names\) has {TINY_LT_SHAPES.num_classes} classes",
    ):
        run_phases(load(out, tiny_dataset, f"model.roi_heads.num_classes={num_classes}"))
    assert not glob.glob(str(out / "pretrain" / "model_*.pth"))


def test_the_test_dataset_and_the_mask_heads_class_count_are_checked_too(tiny_dataset):
    train_name, val_name = tiny_dataset
    n = TINY_LT_SHAPES.num_classes
    cfg = OmegaConf.create(
        {
            "model": {"roi_heads": {"num_classes": n, "mask_head": {"num_classes": 5}}},
            "dataloader": {"train": {"dataset": {"names": train_name}}, "test": {"dataset": {"names": val_name}}},
        }
    )
    phase = Phase("base", cfg, "unused")
    with pytest.raises(
        ValueError,
        match=rf"phase 'base': model.roi_heads.mask_head.num_classes=5 but dataset '{train_name}' "
        rf"\(dataloader.train.dataset.names\) has {n} classes",
    ):
        check_class_counts(phase)
    cfg.model.roi_heads.mask_head.num_classes = 1  # a class-agnostic mask head
    check_class_counts(phase)
    cfg.model.roi_heads.mask_head.num_classes = "${..num_classes}"
    check_class_counts(phase)
    cfg.dataloader.test.dataset.names = "coco_2017_val"  # Detectron2's COCO: 80 classes (metadata, no file read)
    with pytest.raises(
        ValueError,
        match=rf"model.roi_heads.num_classes={n} but dataset 'coco_2017_val' \(dataloader.test.dataset.names\) "
        r"has 80 classes",
    ):
        check_class_counts(phase)


# --- 4. a checkpoint that does not fit the model -----------------------------------------------------------


def small_model(num_classes, mask=False):
    cfg = small_model_cfg(mask)
    cfg.roi_heads.num_classes = num_classes
    torch.manual_seed(0)
    return instantiate(cfg)


def test_evaluation_refuses_a_checkpoint_of_another_class_count(trained, tmp_path, tiny_dataset):
    cfg = load(trained, tiny_dataset)
    other = instantiate(OmegaConf.merge(cfg.phases.pretrain.model, {"roi_heads": {"num_classes": 3}}))
    path = str(tmp_path / "three_classes.pth")
    torch.save({"model": other.state_dict()}, path)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"three_classes.pth does not fit the model: .*roi_heads.box_predictor.cls_score.weight: \(4, \d+\) in "
        r"the checkpoint, \(9, \d+\) in the model",
    ):
        run_phases(cfg, only="pretrain", eval_only=True, eval_checkpoint=path)


def test_evaluation_refuses_a_faster_rcnn_checkpoint_for_a_mask_rcnn(trained, tmp_path, tiny_dataset):
    cfg = load(trained, tiny_dataset)
    cfg.phases.pretrain.model = small_model_cfg(mask=True)
    cfg.phases.pretrain.model.roi_heads.num_classes = TINY_LT_SHAPES.num_classes
    faster = os.path.join(trained, "pretrain", "model_final.pth")
    with pytest.raises(CheckpointMismatchError, match=r"model_final.pth lacks \d+ parameters of the model.*mask_head"):
        run_phases(cfg, only="pretrain", eval_only=True, eval_checkpoint=faster)


class Toy(nn.Module):
    def __init__(self, num_classes=8):
        super().__init__()
        self.backbone = nn.Linear(3, 4)
        self.head = nn.Linear(4, num_classes)


def test_an_initial_checkpoint_may_lack_entries_but_not_have_other_shapes(tmp_path):
    path = str(tmp_path / "init.pth")
    torch.save({"model": Toy(num_classes=3).state_dict()}, path)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"train.init_checkpoint .*init.pth does not fit the model: 2 entries have another shape "
        r"\(head.weight: \(3, 4\) in the checkpoint, \(8, 4\) in the model; head.bias: .*train.init_reinitialize",
    ):
        AtomicCheckpointer(Toy(), str(tmp_path / "phase")).resume_or_load(path, resume=False)
    # the entries named by train.init_reinitialize are not loaded: they keep the fresh initialisation
    AtomicCheckpointer(Toy(), str(tmp_path / "phase"), reinitialize=[r"head\."]).resume_or_load(path, resume=False)

    backbone_only = str(tmp_path / "backbone.pth")  # as an ImageNet checkpoint: no heads
    torch.save({"model": {k: v for k, v in Toy().state_dict().items() if k.startswith("backbone.")}}, backbone_only)
    AtomicCheckpointer(Toy(), str(tmp_path / "phase")).resume_or_load(backbone_only, resume=False)

    # a resume of a checkpoint saved for another model is refused the same way
    folder = str(tmp_path / "resumed")
    os.makedirs(folder)
    AtomicCheckpointer(Toy(num_classes=3), folder).save("model_0000001")
    with pytest.raises(CheckpointMismatchError, match=r"model_0000001.pth does not fit the model: .*head.weight"):
        AtomicCheckpointer(Toy(), folder).resume_or_load("", resume=True)


# --- 5. a schedule without iterations ----------------------------------------------------------------------


@pytest.mark.parametrize("max_iter", ["-1", "0", "null"])
def test_a_schedule_without_iterations_is_refused(tmp_path, tiny_dataset, max_iter):
    out = tmp_path / "run"
    with pytest.raises(
        ValueError, match=rf"phase 'pretrain': train.max_iter={'None' if max_iter == 'null' else max_iter}"
    ):
        run_phases(load(out, tiny_dataset, f"train.max_iter={max_iter}"), only="pretrain")
    assert not os.path.exists(out / "pretrain" / DONE_FILE)


def test_a_resume_beyond_max_iter_is_refused(trained, tmp_path, tiny_dataset):
    out = copy_of_run(trained, tmp_path)
    os.remove(os.path.join(out, "pretrain", DONE_FILE))
    with pytest.raises(
        ValueError,
        match=r"cannot resume .*pretrain/model_final.pth: it was saved after iteration 3, beyond the end of this "
        r"schedule \(train.max_iter=2\)",
    ):
        run_phases(load(out, tiny_dataset, "train.max_iter=2"), only="pretrain", resume=True)
