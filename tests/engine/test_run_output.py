"""What a run shows (issue #28): the final evaluation's metrics in metrics.json and TensorBoard at the last iteration
(also for a run resumed at the end of its schedule), --eval-only's own metrics file, the line that ends every run
naming its outputs, `make demo` in a folder where it finished, and the leaderboard's --quick writing under output/.
Tiny LT-Shapes on CPU (4 iterations)."""

import copy
import glob
import json
import math
import os
import shutil
import subprocess

import pytest
import torch
from omegaconf import OmegaConf

from detectron2.config import LazyCall as L
from detectron2.engine import HookBase
from detectron2.utils.events import EventStorage, JSONWriter

from ltdet2.engine import phases as phases_module
from ltdet2.engine import train_loop
from ltdet2.engine.phases import DONE_FILE, EVAL_ONLY_METRICS_FILE, run_phases
from ltdet2.engine.project_config import PHASE_KEYS
from ltdet2.engine.train_loop import do_train, final_evaluation, put_evaluation_metrics, training_finished
from ltdet2.utils.json_io import read_json

from fixtures.models import ROOT, load_repo_module
from fixtures.runs import copy_of_run, load_tiny_run

MAX_ITER = 4  # tests/configs/tiny_two_phase.py, log_period 1
# every box kept: a model of 4 iterations has detections, so the evaluation finds something
EVALUATION_FILES = "instances_predictions.pth, lvis_instances_results.json, per_class_ap_bbox.json"  # LTLVISEvaluator's
DETECTIONS = (
    "model.roi_heads.box_predictor.test_score_thresh=0.0",
    "model.roi_heads.box_predictor.test_topk_per_image=5",
)


def single_phase(output_dir, tiny_dataset, *extra, evaluator=True):
    """Phase 'pretrain' of the tiny project as a plain one-phase config in ``output_dir``."""
    project = load_tiny_run(output_dir, tiny_dataset, *DETECTIONS, *extra, evaluator=evaluator)
    cfg = OmegaConf.create({}, flags={"allow_objects": True})
    for key in PHASE_KEYS:
        cfg[key] = copy.deepcopy(project.phases.pretrain[key])
    cfg.train.output_dir = str(output_dir)
    return cfg


def records(path):
    """metrics.json's records, read as strict JSON (NaN or Infinity refused)."""

    def refuse(constant):
        raise ValueError(f"{path} holds {constant}: not strict JSON")

    with open(path) as f:
        return [json.loads(line, parse_constant=refuse) for line in f if line.strip()]


def flat(results):
    return {f"{task}/{name}": value for task, metrics in results.items() for name, value in metrics.items()}


def tensorboard_scalars(output_dir):
    """{tag: [(step, value)]} over the TensorBoard event files in ``output_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for path in sorted(glob.glob(os.path.join(output_dir, "events.out.tfevents.*"))):
        accumulator = EventAccumulator(path)
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return scalars


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_dataset):
    """A one-phase run that finished (trained and evaluated), and its results; tests copy it before changing it."""
    out = str(tmp_path_factory.mktemp("finished") / "run")
    results = run_phases(single_phase(out, tiny_dataset))
    return out, results[""]


# --- 1. the final evaluation's metrics in metrics.json and TensorBoard ------------------------------------------------


def test_final_metrics_share_the_last_iterations_record_in_metrics_json_and_tensorboard(finished):
    out, results = finished
    assert read_json(os.path.join(out, DONE_FILE))["results"] == json.loads(json.dumps(results))
    logged = records(os.path.join(out, "metrics.json"))
    assert [r["iteration"] for r in logged] == list(range(MAX_ITER))  # one record per iteration, none added
    last = logged[-1]
    assert "total_loss" in last and "lr" in last  # the last iteration's training scalars ...
    metrics = flat(results)
    finite = {k: v for k, v in metrics.items() if math.isfinite(v)}
    assert {"bbox/AP", "bbox/AP50", "bbox/APr", "bbox/APc"} <= set(finite)
    assert {k: last[k] for k in finite} == finite  # ... and the evaluation's, exactly
    assert "bbox/APf" in set(metrics) - set(finite)  # NaN: the tiny set has no frequent class ...
    assert not (set(metrics) - set(finite)) & set(last)  # ... left out
    assert not any(k.startswith("bbox/") for r in logged[:-1] for k in r)  # no evaluation metric elsewhere

    scalars = tensorboard_scalars(out)
    assert [step for step, _ in scalars["total_loss"]] == [r["iteration"] for r in logged]
    for name, value in finite.items():
        ((step, logged_value),) = scalars[name]
        assert step == MAX_ITER - 1 and logged_value == pytest.approx(value, rel=1e-6)


def test_non_finite_metrics_are_left_out_and_metrics_json_stays_strict(tmp_path):
    path = str(tmp_path / "metrics.json")
    writer = JSONWriter(path)
    with EventStorage(0) as storage:
        storage.put_scalar("total_loss", 1.5)
        left_out = put_evaluation_metrics(
            storage, {"bbox": {"AP": 12.5, "APr": float("nan"), "APc": float("inf")}, "segm": {"AP": 3.0}}, 0
        )
        writer.write()
    writer.close()
    assert left_out == ["bbox/APr", "bbox/APc"]
    assert records(path) == [{"iteration": 0, "total_loss": 1.5, "bbox/AP": 12.5, "segm/AP": 3.0}]
    with pytest.raises(ValueError, match=r"bbox/AP='n/a'"):
        put_evaluation_metrics(EventStorage(0), {"bbox": {"AP": "n/a"}}, 0)


def test_a_run_resumed_at_the_end_trains_nothing_and_appends_its_final_metrics(
    finished, tiny_dataset, tmp_path, messages
):
    out = copy_of_run(finished[0], tmp_path)
    final = os.path.join(out, "model_final.pth")
    before = torch.load(final, weights_only=False)
    logged = records(os.path.join(out, "metrics.json"))

    results = run_phases(single_phase(out, tiny_dataset), resume=True)[""]  # last_checkpoint: model_final
    assert f"Starting training from iteration {MAX_ITER}" in messages  # no step
    after = torch.load(final, weights_only=False)
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    again = records(os.path.join(out, "metrics.json"))
    assert again[: len(logged)] == logged  # the training's records as they were
    (appended,) = again[len(logged) :]  # one record: the final evaluation's, at the last iteration
    finite = {k: v for k, v in flat(results).items() if math.isfinite(v)}
    assert appended == {"iteration": MAX_ITER - 1, **finite}
    assert flat(results) == pytest.approx(flat(finished[1]), nan_ok=True)  # the same model, the same metrics


class FailsAfterTraining(HookBase):
    def after_train(self):
        raise RuntimeError("a phase hook failed after training")


def test_the_last_iteration_is_written_when_a_phase_hook_fails_after_training(tiny_dataset, tmp_path):
    cfg = single_phase(str(tmp_path / "run"), tiny_dataset, "train.max_iter=2", evaluator=False)
    cfg.train.hooks = [L(FailsAfterTraining)()]
    with pytest.raises(RuntimeError, match="a phase hook failed after training"):
        with final_evaluation() as evaluation:
            do_train(cfg)
    assert not evaluation.ran  # the hook failed before it
    assert [r["iteration"] for r in records(str(tmp_path / "run" / "metrics.json"))] == [0, 1]


class ShiftsTheModelAfterTraining(HookBase):
    """A phase hook that changes the model in its after_train (as LST's write of generated classifier rows)."""

    def after_train(self):
        if training_finished(self.trainer):
            with torch.no_grad():
                next(self.trainer.model.parameters()).add_(1000.0)


def test_the_final_evaluation_sees_the_model_after_the_phase_hooks_and_periodic_ones_write_at_their_iteration(
    tiny_dataset, tmp_path, monkeypatch
):
    def probe(cfg, model):  # stands for the evaluation: the value of a weight, and a metric without a value
        return {"probe": {"weight": float(next(model.parameters()).flatten()[0]), "undefined": float("nan")}}

    monkeypatch.setattr(train_loop, "do_test", probe)
    cfg = single_phase(str(tmp_path / "run"), tiny_dataset, "train.max_iter=3", "train.eval_period=1")
    cfg.train.hooks = [L(ShiftsTheModelAfterTraining)()]
    with final_evaluation() as evaluation:
        model = do_train(cfg)
    weight = float(next(model.parameters()).flatten()[0])
    assert evaluation.ran and evaluation.results["probe"]["weight"] == weight  # after the hook's shift
    logged = records(str(tmp_path / "run" / "metrics.json"))
    assert [r["iteration"] for r in logged] == [0, 1, 2]
    periodic = [r["probe/weight"] for r in logged[:2]]  # train.eval_period=1: after iterations 0 and 1
    assert all(abs(w - weight) > 500 for w in periodic)  # before the shift
    assert logged[2]["probe/weight"] == pytest.approx(weight) and not any("probe/undefined" in r for r in logged)


# --- 1 (--eval-only) and 2: eval-only's metrics file, the line that ends every run ------------------------------


def test_eval_only_appends_its_metrics_to_its_own_file_and_names_its_outputs(
    finished, tiny_dataset, tmp_path, messages
):
    out = copy_of_run(finished[0], tmp_path)
    metrics_json = os.path.join(out, "metrics.json")
    with open(metrics_json) as f:
        training_metrics = f.read()
    results = run_phases(single_phase(out, tiny_dataset), eval_only=True)[""]
    with open(metrics_json) as f:
        assert f.read() == training_metrics  # metrics.json is the training's
    (record,) = records(os.path.join(out, EVAL_ONLY_METRICS_FILE))
    final = os.path.join(out, "model_final.pth")
    assert record.pop("checkpoint") == final and record.pop("iteration") == MAX_ITER - 1 and record.pop("time")
    assert record == {k: (v if math.isfinite(v) else None) for k, v in flat(results).items()}  # NaN: null
    assert messages[-1] == (
        f"Evaluation of {final} done; outputs in {out}: metrics {os.path.join(out, EVAL_ONLY_METRICS_FILE)}; "
        f"evaluation results {os.path.join(out, 'inference_eval_only', 'model_final')} ({EVALUATION_FILES})"
    )  # the training's inference/ is left as it was (tests/engine/test_reliability_edges.py)


def test_a_one_phase_run_ends_with_the_line_naming_its_outputs(tiny_dataset, tmp_path, messages):
    out = str(tmp_path / "run")
    run_phases(single_phase(out, tiny_dataset, "train.max_iter=1"))
    assert messages[-1] == (
        f"Training done; outputs in {out}: final checkpoint {out}/model_final.pth; metrics {out}/metrics.json; "
        f"evaluation results {out}/inference ({EVALUATION_FILES}); "
        f"record {out}/{DONE_FILE}"
    )


def test_each_phase_and_the_run_end_with_the_line_naming_their_outputs(tiny_dataset, tmp_path, messages):
    out = str(tmp_path / "run")
    run_phases(load_tiny_run(out, tiny_dataset, "train.max_iter=1"))  # no evaluator: no evaluation files
    pretrain, finetune = os.path.join(out, "pretrain"), os.path.join(out, "finetune")
    phase_lines = [m for m in messages if m.startswith("Phase '")]
    assert phase_lines == [
        f"Phase '{name}' done; outputs in {folder}: final checkpoint {folder}/model_final.pth; metrics "
        f"{folder}/metrics.json; record {folder}/{DONE_FILE}"
        for name, folder in (("pretrain", pretrain), ("finetune", finetune))
    ]
    assert messages[-1] == (
        f"Run done; outputs in {out}: pretrain {pretrain}/model_final.pth, finetune {finetune}/model_final.pth (each "
        f"phase's folder also holds metrics.json and {DONE_FILE})"
    )


# --- 3. `make demo` where it finished -----------------------------------------------------------------------------


def make_demo(tmp_path, output_dir):
    """``make demo`` with DEMO_OUTPUT=output_dir and a Python that records its arguments (nothing trains)."""
    ready, python, called = tmp_path / "ready", tmp_path / "python", tmp_path / "called"
    ready.touch()  # newer than the set-up's inputs: nothing installed
    python.write_text(f'#!/bin/sh\necho "$@" >> {called}\n')
    python.chmod(0o755)
    command = ["make", "-s", "--no-print-directory", "-C", ROOT, "demo", f"DEMO_OUTPUT={output_dir}"]
    done = subprocess.run(
        [*command, f"READY={ready}", f"PYTHON_VENV={python}"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, called.read_text().split() if called.exists() else None


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_resumes_and_says_it_already_finished(tmp_path):
    demo = tmp_path / "demo"
    _, arguments = make_demo(tmp_path, demo)
    assert arguments == [
        "scripts/lazyconfig_train_net.py",
        "--config-file",
        "projects/baseline.py",
        "--resume",  # an interrupted demo continues; a finished one's resume takes no step
        f"train.output_dir={demo}",
    ]
    demo.mkdir()
    (demo / "model_final.pth").touch()
    (demo / DONE_FILE).touch()
    (tmp_path / "called").unlink()
    output, arguments = make_demo(tmp_path, demo)
    assert arguments is None  # nothing ran
    assert output == (
        f"make demo: already finished: {demo}/model_final.pth, {demo}/metrics.json, {demo}/inference/ (evaluation), "
        f"{demo}/{DONE_FILE} (results); remove {demo} or set DEMO_OUTPUT to train again\n"
    )


def test_a_finished_one_phase_run_is_refused_without_resume(finished, tiny_dataset, tmp_path):
    """What `make demo` did before it passed --resume: the earlier run's checkpoints are not overwritten."""
    out = copy_of_run(finished[0], tmp_path)
    with pytest.raises(RuntimeError, match="holds checkpoints of an earlier run.*Run again with --resume"):
        run_phases(single_phase(out, tiny_dataset))


# --- 4. the leaderboard's --quick in a fresh clone ------------------------------------------------------------


def test_leaderboard_defaults_write_under_output_and_quick_trains_in_a_fresh_clone(tmp_path, monkeypatch, capsys):
    script = load_repo_module("scripts/leaderboard.py")
    for setting in script.SETTINGS.values():
        assert setting.output_dir.startswith("output/") and setting.docs_dir.startswith("output/")
    monkeypatch.chdir(tmp_path)  # a fresh clone: no output/ yet (the committed docs/ results are not read)
    calls = []
    monkeypatch.setattr(script, "run_entry", lambda *args: calls.append(args))
    script.main(["--quick", "--config-file", os.path.join(ROOT, "projects", "leaderboard_quick.py"), "--dry-run"])
    printed = capsys.readouterr().out
    assert "skipped" not in printed and "ce seed 0: phases" in printed and "to train ['pretrain', 'ce']" in printed
    assert calls == [] and not os.path.exists(tmp_path / "output")  # a dry run writes nothing


def test_no_script_writes_under_docs_by_default():
    """The scripts' default output paths (argparse defaults, the leaderboard's settings) are not under docs/."""
    import re

    for path in sorted(glob.glob(os.path.join(ROOT, "scripts", "*.py"))):
        with open(path) as f:
            text = f.read()
        assert not re.search(r"default=[\"']docs/", text), path
    script = load_repo_module("scripts/leaderboard.py")
    assert not any(
        str(value).startswith("docs")
        for setting in script.SETTINGS.values()
        for value in (setting.config_file, setting.output_dir, setting.docs_dir)
    )


def test_the_runner_evaluates_itself_when_training_does_not(tiny_dataset, tmp_path, monkeypatch):
    """A replaced do_train (as the tests' fakes) is evaluated after it, by do_test, as before."""
    trained = []

    def fake_do_train(cfg, *, resume=False):
        trained.append(cfg.train.output_dir)
        model = torch.nn.Linear(1, 1)
        os.makedirs(cfg.train.output_dir, exist_ok=True)
        torch.save({"model": model.state_dict()}, os.path.join(cfg.train.output_dir, "model_final.pth"))
        return model

    monkeypatch.setattr(phases_module, "do_train", fake_do_train)
    monkeypatch.setattr(phases_module, "do_test", lambda cfg, model: {"bbox": {"AP": 7.0}})
    out = str(tmp_path / "run")
    assert run_phases(single_phase(out, tiny_dataset)) == {"": {"bbox": {"AP": 7.0}}}
    assert trained == [out] and read_json(os.path.join(out, DONE_FILE))["results"] == {"bbox": {"AP": 7.0}}
