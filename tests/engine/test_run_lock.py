"""One run per output folder (issue #26): a run holds ``<train.output_dir>/run.lock`` for its life; a second run on
the folder is refused naming the holder, a lock whose process is gone is taken over with a warning, and the lock
goes when the run ends, however it ends (an exception, SIGTERM). The leaderboard locks each seed's folder, and the
training processes it starts run under its lock."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys

import pytest

from ltdet2.engine import phases as phases_module
from ltdet2.engine.launch import RUN_LOCK_FILE, OutputDirLocked, RunLock

from fixtures.logs import logged_messages
from fixtures.models import ROOT, load_repo_module

PROJECT = os.path.join(ROOT, "tests", "configs", "tiny_two_phase.py")


@pytest.fixture(scope="module")
def script():
    return load_repo_module("scripts/lazyconfig_train_net.py")


def write_lock(folder, **holder):
    """A lock as another run writes it."""
    os.makedirs(folder, exist_ok=True)
    holder = {
        "host": socket.gethostname(),
        "pid": os.getppid(),  # alive, and not this process
        "command": "scripts/lazyconfig_train_net.py --config-file other.py",
        "started": "2026-01-02T03:04:05+00:00",
        "token": "another-run",
        **holder,
    }
    with open(os.path.join(folder, RUN_LOCK_FILE), "w") as f:
        json.dump(holder, f)
    return holder


def dead_pid():
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def train(script, output_dir, *flags):
    return script.main(script.parse_args(["--config-file", PROJECT, *flags, f"train.output_dir={output_dir}"]))


@pytest.fixture
def phases_run(monkeypatch):
    """run_phases replaced by a fake that records whether the run held its folder's lock."""
    seen = []

    def run_phases(cfg, **kwargs):
        path = os.path.join(cfg.train.output_dir, RUN_LOCK_FILE)
        with open(path) as f:
            seen.append(json.load(f)["pid"])
        if kwargs.get("only") == "fail":
            raise RuntimeError("the phase failed")
        return {}

    monkeypatch.setattr(phases_module, "run_phases", run_phases)
    return seen


def test_a_second_run_on_a_locked_folder_is_refused_naming_the_holder(tmp_path, script, phases_run):
    out = tmp_path / "run"
    holder = write_lock(out)
    with pytest.raises(OutputDirLocked) as refused:
        train(script, out)
    message = str(refused.value)
    assert str(out) in message
    for value in (f"pid {holder['pid']}", holder["host"], holder["command"], holder["started"]):
        assert value in message
    assert phases_run == [] and sorted(os.listdir(out)) == [RUN_LOCK_FILE]  # nothing written, not even config.yaml

    write_lock(out, host="another-node")  # another machine's process cannot be checked from here
    with pytest.raises(OutputDirLocked, match=r"another-node.*--force-lock"):
        train(script, out)


@pytest.fixture
def logged():
    """The messages of Detectron2's logger (which stops propagating once a run has set it up)."""
    with logged_messages("detectron2", logging.WARNING) as messages:
        yield messages


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, script, phases_run, logged):
    out = tmp_path / "run"
    gone = dead_pid()
    write_lock(out, pid=gone)
    assert train(script, out) == {}
    assert phases_run == [os.getpid()]
    assert any(f"pid {gone}" in m and "taken over" in m for m in logged)
    assert not (out / RUN_LOCK_FILE).exists()

    write_lock(out, host="another-node")
    assert train(script, out, "--force-lock") == {}
    assert any("another-node" in m and "taken over" in m for m in logged)


def test_the_lock_is_gone_after_a_run_ends_normally_or_by_an_exception(tmp_path, script, phases_run):
    out = tmp_path / "run"
    assert train(script, out) == {}
    assert phases_run == [os.getpid()] and not (out / RUN_LOCK_FILE).exists()
    with pytest.raises(RuntimeError, match="the phase failed"):
        train(script, out, "--phase", "fail")
    assert len(phases_run) == 2 and not (out / RUN_LOCK_FILE).exists()


def test_the_lock_is_gone_after_sigterm(tmp_path):
    out = tmp_path / "run"
    code = (
        "import sys, time\n"
        "from ltdet2.engine.launch import RunLock\n"
        f"with RunLock({str(out)!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert process.stdout.readline().strip() == "held"
        assert (out / RUN_LOCK_FILE).exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) != 0
    finally:
        process.kill()
    assert not (out / RUN_LOCK_FILE).exists()


def test_a_lock_is_one_runs_and_its_child_processes_run_under_it(tmp_path):
    out = str(tmp_path / "run")
    with RunLock(out):
        with pytest.raises(OutputDirLocked):  # a second run in this process is still a second run
            RunLock(out).acquire()
        child = f"from ltdet2.engine.launch import RunLock\nwith RunLock({out!r}):\n    print('ran')\n"
        done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0 and done.stdout.strip() == "ran", done.stderr
        assert os.path.isfile(os.path.join(out, RUN_LOCK_FILE))  # the child did not release the parent's lock
    assert not os.path.exists(os.path.join(out, RUN_LOCK_FILE))


def test_the_leaderboard_refuses_a_locked_seed_folder(tmp_path, monkeypatch):
    script = load_repo_module("scripts/leaderboard.py")
    monkeypatch.setattr(script, "run_phase", lambda *args: pytest.fail("trained in a locked folder"))
    out = tmp_path / "out"
    write_lock(out / "seed0")
    with pytest.raises(OutputDirLocked, match="seed0"):
        script.main(["--quick", "--output-dir", str(out), "--docs-dir", str(tmp_path / "docs"), "--entries", "ce"])
