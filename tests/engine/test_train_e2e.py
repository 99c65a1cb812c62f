"""End to end on a tiny LT-Shapes on CPU: a two-phase project trains, skips finished phases,
resumes an interrupted one, evaluates, and refuses a phase whose input checkpoint is missing."""

import glob
import logging
import os

import numpy as np
import pytest
import torch

from detectron2.utils.logger import setup_logger

from ltdet2.engine.phases import DONE_FILE, load_config, run_phases
from ltdet2.utils.json_io import read_json

from fixtures.logs import logged_messages
from fixtures.models import ROOT, loce_tiny_overrides
from fixtures.runs import load_tiny_run, metrics_iterations


def load(output_dir, tiny_dataset, *extra):
    return load_tiny_run(output_dir, tiny_dataset, *extra, evaluator=True)  # the tiny two-phase run, evaluated


def tensorboard_scalars(output_dir):
    """{tag: [step, ...]} of the scalars in the one TensorBoard events file in ``output_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events_file] = glob.glob(os.path.join(output_dir, "events.out.tfevents.*"))
    accumulator = EventAccumulator(events_file)
    accumulator.Reload()
    return {tag: [event.step for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_two_phases_train_skip_resume_and_evaluate(tmp_path, tiny_dataset):
    setup_logger(name="detectron2")
    out = str(tmp_path / "run")
    results = run_phases(load(out, tiny_dataset))
    assert list(results) == ["pretrain", "finetune"]
    for name in results:
        bbox = results[name]["bbox"]
        assert {"AP", "AP50", "APr", "APc", "APf"} <= set(bbox)
        assert os.path.isfile(os.path.join(out, name, "model_final.pth"))
        assert os.path.isfile(os.path.join(out, name, DONE_FILE))
        assert os.path.isfile(os.path.join(out, name, "config.yaml"))
        assert os.path.isfile(os.path.join(out, name, "inference", "per_class_ap_bbox.json"))
        done = read_json(os.path.join(out, name, DONE_FILE))
        assert done["train_seconds"] > 0 and done["eval_seconds"] > 0  # the leaderboard's timings
        assert tensorboard_scalars(os.path.join(out, name))["total_loss"] == metrics_iterations(
            os.path.join(out, name, "metrics.json")
        )  # Detectron2's TensorBoard writer, every log period

    # finetune started from pretrain's final weights
    finetune_cfg = load(out, tiny_dataset).phases.finetune
    assert finetune_cfg.optimizer.lr == pytest.approx(0.002)
    with open(os.path.join(out, "finetune", "config.yaml")) as f:
        assert os.path.join(out, "pretrain", "model_final.pth") in f.read()

    # interrupt finetune after its first checkpoint (iteration 1 of 0..3) and resume it
    finetune_dir = os.path.join(out, "finetune")
    final_before = torch.load(os.path.join(finetune_dir, "model_final.pth"), weights_only=False)
    assert final_before["iteration"] == 3
    os.remove(os.path.join(finetune_dir, DONE_FILE))
    os.remove(os.path.join(finetune_dir, "model_final.pth"))
    os.remove(os.path.join(finetune_dir, "metrics.json"))
    with open(os.path.join(finetune_dir, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    pretrain_done_mtime = os.path.getmtime(os.path.join(out, "pretrain", DONE_FILE))

    with logged_messages("detectron2", logging.DEBUG) as messages:
        resumed = run_phases(load(out, tiny_dataset), resume=True)
    assert any("phase 'pretrain' already finished" in m for m in messages)
    assert any("Starting training from iteration 2" in m for m in messages)
    assert os.path.getmtime(os.path.join(out, "pretrain", DONE_FILE)) == pretrain_done_mtime
    assert metrics_iterations(os.path.join(finetune_dir, "metrics.json"))[0] == 2  # continued, not restarted
    final_after = torch.load(os.path.join(finetune_dir, "model_final.pth"), weights_only=False)
    assert final_after["iteration"] == 3
    assert set(resumed) == {"pretrain", "finetune"}

    # evaluation only, of one phase
    evaluated = run_phases(load(out, tiny_dataset), only="pretrain", eval_only=True)
    assert evaluated["pretrain"]["bbox"]["AP"] == pytest.approx(results["pretrain"]["bbox"]["AP"], abs=1e-6)


def test_phase_without_its_input_checkpoint_is_refused(tmp_path, tiny_dataset):
    with pytest.raises(FileNotFoundError, match="phase 'finetune' starts from phase 'pretrain'.*model_final.pth"):
        run_phases(load(str(tmp_path / "run"), tiny_dataset), only="finetune")


def test_unknown_phase_is_refused(tmp_path, tiny_dataset):
    with pytest.raises(ValueError, match="--phase 'nope'"):
        run_phases(load(str(tmp_path / "run"), tiny_dataset), only="nope")


LOCE_PROJECT = os.path.join(ROOT, "projects", "loce.py")


def load_loce(output_dir, tiny_dataset, *extra):
    return load_config(
        LOCE_PROJECT,
        [
            *loce_tiny_overrides(tiny_dataset, output_dir),
            "dataloader.train.total_batch_size=2",
            "train.max_iter=3",
            "train.checkpointer.period=1",
            "train.log_period=1",
            # 3 iterations leave LOCE's pretrain without a detection; this test checks memories, not AP
            "train.allow_empty_eval=True",
            *extra,
        ],
    )


def memory_state(state_dict):
    keys = [k for k in state_dict if ".feature_sources." in k or ".indicators." in k]
    return {k: state_dict[k] for k in keys}


def test_loce_project_runs_and_restores_memory_and_mean_scores_exactly(tmp_path, tiny_dataset):
    from ltdet2.engine.train_loop import do_train

    out = str(tmp_path / "loce")
    overrides = ["phases.finetune.train.hooks.0.images_per_class=2"]  # LOCE's memory warm-up
    results = run_phases(load_loce(out, tiny_dataset, *overrides))
    assert set(results) == {"pretrain", "finetune"}
    finetune_dir = os.path.join(out, "finetune")
    final = torch.load(os.path.join(finetune_dir, "model_final.pth"), weights_only=False)["model"]
    memory = memory_state(final)
    mean_scores = memory["roi_heads.indicators.mean_score.mean_scores"]
    assert (mean_scores[:-1] != 0.01).any() and mean_scores[-1].item() == pytest.approx(0.01)
    assert memory["roi_heads.feature_sources.0.queue.fill_counts"].sum() > 0
    # frozen feature extractor: backbone identical to pretrain's final weights
    pretrain = torch.load(os.path.join(out, "pretrain", "model_final.pth"), weights_only=False)["model"]
    for key in pretrain:
        if key.startswith("backbone.") or key.startswith("roi_heads.box_head."):
            assert torch.equal(pretrain[key], final[key]), key

    # resume from the checkpoint of iteration 1: memories and mean scores come back exactly
    checkpoint = torch.load(os.path.join(finetune_dir, "model_0000001.pth"), weights_only=False)["model"]
    with open(os.path.join(finetune_dir, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    cfg = load_loce(out, tiny_dataset, *overrides, "train.max_iter=2")
    phase_cfg = cfg.phases.finetune
    phase_cfg.train.output_dir = finetune_dir
    resumed = do_train(phase_cfg, resume=True)  # starts at iteration 2 == max_iter: no step taken
    restored = memory_state(resumed.state_dict())
    expected = memory_state(checkpoint)
    assert restored.keys() == expected.keys() and len(expected) >= 5
    for key in expected:
        assert torch.equal(restored[key], expected[key]), key


def test_dataset_guided_ebl_and_mfs_read_instance_counts(tiny_dataset):
    """The paper's dataset-guided ablation: EBL margins and MFS sampling from instance counts."""
    from detectron2.config import LazyConfig, instantiate
    from detectron2.data import MetadataCatalog

    from ltdet2.data import load_lvis_meta

    cfg = LazyConfig.load(os.path.join(ROOT, "tests", "configs", "dataset_guided_loce.py"))
    assert cfg.model.roi_heads.indicators.instance_frequency.meta.dataset_name == tiny_dataset[0]
    model = instantiate(cfg.model)
    frequency = model.roi_heads.indicators["instance_frequency"].vector()
    counts = load_lvis_meta(MetadataCatalog.get(tiny_dataset[0]).json_file).instance_count
    # normalised instance counts, then the raw background count 1 over the same divisor (LOCE supplement)
    expected = np.append(counts, 1.0) / counts.sum()
    assert torch.allclose(frequency, torch.as_tensor(expected, dtype=torch.float32))
    mfs = model.roi_heads.feature_sources[0]
    assert mfs.bound_indicator is model.roi_heads.indicators["instance_frequency"]
    assert model.roi_heads.box_predictor.cls_loss.bound_indicator is mfs.bound_indicator


def poison_predictions(monkeypatch, *, training_from_iter=None, evaluation=False):
    """Makes the box predictor's class scores NaN in training from iteration ``training_from_iter`` on
    and/or in evaluation: a model whose predictions become non-finite. ``evaluation="background"``: finite
    scores in evaluation, every box's background (last) logit far above the others: a model that detects nothing."""
    from detectron2.utils.events import get_event_storage

    from ltdet2.engine import train_loop

    def poison(module, inputs, output):
        if module.training:
            poisoned = training_from_iter is not None and get_event_storage().iter >= training_from_iter
        else:
            poisoned = evaluation
        if poisoned and evaluation == "background" and not module.training:
            scores = torch.zeros_like(output[0])
            scores[:, -1] = 100.0
            return (scores, *output[1:])
        return (output[0] * float("nan"), *output[1:]) if poisoned else output

    build_model = train_loop.build_model

    def build_poisoned_model(cfg):
        model = build_model(cfg)
        model.roi_heads.box_predictor.register_forward_hook(poison)
        return model

    monkeypatch.setattr(train_loop, "build_model", build_poisoned_model)


def test_divergence_stops_the_run_naming_phase_iteration_and_loss_terms(tmp_path, tiny_dataset, monkeypatch):
    poison_predictions(monkeypatch, training_from_iter=1)
    out = str(tmp_path / "run")
    with pytest.raises(
        FloatingPointError,
        match=r"(?s)phase 'pretrain' diverged \(not marked done\): .*"
        r"the loss became infinite or NaN at iteration 1: "
        r"loss_cls=nan, loss_box_reg=[0-9.]+, loss_rpn_cls=",
    ):
        run_phases(load(out, tiny_dataset, "train.max_iter=3"))
    assert not os.path.exists(os.path.join(out, "pretrain", DONE_FILE))
    assert not os.path.exists(os.path.join(out, "finetune"))


def test_empty_evaluation_is_not_marked_done_unless_allowed(tmp_path, tiny_dataset, monkeypatch):
    # every score under the test threshold: no detection (NaN scores are a divergence: test_run_messages.py)
    poison_predictions(monkeypatch, evaluation="background")
    out = str(tmp_path / "run")
    with pytest.raises(
        RuntimeError,
        match=r"phase 'pretrain': the evaluation of .*pretrain/model_final.pth found "
        r"nothing \(every bbox metric is NaN\).*Not marked done; to accept it, "
        r"run again with --resume phases.pretrain.train.allow_empty_eval=True",
    ):
        run_phases(load(out, tiny_dataset, "train.max_iter=1"), only="pretrain")
    assert os.path.isfile(os.path.join(out, "pretrain", "model_final.pth"))
    assert not os.path.exists(os.path.join(out, "pretrain", DONE_FILE))

    results = run_phases(
        load(out, tiny_dataset, "train.max_iter=1", "phases.pretrain.train.allow_empty_eval=True"),
        only="pretrain",
        resume=True,
    )
    assert all(v != v for v in results["pretrain"]["bbox"].values())  # NaN, accepted
    assert os.path.isfile(os.path.join(out, "pretrain", DONE_FILE))


def test_non_finite_weights_are_named():
    from ltdet2.engine.phases import non_finite_parameters

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert non_finite_parameters(model) == []
    with torch.no_grad():
        model[0].bias[1] = float("inf")
    model[1].running_var[0] = float("nan")
    assert non_finite_parameters(model) == ["0.bias", "1.running_var"]
