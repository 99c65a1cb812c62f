"""Reliability at the edges of a run: a checkpoint period of 0, --resume without ``last_checkpoint``, --eval-only
next to a training's evaluation files, scripts/run_fingerprint.py given a folder that holds a run, and the config key
freezing's messages name. Tiny LT-Shapes on CPU (tests/configs/tiny_two_phase.py: 4 iterations, a checkpoint every 2),
seeded."""

import json
import os
import re

import pytest
import torch
from torch import nn

from detectron2.config import get_cfg

from ltdet2.config.yaml_config import add_ltdet2_config
from ltdet2.config.yaml_trainer import LongTailTrainer
from ltdet2.engine.checkpoint import AtomicCheckpointer
from ltdet2.engine.freezing import freeze_all_but
from ltdet2.engine.phases import DONE_FILE, EVAL_ONLY_METRICS_FILE, run_phases
from ltdet2.engine.results import phase_record
from ltdet2.engine.train_loop import do_train

from fixtures.models import ROOT, TEST_DEVICE, TINY_LT_SHAPES, load_repo_module
from fixtures.runs import copy_of_run, load_tiny_run, metrics_iterations

load = load_tiny_run  # `trained` (tests/engine/conftest.py): phase 'pretrain' finished, model_0000001/0000003/final
# every box kept: a model of 4 iterations has detections, so the evaluator writes its files
DETECTIONS = (
    "model.roi_heads.box_predictor.test_score_thresh=0.0",
    "model.roi_heads.box_predictor.test_topk_per_image=5",
)


# --- 1. train.checkpointer.period=0 ---------------------------------------------------------------------------------


def test_a_checkpoint_period_of_0_is_refused_naming_the_key_and_the_phase(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    with pytest.raises(
        ValueError,
        match=r"^phase 'pretrain': train.checkpointer.period=0: the periodic checkpointer saves a checkpoint every "
        r"period iterations, so it must be a whole number >= 1. Set train.checkpointer.period to a period >= 1; to "
        r"save model_final only, set it above train.max_iter \(e.g. 5\)$",
    ):
        run_phases(load(out, tiny_dataset, "train.checkpointer.period=0"), only="pretrain")
    assert not os.path.exists(out / "pretrain" / "model_final.pth")

    # do_train alone (a phase trained without the runner) refuses it too, before building the model
    cfg = load(out, tiny_dataset, "train.checkpointer.period=-2").phases.pretrain
    cfg.train.output_dir = str(out / "alone")
    with pytest.raises(
        ValueError, match=rf"^training in {re.escape(str(out / 'alone'))}: train.checkpointer.period=-2"
    ):
        do_train(cfg)


# --- 2. --resume without last_checkpoint ----------------------------------------------------------------------------


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 2)


def test_a_resume_without_last_checkpoint_takes_the_highest_iteration(tmp_path, messages):
    folder = str(tmp_path / "phase")
    os.makedirs(folder)
    torch.manual_seed(0)
    saved = {}
    for name in ("model_0000199", "model_0000099"):  # the older iteration written last: chosen by name, not time
        model = Toy()
        saved[name] = model.state_dict()["layer.weight"].clone()
        AtomicCheckpointer(model, folder).save(name, iteration=int(name[-7:]))
    os.remove(os.path.join(folder, "last_checkpoint"))

    model = Toy()
    checkpointer = AtomicCheckpointer(model, folder)
    extra = checkpointer.resume_or_load("", resume=True)
    newest = os.path.join(folder, "model_0000199.pth")
    assert checkpointer.resumed_from == newest and extra["iteration"] == 199
    assert torch.equal(model.layer.weight, saved["model_0000199"])
    assert (
        f"{folder} holds checkpoints (model_0000199.pth, model_0000099.pth) but no last_checkpoint: resuming from the "
        f"newest, {newest}"
    ) in messages


def test_a_resume_without_last_checkpoint_continues_from_the_newest_checkpoint(
    trained, tmp_path, tiny_dataset, messages
):
    out = copy_of_run(trained, tmp_path)
    pretrain = os.path.join(out, "pretrain")
    for name in ("model_final.pth", "model_0000003.pth", DONE_FILE, "last_checkpoint"):  # killed after iteration 1
        os.remove(os.path.join(pretrain, name))
    before = metrics_iterations(os.path.join(pretrain, "metrics.json"))
    resumed_from = torch.load(os.path.join(pretrain, "model_0000001.pth"), map_location="cpu", weights_only=False)

    run_phases(load(out, tiny_dataset), only="pretrain", resume=True)

    newest = os.path.join(pretrain, "model_0000001.pth")
    assert (
        f"{pretrain} holds checkpoints (model_0000001.pth) but no last_checkpoint: resuming from the newest, {newest}"
        in (messages)
    )
    assert "Starting training from iteration 2" in messages  # not from iteration 0 over its checkpoints
    assert metrics_iterations(os.path.join(pretrain, "metrics.json")) == before + [2, 3]
    # the checkpoint resumed from was not overwritten
    kept = torch.load(newest, map_location="cpu", weights_only=False)
    assert kept["iteration"] == 1 and all(torch.equal(kept["model"][k], v) for k, v in resumed_from["model"].items())
    final = torch.load(os.path.join(pretrain, "model_final.pth"), map_location="cpu", weights_only=False)
    assert final["iteration"] == 3 and os.path.isfile(os.path.join(pretrain, DONE_FILE))


def test_a_resume_without_last_checkpoint_refuses_an_unreadable_newest_checkpoint(trained, tmp_path, tiny_dataset):
    out = copy_of_run(trained, tmp_path)
    pretrain = os.path.join(out, "pretrain")
    for name in ("model_final.pth", DONE_FILE, "last_checkpoint"):
        os.remove(os.path.join(pretrain, name))
    newest = os.path.join(pretrain, "model_0000003.pth")
    with open(newest, "wb") as f:
        f.write(b"PK\x03\x04 a truncated copy")
    with pytest.raises(
        RuntimeError,
        match=rf"^cannot resume in {re.escape(pretrain)}: there is no {re.escape(pretrain)}/last_checkpoint, and the "
        rf"newest of its checkpoints \(model_0000003.pth, model_0000001.pth\), {re.escape(newest)}, cannot be read "
        r"\(.*\). Remove it to resume from the one before it \(model_0000001.pth\), or write the name of the "
        rf"checkpoint to resume from into {re.escape(pretrain)}/last_checkpoint$",
    ):
        run_phases(load(out, tiny_dataset), only="pretrain", resume=True)
    assert not os.path.exists(os.path.join(pretrain, "model_final.pth"))
    assert torch.load(os.path.join(pretrain, "model_0000001.pth"), weights_only=False)["iteration"] == 1


# --- 3. --eval-only beside the training's evaluation files ---------------------------------------------------------


def test_eval_only_writes_its_evaluator_files_apart_from_the_trainings(trained, tmp_path, tiny_dataset, messages):
    out = copy_of_run(trained, tmp_path)
    pretrain = os.path.join(out, "pretrain")
    # what the training's evaluation wrote (this fixture trained without an evaluator): the phase's record reads it
    training_ap = os.path.join(pretrain, "inference", "per_class_ap_bbox.json")
    os.makedirs(os.path.dirname(training_ap))
    with open(training_ap, "w") as f:
        json.dump([{"id": 1, "name": "circle", "AP": 12.5}], f, indent=2)
    with open(training_ap, "rb") as f:
        training_bytes = f.read()
    with open(os.path.join(pretrain, DONE_FILE)) as f:
        done = json.load(f)
    done["results"] = {"bbox": {"AP": 12.5}}
    with open(os.path.join(pretrain, DONE_FILE), "w") as f:
        json.dump(done, f)

    run_phases(load(out, tiny_dataset, *DETECTIONS, evaluator=True), only="pretrain", eval_only=True)

    with open(training_ap, "rb") as f:
        assert f.read() == training_bytes  # byte-identical
    assert phase_record(os.path.join(pretrain, DONE_FILE))["per_class_ap_bbox"] == [
        {"id": 1, "name": "circle", "AP": 12.5}
    ]
    evaluated = os.path.join(pretrain, "inference_eval_only", "model_final")
    written = sorted(os.listdir(evaluated))
    assert "per_class_ap_bbox.json" in written
    assert sorted(os.listdir(os.path.join(pretrain, "inference"))) == ["per_class_ap_bbox.json"]
    final = os.path.join(pretrain, "model_final.pth")
    assert messages[-1] == (
        f"Evaluation of {final} (phase 'pretrain') done; outputs in {pretrain}: metrics "
        f"{os.path.join(pretrain, EVAL_ONLY_METRICS_FILE)}; evaluation results {evaluated} ({', '.join(written)})"
    )
    with open(os.path.join(pretrain, EVAL_ONLY_METRICS_FILE)) as f:
        (record,) = [json.loads(line) for line in f]
    assert record["checkpoint"] == final and record["iteration"] == 3


# --- 4. scripts/run_fingerprint.py and a folder that holds a run ----------------------------------------------------


def test_run_fingerprint_refuses_a_folder_that_is_not_empty(tmp_path, monkeypatch, capsys):
    script = load_repo_module("scripts/run_fingerprint.py")
    ran = []
    monkeypatch.setattr(script, "run", lambda args: ran.append(args.output_dir))
    folder = tmp_path / "fp"
    (folder / "pretrain").mkdir(parents=True)
    (folder / "pretrain" / "model_final.pth").write_bytes(b"an earlier run")
    (folder / "log.txt").write_text("earlier")
    argv = ["--config-file", "projects/loce.py", "--output-dir", str(folder), "--output", str(tmp_path / "fp.json")]

    with pytest.raises(SystemExit) as exit_:
        script.main(argv)
    assert exit_.value.code == 2 and ran == []
    assert (
        f"--output-dir {folder} is not empty (log.txt, pretrain): the phases that finished there would be skipped and "
        f"their old files fingerprinted instead of a new run's. Give a new or empty folder, or add --overwrite to "
        f"delete its contents first"
    ) in capsys.readouterr().err
    assert (folder / "pretrain" / "model_final.pth").read_bytes() == b"an earlier run"

    assert script.main([*argv, "--overwrite"]) == 0
    assert ran == [str(folder)] and os.listdir(folder) == []
    assert f"--overwrite: deleted the contents of {folder} (log.txt, pretrain)" in capsys.readouterr().out

    assert script.main(argv) == 0  # an empty folder (or a new one) is taken
    with pytest.raises(SystemExit):  # the checkout is never cleared
        script.main(["--config-file", "x", "--output-dir", ROOT, "--output", "y", "--overwrite"])
    assert "--overwrite: refusing to delete the contents of" in capsys.readouterr().err


# --- 5. the key freezing's messages name ----------------------------------------------------------------------------


def test_freezing_messages_name_the_key_the_patterns_come_from(tiny_dataset):
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"^train.trainable: no pattern of \['head\.'\] matches a parameter"):
        freeze_all_but(model, ["head."])

    train_name, val_name = tiny_dataset
    cfg = get_cfg()
    add_ltdet2_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "yaml", "loce_lt_shapes.yaml"))
    cfg.merge_from_list(
        [
            "MODEL.WEIGHTS", "",
            "MODEL.DEVICE", TEST_DEVICE,
            "MODEL.ROI_HEADS.NUM_CLASSES", TINY_LT_SHAPES.num_classes,
            "DATASETS.TRAIN", (train_name,),
            "DATASETS.TEST", (val_name,),
            "MODEL.LTDET2.TRAINABLE", ["roi_heads.box_predcitor."],  # misspelt
        ]
    )  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"^MODEL.LTDET2.TRAINABLE: no pattern of \['roi_heads.box_predcitor.'\] matches a parameter of the "
        r"model, so nothing would train",
    ):
        LongTailTrainer.build_model(cfg)
