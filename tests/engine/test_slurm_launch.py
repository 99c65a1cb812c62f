"""The Slurm launcher without a scheduler: its command line, the sbatch job it writes, and its refusals
(no sbatch, an unknown partition, a requeue limit reached, a job folder holding another run), each with a
clear message and nothing of an earlier run overwritten. Slurm's commands are small fakes on the PATH
that log their calls; tests/slurm runs the launcher against a real Slurm (`make test-slurm`)."""

import json
import os
import pickle
import runpy
import stat
from types import SimpleNamespace

import pytest

from ltdet2.engine import launch
from ltdet2.engine.launch_slurm import (
    RUN_RECORD,
    RequeueLimitReached,
    SlurmTrainJob,
    executor_parameters,
    rendezvous_port,
)

from fixtures.models import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "slurm_launch.py")
PROJECT = os.path.join(ROOT, "tests", "configs", "tiny_two_phase.py")


@pytest.fixture(scope="module")
def script():
    return SimpleNamespace(**runpy.run_path(SCRIPT, run_name="slurm_launch"))  # its functions, main not run


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """A PATH holding only fake sbatch, srun, sinfo (partitions debug, gpu), squeue and scontrol; each
    appends its arguments to calls.log. Returns (bin folder, calls.log)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    outputs = {
        "sbatch": 'cp "$1" "$(dirname "$0")/../submitted.sh"; echo "Submitted batch job 4242"',
        "sinfo": "printf 'debug\\ngpu\\n'",
    }
    for tool in ("sbatch", "srun", "sinfo", "squeue", "scontrol"):
        path = bin_dir / tool
        path.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n{outputs.get(tool, "")}\n')
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return bin_dir, calls


def called(calls):
    return calls.read_text().splitlines() if calls.exists() else []


def launcher_args(script, output_dir, *extra):
    return script.parse_args(["--config-file", PROJECT, *extra, f"train.output_dir={output_dir}"])


def test_flags_after_overrides_and_defaults(script):
    args = script.parse_args(
        ["--config-file", PROJECT, "train.max_iter=5", "--nodes", "4", "--resume", "--partition=gpu", "--phase", "x"]
    )
    assert (args.nodes, args.gpus_per_node, args.tasks_per_node) == (4, 8, 8)  # one task per GPU
    assert args.resume and args.partition == "gpu" and args.phase == "x" and args.opts == ["train.max_iter=5"]
    assert args.config_file == PROJECT and args.job_name == "ltdet2-tiny_two_phase"
    cpu = script.parse_args(["--config-file", PROJECT, "--gpus-per-node", "0", "--tasks-per-node", "2"])
    assert (cpu.gpus_per_node, cpu.tasks_per_node) == (0, 2)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--gpus-per-node", "8", "--tasks-per-node", "4"], "one task per GPU"),
        (["--nodes", "0"], "--nodes must be at least 1"),
        (["--timeout", "0"], "--timeout is in minutes"),
        (["--max-requeues", "-1"], "--max-requeues must be 0 or more"),
        (["--slurm-option", "=5"], "write KEY=VALUE"),
        (["--resume", "--restart"], "--resume and --restart: choose one"),
    ],
)
def test_bad_arguments_are_refused(script, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--config-file", PROJECT, *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_missing_config_file_is_refused(script, capsys):
    with pytest.raises(SystemExit):
        script.parse_args(["--config-file", "projects/no_such.py"])
    assert "--config-file projects/no_such.py: no such file" in capsys.readouterr().err


def test_job_parameters_for_4_nodes_of_8_gpus(script, tmp_path):
    args = launcher_args(
        script,
        tmp_path,
        *("--nodes", "4", "--partition", "gpu", "--account", "lt", "--qos", "high", "--constraint", "volta32gb"),
        *("--comment", "lvis", "--mem", "0", "--timeout", "600", "--slurm-option", "exclude=node7"),
    )
    assert executor_parameters(args) == {
        "job_name": "ltdet2-tiny_two_phase",
        "nodes": 4,
        "ntasks_per_node": 8,
        "gpus_per_node": 8,
        "cpus_per_task": 8,
        "time": 600,
        "mem": "0",
        "signal_delay_s": 120,
        "partition": "gpu",
        "account": "lt",
        "qos": "high",
        "constraint": "volta32gb",
        "comment": "lvis",
        "additional_parameters": {"requeue": True, "exclude": "node7"},
    }
    assert rendezvous_port("123456") == rendezvous_port("123456_0") == 20000 + 123456 % 20000


def test_no_sbatch_is_refused(script, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no Slurm command at all
    output_dir = tmp_path / "run"
    assert script.main(["--config-file", PROJECT, f"train.output_dir={output_dir}"]) == 2
    assert "sbatch and srun not found on the PATH: this machine is not a Slurm login node" in capsys.readouterr().err
    assert not output_dir.exists()


def test_unknown_partition_is_refused_with_the_clusters_partitions(script, tmp_path, fake_slurm, capsys):
    _, calls = fake_slurm
    output_dir = tmp_path / "run"
    assert script.main(["--config-file", PROJECT, "--partition", "gpus", f"train.output_dir={output_dir}"]) == 2
    assert "--partition 'gpus': this cluster has no such partition (sinfo lists ['debug', 'gpu'])" in (
        capsys.readouterr().err
    )
    assert not any(c.startswith("sbatch") for c in called(calls)) and not output_dir.exists()


def test_a_batch_that_does_not_divide_among_the_processes_is_refused(script, tmp_path, fake_slurm, capsys):
    assert script.main(["--config-file", PROJECT, "--nodes", "2", f"train.output_dir={tmp_path / 'run'}"]) == 2
    assert (
        "phases.pretrain.dataloader.train.total_batch_size=2 does not divide among 16 processes"
        in capsys.readouterr().err
    )


def test_a_cpu_job_is_submitted_recorded_and_described(script, tmp_path, fake_slurm, capsys):
    bin_dir, calls = fake_slurm
    output_dir = tmp_path / "run"
    argv = ["--config-file", PROJECT, "--gpus-per-node", "0", "--tasks-per-node", "2", "--partition", "debug"]
    assert script.main([*argv, "--cpus-per-task", "1", f"train.output_dir={output_dir}"]) == 0
    printed = capsys.readouterr().out
    assert "Submitted job 4242: 1 node(s) x 2 CPU processes (2 tasks), partition debug" in printed
    assert f"Slurm logs: {output_dir}/slurm/4242_0_log.out" in printed
    sbatch_script = (bin_dir.parent / "submitted.sh").read_text()
    for line in ("--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--partition=debug", "--requeue"):
        assert f"#SBATCH {line}" in sbatch_script
    assert "#SBATCH --signal=USR2@120" in sbatch_script and "gpus" not in sbatch_script
    assert f"#SBATCH --output={output_dir}/slurm/%j_0_log.out" in sbatch_script
    record = json.loads((output_dir / "slurm" / RUN_RECORD).read_text())
    assert record["config_file"] == PROJECT and record["overrides"] == [f"train.output_dir={output_dir}"]
    assert [job["job_id"] for job in record["jobs"]] == ["4242"]
    with open(output_dir / "slurm" / "4242_submitted.pkl", "rb") as f:
        job = pickle.load(f).function
    assert isinstance(job, SlurmTrainJob) and not job.use_gpus and job.tasks_per_node == 2
    assert job.train_args.opts[-2:] == [f"train.output_dir={output_dir}", "train.device=cpu"]


def test_a_job_folder_holding_another_run_is_refused_and_left_as_it_is(script, tmp_path, fake_slurm, capsys):
    _, calls = fake_slurm
    output_dir = tmp_path / "run"
    (output_dir / "slurm").mkdir(parents=True)
    other = {"config_file": "/elsewhere/projects/loce.py", "overrides": [], "jobs": [{"job_id": "17"}]}
    record = output_dir / "slurm" / RUN_RECORD
    record.write_text(json.dumps(other))
    before = record.stat().st_mtime_ns
    argv = ["--config-file", PROJECT, "--gpus-per-node", "0", "--resume", f"train.output_dir={output_dir}"]
    assert script.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{output_dir}/slurm holds another run: /elsewhere/projects/loce.py with [] (jobs ['17'])" in err
    assert "nothing was submitted" in err
    assert json.loads(record.read_text()) == other and record.stat().st_mtime_ns == before
    assert sorted(os.listdir(output_dir / "slurm")) == [RUN_RECORD]
    assert not any(c.startswith("sbatch") for c in called(calls))


def test_checkpoints_of_this_run_need_resume_and_a_queued_job_blocks(script, tmp_path, fake_slurm, capsys):
    bin_dir, calls = fake_slurm
    output_dir = tmp_path / "run"
    (output_dir / "pretrain").mkdir(parents=True)
    checkpoint = output_dir / "pretrain" / "model_0000001.pth"
    checkpoint.write_bytes(b"weights")
    argv = ["--config-file", PROJECT, "--gpus-per-node", "0", f"train.output_dir={output_dir}"]
    assert script.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{output_dir} already holds a run's checkpoints (['{checkpoint}']): add --resume to continue it" in err
    assert not (output_dir / "slurm").exists()

    assert script.main([*argv, "--resume"]) == 0  # continues this run
    assert "Submitted job 4242" in capsys.readouterr().out
    (bin_dir / "squeue").write_text(f'#!/bin/sh\necho "squeue $*" >> {calls}\necho "4242 RUNNING"\n')
    record = (output_dir / "slurm" / RUN_RECORD).read_text()
    assert script.main([*argv, "--resume"]) == 2
    assert "job(s) {'4242': 'RUNNING'} of this run are still in the queue" in capsys.readouterr().err
    assert (output_dir / "slurm" / RUN_RECORD).read_text() == record and checkpoint.read_bytes() == b"weights"
    assert [c for c in called(calls) if c.startswith("sbatch")] and "squeue --noheader" in called(calls)[-1]


def test_restart_trains_unfinished_phases_again_once_and_a_requeue_resumes(script, tmp_path, fake_slurm, capsys):
    """--restart is accepted on a folder with checkpoints and reaches the job; the job requeued (Slurm's restart
    count, or its own requeue) resumes instead of removing its checkpoints again."""
    output_dir = tmp_path / "run"
    (output_dir / "pretrain").mkdir(parents=True)
    (output_dir / "pretrain" / "model_0000001.pth").write_bytes(b"weights")
    argv = ["--config-file", PROJECT, "--gpus-per-node", "0", f"train.output_dir={output_dir}", "--restart"]
    assert script.main(argv) == 0
    assert "Submitted job 4242" in capsys.readouterr().out
    record = json.loads((output_dir / "slurm" / RUN_RECORD).read_text())
    assert record["jobs"][0]["restart"] and not record["jobs"][0]["resume"]
    with open(output_dir / "slurm" / "4242_submitted.pkl", "rb") as f:
        job = pickle.load(f).function
    assert job.train_args.restart and not job.train_args.resume
    requeued = job.checkpoint().function.train_args
    assert requeued.resume and not requeued.restart and job.train_args.restart  # the original job is unchanged


def interrupted_job(tmp_path, max_requeues=2):
    """A job of 2 CPU processes, its Slurm environment (job 77, its submitted pickle) and the stop."""
    args = SimpleNamespace(config_file=PROJECT, opts=[], resume=False, eval_only=False, phase=None)
    job = SlurmTrainJob(args, tasks_per_node=2, use_gpus=False, max_requeues=max_requeues, timeout_min=20)
    submitted = tmp_path / "77_submitted.pkl"
    submitted.write_bytes(b"the original job")
    env = SimpleNamespace(job_id="77", paths=SimpleNamespace(submitted_pickle=submitted))
    checkpoint = str(tmp_path / "run" / "finetune" / "model_0000004.pth")
    return job, env, launch.TrainingInterrupted("stopped", checkpoint=checkpoint, iteration=4)


def test_a_stopped_job_requeues_itself_to_resume(tmp_path, fake_slurm):
    _, calls = fake_slurm
    job, env, stopped = interrupted_job(tmp_path)
    with pytest.raises(SystemExit):
        job._requeue_or_stop(env, stopped, restarts=1)
    assert called(calls) == ["scontrol requeue 77"]
    with open(env.paths.submitted_pickle, "rb") as f:
        requeued = pickle.load(f)
    assert requeued.function.train_args.resume and not job.train_args.resume
    assert (requeued._timeout_min, requeued._timeout_countdown) == (20, 1)


def test_a_stopped_job_at_the_requeue_limit_stops_and_says_how_to_continue(tmp_path, fake_slurm):
    _, calls = fake_slurm
    job, env, stopped = interrupted_job(tmp_path, max_requeues=2)
    with pytest.raises(
        RequeueLimitReached,
        match=r"job 77 was preempted or timed out and is NOT requeued: it was requeued 2 times already, the limit "
        r"\(--max-requeues 2\). It resumes from .*/finetune/model_0000004.pth \(iteration 4\); submit the "
        r"same command again with --resume",
    ):
        job._requeue_or_stop(env, stopped, restarts=2)
    assert called(calls) == [] and env.paths.submitted_pickle.read_bytes() == b"the original job"
