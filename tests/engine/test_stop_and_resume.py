"""Stopping a run and continuing it exactly: the periodic evaluation across a stop (ltdet2.engine.train_loop.EvalHook:
it leaves the RNG as it found it, one cut short runs on resume, its metrics come back to metrics.json), and SIGUSR2 to
scripts/lazyconfig_train_net.py (a checkpoint, exit status 75, ``--resume`` continues; a stop between two phases
starts no phase)."""

import copy
import json
import os
import signal
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch.multiprocessing import ProcessExitedException

from detectron2.config import LazyCall as L
from detectron2.engine import HookBase

from ltdet2.engine import phases as phases_module
from ltdet2.engine import train_loop
from ltdet2.engine.launch import (
    INTERRUPTED_EXIT_STATUS,
    arm_stop_signal,
    disarm_stop_requests,
    forward_stop_signal_to_children,
    stop_requests_armed,
)
from ltdet2.engine.project_config import PHASE_KEYS
from ltdet2.engine.train_loop import PERIODIC_EVALUATIONS_FILE, do_train
from ltdet2.utils.json_io import read_json

from fixtures.logs import logged_messages
from fixtures.models import ROOT, load_repo_module, tiny_run_overrides
from fixtures.runs import load_tiny_run

PROJECT = os.path.join(ROOT, "tests", "configs", "tiny_two_phase.py")
# the tiny phase: 4 iterations, a checkpoint after iterations 1 and 3; evaluated after iteration 1 (eval_period 2;
# the evaluation at the end is the final one's)
EVALUATED = 1
RUN_STEP = train_loop.Trainer.run_step


def one_phase(tiny_dataset, output_dir, *hooks):
    """Phase 'pretrain' of the tiny project as a one-phase config, evaluated every 2 iterations, with ``hooks``."""
    project = load_tiny_run(output_dir, tiny_dataset, "train.eval_period=2")
    cfg = OmegaConf.create({}, flags={"allow_objects": True})
    for key in PHASE_KEYS:
        cfg[key] = copy.deepcopy(project.phases.pretrain[key])
    cfg.train.output_dir = str(output_dir)
    cfg.train.hooks = list(hooks)
    return cfg


class Probe:
    """Stands for the evaluation: a weight of the model as a metric, and a draw from torch's global generator (as the
    test loader's seed is); ``fail_first``: the first call raises, as a run killed during the evaluation."""

    def __init__(self, fail_first=False):
        self.calls = 0
        self.fail_first = fail_first

    def __call__(self, cfg, model):
        self.calls += 1
        torch.rand(1)
        if self.fail_first and self.calls == 1:
            raise RuntimeError("killed during the evaluation")
        return {"probe": {"weight": float(next(model.parameters()).flatten()[0])}}


class StopsAfterTheEvaluation(HookBase):
    """Raises after the evaluated iteration's evaluation, once: a run killed before its next step."""

    stopped = False

    def after_step(self):
        if self.trainer.iter == EVALUATED and not StopsAfterTheEvaluation.stopped:
            StopsAfterTheEvaluation.stopped = True
            raise RuntimeError("killed after the evaluation")


def metrics_records(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def evaluated_weight(output_dir):
    """The probe's metric at the evaluated iteration, from metrics.json (the last record holding it)."""
    values = [
        r["probe/weight"] for r in metrics_records(output_dir) if r["iteration"] == EVALUATED and "probe/weight" in r
    ]
    return values[-1] if values else None


def final_state(output_dir):
    return torch.load(os.path.join(output_dir, "model_final.pth"), weights_only=False)["model"]


@pytest.fixture
def uninterrupted(tiny_dataset, tmp_path, monkeypatch):
    """(folder, probe) of the phase trained without a stop."""
    probe = Probe()
    monkeypatch.setattr(train_loop, "do_test", probe)
    folder = tmp_path / "uninterrupted"
    do_train(one_phase(tiny_dataset, folder))
    assert probe.calls == 1 and evaluated_weight(folder) is not None
    return folder, probe


@pytest.mark.parametrize("stop", ["after_evaluation", "during_evaluation", "before_metrics_written", "stop_request"])
def test_a_run_stopped_at_an_evaluated_iteration_resumes_to_the_uninterrupted_run(
    stop, uninterrupted, tiny_dataset, tmp_path, monkeypatch
):
    """Stopped at the evaluated iteration (its checkpoint saved before the evaluation): after the evaluation
    (recorded: not run again; its draw from the RNG must not change the training after it), during it (run on
    resume, with the checkpoint's weights), or after it but before metrics.json got its metrics (put back from the
    evaluations file); or by a stop request (SIGUSR2) at that iteration, whose checkpoint comes before the
    evaluation. In each case the final weights and the curve's point are the uninterrupted run's."""
    reference, _ = uninterrupted
    probe = Probe(fail_first=stop == "during_evaluation")
    monkeypatch.setattr(train_loop, "do_test", probe)
    monkeypatch.setattr(StopsAfterTheEvaluation, "stopped", stop in ("during_evaluation", "stop_request"))
    folder = tmp_path / "stopped"
    if stop == "stop_request":
        signal_at(monkeypatch, "stopped", EVALUATED)
    previous = arm_stop_signal() if stop == "stop_request" else None
    try:
        with pytest.raises(RuntimeError, match="killed|stopped on request after iteration 1 "):
            do_train(one_phase(tiny_dataset, folder, L(StopsAfterTheEvaluation)()))
    finally:
        if previous is not None:
            disarm_stop_requests()
            signal.signal(signal.SIGUSR2, previous)
            monkeypatch.setattr(train_loop.Trainer, "run_step", RUN_STEP)
    assert os.path.isfile(folder / f"model_{EVALUATED:07d}.pth") and not os.path.isfile(folder / "model_final.pth")
    recorded = folder / PERIODIC_EVALUATIONS_FILE
    if stop in ("during_evaluation", "stop_request"):
        assert evaluated_weight(folder) is None and not recorded.exists()
    else:
        assert read_json(recorded) == {str(EVALUATED): {"probe/weight": evaluated_weight(reference)}}
    if stop == "before_metrics_written":
        records = metrics_records(folder)
        for record in records:
            record.pop("probe/weight", None)
        (folder / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    calls = probe.calls

    with logged_messages("detectron2") as messages:
        do_train(one_phase(tiny_dataset, folder), resume=True)
    assert probe.calls - calls == (1 if stop in ("during_evaluation", "stop_request") else 0)
    assert evaluated_weight(folder) == evaluated_weight(reference)
    assert read_json(recorded) == read_json(reference / PERIODIC_EVALUATIONS_FILE)
    expected = {
        "after_evaluation": [],
        "during_evaluation": [f"The periodic evaluation after iteration {EVALUATED} did not finish"],
        "stop_request": [f"The periodic evaluation after iteration {EVALUATED} did not finish"],
        "before_metrics_written": [f"Putting back the metrics of the periodic evaluation after iteration {EVALUATED}"],
    }[stop]
    said = [m for m in messages if "periodic evaluation after iteration" in m]
    assert len(said) == len(expected) and all(m.startswith(e) for m, e in zip(said, expected))
    resumed, straight = final_state(folder), final_state(reference)
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_an_evaluation_leaves_the_rng_as_it_found_it(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(train_loop, "do_test", Probe())
    hook = train_loop.EvalHook(1, lambda: train_loop.do_test(None, torch.nn.Linear(1, 1)), output_dir=str(tmp_path))
    hook.trainer = SimpleNamespace(storage=SimpleNamespace(iter=0, put_scalars=lambda **scalars: None))
    torch.manual_seed(0)
    hook._do_eval()
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))


# --- SIGUSR2 to scripts/lazyconfig_train_net.py ------------------------------------------------------------------


@pytest.fixture
def script():
    return load_repo_module("scripts/lazyconfig_train_net.py")


def signal_at(monkeypatch, phase, iteration):
    """Sends this process SIGUSR2 right after ``phase``'s step ``iteration`` (as ``kill -USR2`` would)."""
    run_step = train_loop.Trainer.run_step

    def signalled_run_step(trainer):
        run_step(trainer)
        if trainer.cfg.train.output_dir.endswith(os.sep + phase) and trainer.iter == iteration:
            os.kill(os.getpid(), signal.SIGUSR2)

    monkeypatch.setattr(train_loop.Trainer, "run_step", signalled_run_step)


def test_sigusr2_saves_a_checkpoint_exits_75_and_resume_continues(script, tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = ["--config-file", PROJECT, *tiny_run_overrides(tiny_dataset, str(out))]
    previous = signal.getsignal(signal.SIGUSR2)
    signal_at(monkeypatch, "pretrain", 2)
    with logged_messages("detectron2") as messages, pytest.raises(SystemExit) as stopped:
        script.main(script.parse_args(argv))
    assert stopped.value.code == INTERRUPTED_EXIT_STATUS == 75
    checkpoint = out / "pretrain" / "model_0000002.pth"
    assert checkpoint.is_file() and not (out / "pretrain" / "model_final.pth").exists()
    assert any(
        m.startswith("training stopped on request after iteration 2 (of 4)") and str(checkpoint) in m for m in messages
    )
    assert signal.getsignal(signal.SIGUSR2) == previous and not stop_requests_armed()  # put back

    monkeypatch.undo()
    script.main(script.parse_args([*argv, "--resume"]))
    assert (out / "pretrain" / "phase_done.json").is_file() and (out / "finetune" / "phase_done.json").is_file()


def test_sigusr2_at_the_end_of_a_phase_stops_before_the_next_starts(script, tiny_dataset, tmp_path, monkeypatch):
    """A signal while a phase ends (its last step: no checkpoint of its own, model_final is saved anyway): the phase
    finishes, the next one does not start."""
    out = tmp_path / "run"
    argv = ["--config-file", PROJECT, *tiny_run_overrides(tiny_dataset, str(out))]
    signal_at(monkeypatch, "pretrain", 3)  # the last iteration
    trained = []
    run_phase = phases_module.run_phase
    monkeypatch.setattr(
        phases_module, "run_phase", lambda phase, **kw: trained.append(phase.name) or run_phase(phase, **kw)
    )
    with logged_messages("detectron2") as messages, pytest.raises(SystemExit) as stopped:
        script.main(script.parse_args(argv))
    assert stopped.value.code == INTERRUPTED_EXIT_STATUS and trained == ["pretrain"]
    assert (out / "pretrain" / "phase_done.json").is_file() and not list(out.glob("finetune/model_*.pth"))
    assert any(m.startswith("training stopped on request before phase 'finetune' started") for m in messages)
    script.main(script.parse_args([*argv, "--resume"]))
    assert trained == ["pretrain", "finetune"] and (out / "finetune" / "phase_done.json").is_file()


def _waits_for_sigusr2(path):
    signal.signal(signal.SIGUSR2, lambda *args: open(path, "w").close() or sys.exit(INTERRUPTED_EXIT_STATUS))
    time.sleep(30)


def test_with_several_processes_the_launcher_passes_the_signal_on_and_exits_75(script, tmp_path, monkeypatch):
    """--num-gpus N > 1: the launcher (which does not train) passes SIGUSR2 on to its children instead of ending, and
    a child's exit status 75 becomes its own."""
    import multiprocessing

    previous = signal.getsignal(signal.SIGUSR2)
    marker = str(tmp_path / "signalled")
    child = multiprocessing.get_context("fork").Process(target=_waits_for_sigusr2, args=(marker,))
    try:
        forward_stop_signal_to_children()
        child.start()
        time.sleep(0.5)  # the child arms its handler
        os.kill(os.getpid(), signal.SIGUSR2)
        child.join(10)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert child.exitcode == INTERRUPTED_EXIT_STATUS and os.path.exists(marker)

    def launch_ending_with(code):
        def launch(*args, **kwargs):
            raise ProcessExitedException("process 1 terminated", 1, 123, code)

        return launch

    monkeypatch.setattr(sys, "argv", ["lazyconfig_train_net.py", "--config-file", PROJECT, "--num-gpus", "2"])
    monkeypatch.setattr(script, "forward_stop_signal_to_children", lambda: None)
    monkeypatch.setattr(script, "launch", launch_ending_with(INTERRUPTED_EXIT_STATUS))
    with pytest.raises(SystemExit) as stopped:
        script.invoke_main()
    assert stopped.value.code == INTERRUPTED_EXIT_STATUS
    monkeypatch.setattr(script, "launch", launch_ending_with(1))
    with pytest.raises(ProcessExitedException):
        script.invoke_main()


# --- stopping scripts/leaderboard.py -----------------------------------------------------------------------------

# a phase process: arms SIGUSR2 (exit 75, as lazyconfig_train_net.py after its checkpoint), says it is ready, waits;
# with "stop" as its second argument it exits 75 once the other phase is ready (as if stopped with pkill)
PHASE_PROCESS = """
import os, signal, sys, time
signal.signal(signal.SIGUSR2, lambda *args: sys.exit(75))
ready, other = sys.argv[1], sys.argv[2]
open(ready, "w").close()
for _ in range(3000):
    if sys.argv[3:] == ["stop"] and os.path.exists(other):
        sys.exit(75)
    time.sleep(0.01)
sys.exit(1)
"""


def stoppable_jobs(script, tmp_path, monkeypatch, stops_itself=()):
    """Phases 'a' and 'b' run at once (2 workers), 'c' needs 'a'; each a PHASE_PROCESS. Returns what
    run_phase_jobs needs."""
    ready = {name: str(tmp_path / f"{name}.ready") for name in "abc"}
    other = {"a": ready["b"], "b": ready["a"], "c": ready["a"]}

    def command(*args, phase, **kwargs):
        return [
            sys.executable,
            "-c",
            PHASE_PROCESS,
            ready[phase],
            other[phase],
            *(["stop"] if phase in stops_itself else []),
        ]

    monkeypatch.setattr(script, "train_command", command)
    jobs = [SimpleNamespace(key=(0, n), seed=0, phase=n, needs=[(0, "a")] if n == "c" else []) for n in "abc"]
    phases = {0: {n: SimpleNamespace(name=n, output_dir=str(tmp_path / n)) for n in "abc"}}
    args = SimpleNamespace(config_file="p.py", overrides=[])
    return ready, (args, jobs, phases, {0: str(tmp_path)}, 2, lambda job: None)


def test_sigusr2_to_the_leaderboard_stops_its_running_phases_and_starts_no_other(tmp_path, monkeypatch, capfd):
    script = load_repo_module("scripts/leaderboard.py")
    ready, run_args = stoppable_jobs(script, tmp_path, monkeypatch)

    def signal_when_both_run():
        while not (os.path.exists(ready["a"]) and os.path.exists(ready["b"])):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGUSR2)  # as kill -USR2 <the script's pid>

    previous = signal.getsignal(signal.SIGUSR2)
    sender = threading.Thread(target=signal_when_both_run)
    with script.STOP.armed():
        sender.start()
        failed = script.run_phase_jobs(*run_args)
    sender.join()
    assert failed == {} and script.STOP.requested and not os.path.exists(ready["c"])
    assert signal.getsignal(signal.SIGUSR2) == previous
    printed = capfd.readouterr().out
    assert "stop requested (signal SIGUSR2): the running phases save a checkpoint and stop" in printed
    assert "seed 0 phase a: stopped on request" in printed and "seed 0 phase b: stopped on request" in printed
    assert "phase c" not in printed
    for name in "ab":  # the invocations are recorded as ended; a stopped phase has no time record of a finished one
        (run,) = read_json(tmp_path / name / script.RUNS_FILE)["runs"]
        assert run["end"] is not None and run["cpu_s"] is not None
        assert not (tmp_path / name / script.WALL_FILE).exists()
    with pytest.raises(script.PhaseStopped, match="not started"):  # after the stop: no log, no record
        script.run_phase("p.py", run_args[2][0]["c"], 0, str(tmp_path), [], log_path=str(tmp_path / "c.log"))
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.log").exists()


def test_a_phase_process_stopped_directly_stops_the_leaderboard(tmp_path, monkeypatch, capsys):
    """pkill -USR2 -f lazyconfig_train_net.py reaches one phase: its exit status 75 stops the run as a request."""
    script = load_repo_module("scripts/leaderboard.py")
    ready, run_args = stoppable_jobs(script, tmp_path, monkeypatch, stops_itself="a")
    with script.STOP.armed():
        failed = script.run_phase_jobs(*run_args)
    assert failed == {} and script.STOP.requested and not os.path.exists(ready["c"])
    printed = capsys.readouterr().out
    assert "seed 0 phase a: stopped on request" in printed and "seed 0 phase b: stopped on request" in printed


def test_a_stopped_leaderboard_exits_75_without_results_or_table(tmp_path, monkeypatch, capsys):
    script = load_repo_module("scripts/leaderboard.py")

    def stopped_phase(config_file, phase, *args, **kwargs):
        raise script.PhaseStopped("stopped on request (exit status 75)")

    monkeypatch.setattr(script, "run_phase", stopped_phase)
    out, docs = str(tmp_path / "out"), str(tmp_path / "docs")
    for jobs in ("1", "2"):
        with pytest.raises(SystemExit) as stopped:
            script.main(["--quick", "--output-dir", out, "--docs-dir", docs, "--entries", "ce", "--jobs", jobs])
        assert stopped.value.code == INTERRUPTED_EXIT_STATUS
        assert "stopped on request: the phases that ran saved their checkpoints" in capsys.readouterr().out
        assert not os.path.exists(docs) and not os.path.exists(os.path.join(out, "seed0", "run.lock"))
