"""Training on a Slurm cluster through submitit (as detrex, Detic and PACO do); ``scripts/slurm_launch.py``
is its command line.

One Slurm task per GPU (``--gpus-per-node G`` tasks on each of ``--nodes`` nodes), or, without GPUs,
``--tasks-per-node`` CPU processes joined with gloo. The tasks find each other from the Slurm
environment (rank, local rank, first node of the job as the rendezvous host, a port from the job id).

Preemption and time-out: Slurm (through submitit's ``--signal=USR2@<delay>``) warns the job before it
stops it. Every rank then finishes its iteration, a checkpoint of that iteration is saved with every
rank's state, rank 0 requeues the job (``scontrol requeue``, same job id) and the job ends; when it runs
again it continues with ``--resume``: finished phases are skipped, the interrupted phase resumes from
that checkpoint with its memories and indicators. After ``max_requeues`` requeues the job stops instead,
with a message naming the checkpoint and the command that continues it. A job that Slurm itself
requeues (node failure, preemption without the warning signal) also comes back with ``--resume``.

Files, all in the run's output folder (``train.output_dir``): each phase's ``log.txt`` (rank r > 0:
``log.txt.rank<r>``), ``metrics.json``, TensorBoard events and checkpoints as in a local run, and in
``slurm/`` the Slurm logs ``<job id>_<rank>_log.out`` / ``_log.err``, submitit's pickles and
``launch.json``, the run's record (config, overrides, job ids) that a later submission is checked against.
"""

import argparse
import copy
import gc
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time

from ..utils.json_io import read_json, write_json_atomic
from .launch import close_process_group, init_process_group, train_main
from .project_config import load_config
from .ranks import on_main_process
from .stop_requests import TrainingInterrupted, arm_stop_signal

logger = logging.getLogger("detectron2")

RUN_RECORD = "launch.json"
SLURM_FOLDER = "slurm"
DEFAULT_MAX_REQUEUES = 10
SIGNAL_DELAY_S = 120  # the warning before a time-out: time to finish an iteration and save a checkpoint

__all__ = [
    "SlurmLaunchError",
    "SubmittedWithoutJobId",
    "RequeueLimitReached",
    "SlurmTrainJob",
    "check_slurm_available",
    "check_partition",
    "check_job_folder",
    "executor_parameters",
    "submit",
]


class SlurmLaunchError(RuntimeError):
    """The job cannot be submitted as asked (nothing was submitted, nothing written)."""


class SubmittedWithoutJobId(RuntimeError):
    """sbatch accepted the job (exit status 0) but printed no job id: not refused, the job may be queued; the
    submission is in the run's record with its job id unknown, its files kept."""


class RequeueLimitReached(RuntimeError):
    """A preempted or timed-out job that was requeued ``max_requeues`` times already; it stops."""


# ---------------------------------------------------------------------------------------------------
# in the job


def rendezvous_port(job_id):
    """The port rank 0 listens on: from the job id, so every task (and a requeued run) agrees."""
    return 20000 + int(str(job_id).split("_")[0]) % 20000


def restart_count():
    """How many times Slurm has restarted (requeued) this job: ``SLURM_RESTART_COUNT``."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


class SlurmTrainJob:
    """What a submitted job runs, in each of its tasks: the training script's ``train_main(train_args)``
    in a process group built from the Slurm environment.

    Args:
        train_args: the training script's arguments (``config_file``, ``opts``, ``resume``, ``restart``, ``phase``,
            ``eval_only``).
        tasks_per_node: processes per node (one per GPU).
        use_gpus: NCCL and one GPU per process, or gloo on CPUs.
        max_requeues: requeues after a preemption or time-out before the job stops instead.
        timeout_min: the job's time limit (kept with the requeued job, as submitit does).
    """

    def __init__(self, train_args, *, tasks_per_node, use_gpus, max_requeues=DEFAULT_MAX_REQUEUES, timeout_min=0):
        self.train_args = train_args
        self.tasks_per_node = tasks_per_node
        self.use_gpus = use_gpus
        self.max_requeues = max_requeues
        self.timeout_min = timeout_min

    def __call__(self):
        import submitit  # here: only Slurm jobs use submitit

        env = submitit.JobEnvironment()
        args = copy.copy(self.train_args)
        restarts = restart_count()
        if restarts > 0:  # requeued, by this job or by Slurm: continue where it stopped (never restart again)
            args.resume, args.restart = True, False
        arm_stop_signal()  # replaces submitit's USR2 handler: checkpoint at the end of the iteration, on every rank
        if not self.use_gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        init_process_group(
            rank=env.global_rank,
            world_size=env.num_tasks,
            local_rank=env.local_rank,
            local_world_size=self.tasks_per_node,
            dist_url=f"tcp://{env.hostnames[0]}:{rendezvous_port(env.job_id)}",
            use_gpu=self.use_gpus,
        )
        print(
            f"[ltdet2] job {env.job_id}, rank {env.global_rank} of {env.num_tasks} (node {env.node}, local rank "
            f"{env.local_rank}); restarts so far: {restarts}; resume: {args.resume}",
            flush=True,
        )
        try:
            results = train_main(args)
        except TrainingInterrupted as e:
            stopped = e.with_traceback(None)  # drops the interrupted trainer (data loader workers, DDP model)
        else:
            close_process_group()
            return results
        gc.collect()  # the trainer goes now, not when the requeue's SIGTERM arrives
        self._requeue_or_stop(env, stopped, restarts)

    def _requeue_or_stop(self, env, stopped, restarts):
        """Rank 0 requeues the job (or, at the limit, every rank raises :class:`RequeueLimitReached`);
        then every process exits, without a result, as submitit's own handler does."""

        def requeue():
            if restarts >= self.max_requeues:
                raise RequeueLimitReached(requeue_limit_message(env.job_id, restarts, self.max_requeues, stopped))
            delayed = self.checkpoint()
            delayed.set_timeout(self.timeout_min, self.max_requeues - restarts)
            path = env.paths.submitted_pickle
            temporary = path.with_name(path.name + ".tmp")
            delayed.dump(temporary)
            os.replace(temporary, path)
            subprocess.run(["scontrol", "requeue", str(env.job_id)], check=True, timeout=120)
            logger.warning(
                f"job {env.job_id} requeued (requeue {restarts + 1} of at most {self.max_requeues}); it resumes from "
                f"{stopped.resume_point()}"
            )

        try:
            on_main_process(requeue)
        finally:
            close_process_group()
        sys.exit(-1)

    def checkpoint(self, *args, **kwargs):
        """The job to run when requeued: the same, with ``--resume`` (submitit's Checkpointable protocol)."""
        from submitit.helpers import DelayedSubmission  # here: only Slurm jobs use submitit

        resumed = copy.copy(self.train_args)
        resumed.resume, resumed.restart = True, False
        job = SlurmTrainJob(
            resumed,
            tasks_per_node=self.tasks_per_node,
            use_gpus=self.use_gpus,
            max_requeues=self.max_requeues,
            timeout_min=self.timeout_min,
        )
        return DelayedSubmission(job)


def requeue_limit_message(job_id, restarts, max_requeues, stopped):
    return (
        f"job {job_id} was preempted or timed out and is NOT requeued: it was requeued {restarts} times already, "
        f"the limit (--max-requeues {max_requeues}). It resumes from "
        f"{stopped.resume_point()}; submit the same command again with --resume to continue from it"
    )


# ---------------------------------------------------------------------------------------------------
# submission checks: each raises SlurmLaunchError before anything is written or submitted


def check_slurm_available():
    """Slurm's ``sbatch`` and ``srun`` are on the PATH."""
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        raise SlurmLaunchError(
            f"{' and '.join(missing)} not found on the PATH: this machine is not a Slurm login node. Submit from "
            f"one, or train here with scripts/lazyconfig_train_net.py --num-gpus N (scripts/slurm_local.sh starts a "
            f"one-node Slurm for tests)"
        )


def slurm_partitions():
    """The cluster's partition names (``sinfo``), or None when ``sinfo`` cannot tell."""
    if shutil.which("sinfo") is None:
        return None
    done = subprocess.run(["sinfo", "--noheader", "--format=%R"], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return None
    return sorted({line.strip() for line in done.stdout.splitlines() if line.strip()})


def check_partition(partition):
    if partition is None:
        return
    known = slurm_partitions()
    if known is not None and partition not in known:
        raise SlurmLaunchError(f"--partition {partition!r}: this cluster has no such partition (sinfo lists {known})")


def phase_outputs(output_dir):
    """What an earlier run left in ``output_dir``: its checkpoints and finished-phase records."""
    found = []
    for folder, _, files in os.walk(output_dir):
        if os.path.basename(folder) == SLURM_FOLDER:
            continue
        found += [os.path.join(folder, f) for f in files if f.endswith(".pth") or f == "phase_done.json"]
    return sorted(found)


def same_run(record, config_file, overrides):
    return record.get("config_file") == config_file and record.get("overrides") == list(overrides)


def live_jobs(job_ids):
    """{job id: state} of those of ``job_ids`` Slurm still has pending or running."""
    job_ids = [job for job in job_ids if job]  # a submission whose job id sbatch did not print: None
    if not job_ids or shutil.which("squeue") is None:
        return {}
    done = subprocess.run(
        ["squeue", "--noheader", "--format=%i %T", "--jobs=" + ",".join(job_ids)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    states = dict(line.split(None, 1) for line in done.stdout.splitlines() if len(line.split()) == 2)
    return {job: state for job, state in states.items() if state not in ("COMPLETED", "FAILED", "CANCELLED")}


def check_job_folder(job_folder, output_dir, config_file, overrides, *, resume, restart=False):
    """The run's record in ``job_folder``: a folder holding another run (another config or other
    overrides) is refused; so is this run's folder when it holds checkpoints and neither ``resume`` nor ``restart``
    is on (they would be overwritten), or while one of its jobs is still pending or running. Returns the record."""
    record_file = os.path.join(job_folder, RUN_RECORD)
    record = read_json(record_file, what="run record") if os.path.isfile(record_file) else None
    if record is not None and not same_run(record, config_file, overrides):
        raise SlurmLaunchError(
            f"{job_folder} holds another run: {record.get('config_file')} with {record.get('overrides')} (jobs "
            f"{[j['job_id'] for j in record.get('jobs', [])]}), not {config_file} with {list(overrides)}. Choose "
            f"another output folder (train.output_dir=...) or --job-dir; nothing was submitted"
        )
    if record is not None:
        live = live_jobs([j["job_id"] for j in record.get("jobs", [])])
        if live:
            raise SlurmLaunchError(
                f"job(s) {live} of this run are still in the queue: wait for them or scancel them; nothing was "
                f"submitted"
            )
    earlier = phase_outputs(output_dir) if os.path.isdir(output_dir) else []
    if earlier and not (resume or restart):
        raise SlurmLaunchError(
            f"{output_dir} already holds a run's checkpoints ({earlier[:3]}{' ...' if len(earlier) > 3 else ''}): "
            f"add --resume to continue it (finished phases are skipped), --restart to train its unfinished phases "
            f"again from their beginning, or choose another output folder "
            f"(train.output_dir=...); nothing was submitted"
        )
    return record or {"config_file": config_file, "overrides": list(overrides), "jobs": []}


def check_batch_sizes(cfg, world_size):
    """Every phase's ``dataloader.train.total_batch_size`` divides among the processes."""
    namespaces = cfg.phases.items() if "phases" in cfg else [("", cfg)]
    for name, namespace in namespaces:
        try:
            total = namespace.dataloader.train.total_batch_size
        except (AttributeError, KeyError):
            continue
        if isinstance(total, int) and total % world_size:
            where = f"phases.{name}." if name else ""
            raise SlurmLaunchError(
                f"{where}dataloader.train.total_batch_size={total} does not divide among {world_size} processes "
                f"(nodes x tasks per node): change one of them"
            )


# ---------------------------------------------------------------------------------------------------
# submission


def executor_parameters(args):
    """submitit ``SlurmExecutor.update_parameters`` arguments for the launcher's ``args``."""
    params = dict(
        job_name=args.job_name,
        nodes=args.nodes,
        ntasks_per_node=args.tasks_per_node,
        cpus_per_task=args.cpus_per_task,
        time=args.timeout,
        signal_delay_s=SIGNAL_DELAY_S,
        additional_parameters={"requeue": True},
    )
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    if args.mem:
        params["mem"] = args.mem
    for key in ("partition", "account", "qos", "constraint", "comment"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    for item in args.slurm_option:
        key, _, value = item.partition("=")
        params["additional_parameters"][key.lstrip("-").replace("-", "_")] = value if value else True
    return params


def submit(args):
    """Checks ``args`` (the launcher's command line, parsed), submits the job and records it; returns
    (job id, job folder, output folder). Raises :class:`SlurmLaunchError` before submitting anything
    when a check fails, or when sbatch refuses the job (what the submission wrote is removed then), and
    :class:`SubmittedWithoutJobId` when sbatch exits 0 without printing a job id (recorded, files kept)."""
    check_slurm_available()
    check_partition(args.partition)
    cfg = load_config(args.config_file, args.opts)  # refuses mistyped overrides before the job queues
    world_size = args.nodes * args.tasks_per_node
    check_batch_sizes(cfg, world_size)
    output_dir = os.path.abspath(cfg.train.output_dir)
    job_folder = os.path.abspath(args.job_dir or os.path.join(output_dir, SLURM_FOLDER))
    restart = getattr(args, "restart", False)
    record = check_job_folder(job_folder, output_dir, args.config_file, args.opts, resume=args.resume, restart=restart)

    import submitit  # here: only Slurm jobs use submitit
    from submitit.core.utils import FailedSubmissionError

    train_args = argparse.Namespace(
        config_file=args.config_file,
        opts=[*args.opts, f"train.output_dir={output_dir}"]
        + ([] if args.gpus_per_node or any(o.startswith("train.device=") for o in args.opts) else ["train.device=cpu"]),
        resume=args.resume,
        restart=restart,
        eval_only=args.eval_only,
        phase=args.phase,
        num_gpus=args.tasks_per_node,
        num_machines=args.nodes,
    )
    job = SlurmTrainJob(
        train_args,
        tasks_per_node=args.tasks_per_node,
        use_gpus=bool(args.gpus_per_node),
        max_requeues=args.max_requeues,
        timeout_min=args.timeout,
    )
    created = _first_missing_folder(job_folder)
    os.makedirs(job_folder, exist_ok=True)
    before = set(os.listdir(job_folder))
    executor = submitit.SlurmExecutor(folder=job_folder, max_num_timeout=args.max_requeues)
    executor.update_parameters(**executor_parameters(args))
    submission = {
        "submitted": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": shlex.join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "resume": args.resume,
        "restart": restart,
        "nodes": args.nodes,
        "tasks_per_node": args.tasks_per_node,
        "gpus_per_node": args.gpus_per_node,
    }
    try:
        submitted = executor.submit(job)
    except FailedSubmissionError as e:  # sbatch exited 0 (it ran) but printed no job id
        output = _sbatch_output(e)
        files = sorted(os.path.join(job_folder, name) for name in set(os.listdir(job_folder)) - before)
        record["jobs"] = [
            *record.get("jobs", []),
            {"job_id": None, **submission, "sbatch_output": output, "submission_files": files},
        ]
        write_json_atomic(os.path.join(job_folder, RUN_RECORD), record, indent=2)
        raise SubmittedWithoutJobId(unknown_job_id_message(args, job_folder, output, files)) from e
    except Exception as e:
        _remove_submission_files(job_folder, before, created)
        raise SlurmLaunchError(f"sbatch refused the job: {str(e).strip()}; nothing was submitted") from e
    record["jobs"] = [*record.get("jobs", []), {"job_id": submitted.job_id, **submission}]
    write_json_atomic(os.path.join(job_folder, RUN_RECORD), record, indent=2)
    return submitted.job_id, job_folder, output_dir


def _first_missing_folder(folder):
    """The outermost folder of ``folder``'s path that does not exist yet (None: it exists)."""
    missing = None
    while not os.path.isdir(folder):
        missing, folder = folder, os.path.dirname(folder)
    return missing


def _remove_submission_files(job_folder, before, created):
    """Removes what a failed submission wrote in ``job_folder`` (submitit's pickle and sbatch script: files not in
    ``before``), and the folders it created (``created``: the outermost), when they are empty then."""
    for name in set(os.listdir(job_folder)) - before:
        path = os.path.join(job_folder, name)
        if os.path.isfile(path) or os.path.islink(path):
            os.remove(path)
    if created is None:
        return
    folder = job_folder
    while not os.listdir(folder):
        os.rmdir(folder)
        if folder == created:
            return
        folder = os.path.dirname(folder)


def _sbatch_output(error):
    """What sbatch printed, from submitit's FailedSubmissionError ('Could not make sense of sbatch output "..."')."""
    text = str(error)
    start, end = text.find('"'), text.find('"\n')
    return text[start + 1 : end] if 0 <= start < end else text.strip()


def unknown_job_id_message(args, job_folder, output, files):
    pickles = [f for f in files if f.endswith(".pkl")]
    return (
        f"sbatch accepted the job (exit status 0) but printed no job id ({output!r}): it may be queued. Look for it "
        f"with `squeue --me --name {args.job_name}`. The submission is in {os.path.join(job_folder, RUN_RECORD)} "
        f"with its job id unknown, and its files are kept ({files}): the job reads its pickle as "
        f"{job_folder}/<job id>_submitted.pkl (it waits 60 s for it when it starts), so once you know its id, rename "
        f"{pickles[0] if pickles else 'it'} to that name, or scancel the job and submit again"
    )


def describe_submission(job_id, job_folder, output_dir, args):
    """What the launcher prints after submitting: the job id and where to look."""
    devices = f"{args.gpus_per_node} GPUs" if args.gpus_per_node else f"{args.tasks_per_node} CPU processes"
    return "\n".join(
        [
            f"Submitted job {job_id}: {args.nodes} node(s) x {devices} ({args.nodes * args.tasks_per_node} tasks)"
            + (f", partition {args.partition}" if args.partition else "")
            + f", time limit {args.timeout} min, at most {args.max_requeues} requeues",
            f"  output:     {output_dir}  (each phase's log.txt, metrics.json, checkpoints, results)",
            f"  Slurm logs: {job_folder}/{job_id}_0_log.out  (rank 0; {job_id}_<rank>_log.err: stderr)",
            f"  follow:     squeue -j {job_id};  tail -f {job_folder}/{job_id}_0_log.out",
        ]
    )
