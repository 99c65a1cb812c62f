"""Against a real Slurm (``make test-slurm`` starts a one-node one with scripts/slurm_local.sh; skipped
otherwise): a 2-task CPU job of the two-phase tiny project (tests/configs/tiny_slurm.py) submitted with
scripts/slurm_launch.py, sent Slurm's preemption / time-out warning (SIGUSR2) in the middle of its second
phase, must save a checkpoint, requeue itself, resume, and finish with the final weights and metrics of
an uninterrupted job of the same project."""

import json
import math
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from ltdet2.engine.checkpoint import rank_state_file

from fixtures.models import ROOT, TINY_LT_SHAPES

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        os.environ.get("LTDET2_TEST_SLURM") != "1",
        reason="needs a Slurm scheduler: `make test-slurm` starts a one-node Slurm and runs this",
    ),
]

PROJECT = os.path.join(ROOT, "tests", "configs", "tiny_slurm.py")
FINETUNE_ITERS = 24  # tests/configs/tiny_slurm.py
SIGNAL_AFTER_ITER = 2  # the warning arrives once the fine-tune logged this iteration
JOB_TIMEOUT_S = 900


def run(*command, check=True):
    return subprocess.run(command, capture_output=True, text=True, check=check, timeout=120)


def submit(output_dir, *extra):
    """Submits the tiny project (2 CPU processes); returns (launcher exit code, job id or None, output)."""
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "slurm_launch.py"), "--config-file", PROJECT]
        + ["--gpus-per-node", "0", "--tasks-per-node", "2", "--cpus-per-task", "1", "--timeout", "30"]
        + ["--max-requeues", "2", *extra, f"train.output_dir={output_dir}"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")},
        cwd=ROOT,
    )
    found = re.search(r"Submitted job (\d+)", done.stdout)
    return done.returncode, found and found.group(1), done.stdout + done.stderr


def job_info(job_id):
    """{field: value} of ``scontrol show job`` (JobState, Reason, Restarts, ...), {} once Slurm forgot it."""
    done = run("scontrol", "show", "job", "--oneliner", job_id, check=False)
    return dict(re.findall(r"(\w+)=(\S*)", done.stdout)) if done.returncode == 0 else {}


def logs(output_dir, job_id):
    folder = os.path.join(output_dir, "slurm")
    texts = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.startswith(f"{job_id}_") and "_log." in name:
            with open(os.path.join(folder, name), errors="replace") as f:
                texts.append(f"==> {name} <==\n{f.read()}")
    return "\n".join(texts)


def wait_for(condition, what, job_id, output_dir, timeout=JOB_TIMEOUT_S):
    start = time.time()
    while time.time() - start < timeout:
        value = condition()
        if value:
            return value
        state = job_info(job_id).get("JobState")
        if state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            pytest.fail(f"job {job_id} is {state} while waiting for {what}:\n{logs(output_dir, job_id)[-6000:]}")
        time.sleep(0.5)
    pytest.fail(f"job {job_id}: no {what} after {timeout} s:\n{logs(output_dir, job_id)[-6000:]}")


def logged_iterations(output_dir, phase):
    path = os.path.join(output_dir, phase, "metrics.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line)["iteration"] for line in f if line.strip().endswith("}")]


def same_metrics(a, b):
    """Equal metrics, NaN (no ground truth in a group) equal to NaN."""
    both_nan = lambda x, y: isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)  # noqa: E731
    return a.keys() == b.keys() and all(a[k] == b[k] or both_nan(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def dataset():
    """The project's dataset, generated here once so that the jobs' processes only read it."""
    from ltdet2.data import register_lt_shapes
    from ltdet2.data.lt_shapes import get_lt_shapes

    register_lt_shapes(seed=3, spec=TINY_LT_SHAPES, name_prefix="lt_shapes_slurm")
    get_lt_shapes(seed=3, spec=TINY_LT_SHAPES)


def test_unknown_partition_is_refused_by_the_real_cluster(tmp_path):
    code, job_id, output = submit(tmp_path / "run", "--partition", "no_such_partition")
    assert code == 2 and job_id is None
    assert "--partition 'no_such_partition': this cluster has no such partition (sinfo lists ['debug'])" in output
    assert not (tmp_path / "run").exists()


def test_a_job_preempted_in_its_second_phase_requeues_resumes_and_ends_as_an_uninterrupted_one(tmp_path, dataset):
    reference_dir, interrupted_dir = str(tmp_path / "uninterrupted"), str(tmp_path / "interrupted")
    code, reference, output = submit(reference_dir)
    assert code == 0 and reference, output
    code, interrupted, output = submit(interrupted_dir)
    assert code == 0 and interrupted, output
    print(f"jobs: uninterrupted {reference}, interrupted {interrupted}")

    # Slurm's warning before a time-out or preemption, in the middle of the fine-tune
    wait_for(
        lambda: max(logged_iterations(interrupted_dir, "finetune"), default=-1) >= SIGNAL_AFTER_ITER,
        f"fine-tune iteration {SIGNAL_AFTER_ITER}",
        interrupted,
        interrupted_dir,
    )
    run("scancel", "--signal=USR2", interrupted)
    signalled = time.time()
    # requeued: Slurm holds a requeued job back for a while (BeginTime); let it start now
    info = wait_for(
        lambda: (i := job_info(interrupted)).get("Restarts") == "1" and i.get("JobState") == "PENDING" and i,
        "requeue",
        interrupted,
        interrupted_dir,
    )
    print(f"job {interrupted} requeued {time.time() - signalled:.1f} s after the signal (reason {info.get('Reason')})")
    run("scontrol", "update", f"JobId={interrupted}", "StartTime=now")
    for job_id, output_dir in ((reference, reference_dir), (interrupted, interrupted_dir)):
        wait_for(lambda j=job_id: job_info(j).get("JobState") == "COMPLETED", "completion", job_id, output_dir)
    assert job_info(reference).get("Restarts") == "0" and job_info(interrupted).get("Restarts") == "1"

    # the stop saved a checkpoint of the iteration it happened at, with rank 1's own state
    text = logs(interrupted_dir, interrupted)
    stop = re.search(r"job \d+ requeued \(requeue 1 of at most 2\); it resumes from (\S+model_(\d{7})\.pth)", text)
    assert stop, text[-6000:]
    checkpoint, iteration = stop.group(1), int(stop.group(2))
    assert SIGNAL_AFTER_ITER <= iteration < FINETUNE_ITERS - 1
    assert os.path.isfile(checkpoint) and os.path.isfile(rank_state_file(checkpoint, 1))
    assert "rank 0 of 2 (node 0, local rank 0); restarts so far: 1; resume: True" in text
    with open(os.path.join(interrupted_dir, "log.txt")) as f:
        log = f.read()
    assert "phase 'pretrain' already finished" in log
    assert f"Starting training from iteration {iteration + 1}" in log
    assert logged_iterations(interrupted_dir, "finetune") == list(range(FINETUNE_ITERS))

    # the same final weights (rank 0's checkpoint, rank 1's own state) and metrics as the uninterrupted job
    for phase in ("pretrain", "finetune"):
        final = {d: os.path.join(d, phase, "model_final.pth") for d in (reference_dir, interrupted_dir)}
        a, b = (torch.load(path, weights_only=False)["model"] for path in final.values())
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], phase
        a, b = (torch.load(rank_state_file(path, 1), weights_only=False)["buffers"] for path in final.values())
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], phase
        a, b = (json.load(open(os.path.join(d, phase, "phase_done.json")))["results"] for d in final)
        assert a.keys() == b.keys() == {"bbox"} and same_metrics(a["bbox"], b["bbox"]), (phase, a, b)
        print(f"{phase}: final metrics (both jobs) {a['bbox']}")
