"""Processes: the training entry point (:func:`train_main`) and its command line, one run per output folder
(:class:`RunLock`), and process groups from a scheduler's environment.

The decisions taken on rank 0 for every rank (:mod:`ltdet2.engine.ranks`) and the stop requests
(:mod:`ltdet2.engine.stop_requests`) have modules of their own, below the engine's others; their names are
importable from here too, with the rest of what a process that trains needs.
"""

import contextlib
import gc
import json
import logging
import os
import shlex
import signal
import socket
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta

import torch
import torch.distributed as dist

from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from . import phases
from .ranks import on_main_process, raise_if_any_rank_failed
from .stop_requests import (
    INTERRUPTED_EXIT_STATUS,
    TrainingInterrupted,
    arm_stop_signal,
    disarm_stop_requests,
    request_stop,
    stop_requested_on_any_rank,
    stop_requests_armed,
)

logger = logging.getLogger("detectron2")

__all__ = [
    "train_main",
    "train_main_until_stopped",
    "forward_stop_signal_to_children",
    "split_flags_from_overrides",
    "checkpoint_to_evaluate",
    "train_command",
    "train_overrides",
    "RUN_LOCK_FILE",
    "FORCE_LOCK_ENV",
    "OutputDirLocked",
    "RunLock",
    "on_main_process",
    "raise_if_any_rank_failed",
    "init_process_group",
    "close_process_group",
    "INTERRUPTED_EXIT_STATUS",
    "TrainingInterrupted",
    "arm_stop_signal",
    "disarm_stop_requests",
    "request_stop",
    "stop_requests_armed",
    "stop_requested_on_any_rank",
]


def train_main(args):
    """Loads ``args.config_file`` with ``args.opts``, sets up logging and seeds (Detectron2's
    ``default_setup``) and runs the phases; ``args``: the training script's parsed command line."""
    # phases.load_config / phases.run_phases are looked up at the call (tests replace them in that module)
    cfg = phases.load_config(args.config_file, args.opts)
    # before anything is written in the folder (default_setup writes config.yaml and log.txt); rank 0 holds it
    lock = RunLock(cfg.train.output_dir, force=getattr(args, "force_lock", False))
    on_main_process(lock.acquire)  # refused: raised on every rank
    try:
        default_setup(cfg, args)
        # ltdet2's own modules log under "ltdet2.*": the same console and log.txt as Detectron2's logger (otherwise
        # their INFO lines, e.g. what a derived dataset selected, would reach no handler)
        setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="ltdet2", abbrev_name="ltdet2")
        return phases.run_phases(
            cfg,
            resume=args.resume,
            restart=getattr(args, "restart", False),
            only=args.phase,
            eval_only=args.eval_only,
            eval_checkpoint=checkpoint_to_evaluate(args.opts) if args.eval_only else None,
        )
    finally:
        if comm.is_main_process():
            lock.release()


def train_main_until_stopped(args):
    """:func:`train_main` with SIGUSR2 as a stop request (:func:`arm_stop_signal`): training saves a checkpoint of
    the iteration it is in when the signal comes and the process exits with status :data:`INTERRUPTED_EXIT_STATUS`,
    after a warning naming the checkpoint; ``--resume`` continues exactly from it. A signal during a phase's final
    evaluation (or between phases) lets that evaluation finish and stops before the next phase trains a step. The
    signal's previous handler is put back when training ends. scripts/lazyconfig_train_net.py trains so (a Slurm
    job's signal is :mod:`ltdet2.engine.launch_slurm`'s: it requeues the job)."""
    previous = arm_stop_signal()
    try:
        return train_main(args)
    except TrainingInterrupted as stopped:
        logger.warning(str(stopped))
        # every rank stopped at the same point; rank 0 may still be writing the checkpoint, and a launcher ends the
        # other processes as soon as one exits with a non-zero status
        comm.synchronize()
        raise SystemExit(INTERRUPTED_EXIT_STATUS) from None
    finally:
        disarm_stop_requests()
        if previous is not None:  # None: a handler that was not set from Python, which cannot be put back
            signal.signal(signal.SIGUSR2, previous)


def forward_stop_signal_to_children():
    """In a launcher process that trains in child processes (Detectron2's ``launch`` with several processes): passes
    SIGUSR2 on to each of them (each saves its checkpoint and stops, :func:`train_main_until_stopped`) instead of
    ending this process, SIGUSR2's default."""
    import multiprocessing

    def handler(signum, frame):
        for child in multiprocessing.active_children():
            os.kill(child.pid, signum)

    signal.signal(signal.SIGUSR2, handler)


def split_flags_from_overrides(parser, opts):
    """(overrides, flags) of ``opts``: an ``argparse`` parser with a ``nargs=REMAINDER`` positional for
    the ``key=value`` overrides (Detectron2's) puts every token after the first override there, flags
    included; the flags (with their values: ``--phase NAME``, ``--nodes=4``) are to be parsed again."""
    overrides, flags = [], []
    tokens = iter(opts)
    for token in tokens:
        if not token.startswith("-"):
            overrides.append(token)
            continue
        flags.append(token)
        action = parser._option_string_actions.get(token.split("=", 1)[0])
        if action is not None and action.nargs != 0 and "=" not in token:
            flags.append(next(tokens, ""))
    return overrides, flags


def checkpoint_to_evaluate(opts):
    """With --eval-only, a ``train.init_checkpoint=...`` given on the command line is the checkpoint to
    evaluate (as in Detectron2's script); otherwise each phase's final checkpoint is."""
    given = [o.split("=", 1)[1] for o in opts if o.startswith("train.init_checkpoint=")]
    return given[-1] if given else None


def train_command(train_script, config_file, *, seed, output_dir, overrides=(), phase=None):
    """The command line (a list) that trains ``config_file`` with ``train_script`` (scripts/lazyconfig_train_net.py)
    in its own process: resumed, ``train.seed`` and ``train.output_dir`` set, then ``overrides``; with ``phase``,
    only that phase (``--phase``). Used by the scripts that run a project for several seeds or entries."""
    command = [sys.executable, train_script, "--config-file", config_file, "--resume"]
    command += ["--phase", phase] if phase else []
    return command + train_overrides(seed=seed, output_dir=output_dir, overrides=overrides)


def train_overrides(*, seed, output_dir, overrides=()):
    """The overrides :func:`train_command` gives the training process, in its order: ``train.seed`` and
    ``train.output_dir``, then ``overrides`` (which win). ``load_config(config_file, train_overrides(...))`` is the
    config that process trains."""
    return [f"train.seed={seed}", f"train.output_dir={output_dir}", *overrides]


# ---------------------------------------------------------------------------------------------------
# one run per output folder

RUN_LOCK_FILE = "run.lock"
FORCE_LOCK_ENV = "LTDET2_FORCE_LOCK"  # "1": take over the output folder's lock whoever holds it (--force-lock)
HELD_LOCKS_ENV = "LTDET2_HELD_RUN_LOCKS"  # the tokens of the locks this process's ancestors hold (inherited)
UNWRITTEN_LOCK_AGE_S = 60  # a lock still empty or unreadable after this long was left by a run killed writing it


class OutputDirLocked(RuntimeError):
    """Another run holds the output folder's :class:`RunLock`."""


class RunLock:
    """The lock of one run on an output folder, held for the run's life (a context manager, or :meth:`acquire` and
    :meth:`release`): ``<folder>/run.lock``, created with ``O_CREAT | O_EXCL``, which is atomic on local filesystems
    and on a cluster's shared ones (NFS v3 and later, Lustre), where ``fcntl`` / ``flock`` locks are not reliable. It
    records the run's host, pid, command line and start time (JSON). One lock per run, not per rank: the training
    script's rank 0 takes it (:func:`train_main`), the leaderboard takes each seed's folder.

    A lock that exists is taken over, with a warning, when it is stale:

    * its process ran on this host and is gone (its pid is not running, or runs another program now);
    * it is an earlier run of this Slurm job (a requeue: the same ``SLURM_JOB_ID``, a higher ``SLURM_RESTART_COUNT``);
    * it has stayed empty or unreadable for over :data:`UNWRITTEN_LOCK_AGE_S` seconds (a run killed while writing it);
    * or with ``force`` (``--force-lock``, or ``LTDET2_FORCE_LOCK=1``), whoever holds it. A lock of a run on another
      host is never taken over otherwise, whatever its age (its process cannot be checked from here): when that run
      is gone, force it, or delete the file.

    Otherwise :meth:`acquire` raises :class:`OutputDirLocked` naming the folder and the holder. A process the holder
    started (the leaderboard's training processes) runs under the holder's lock: it finds the lock's token in the
    environment it inherited (``LTDET2_HELD_RUN_LOCKS``), and neither takes nor releases it.

    While the lock is held, SIGTERM raises :class:`SystemExit` in the holding process (when nothing else handles
    SIGTERM: Detectron2 and plain Python end at once), so that the run's ``finally`` blocks release it. A kill
    (SIGKILL) leaves the lock, which the next run on this host takes over (its pid is gone)."""

    def __init__(self, folder, *, force=False):
        self.folder = os.path.abspath(folder)
        self.path = os.path.join(self.folder, RUN_LOCK_FILE)
        self.force = bool(force) or os.environ.get(FORCE_LOCK_ENV, "") not in ("", "0")
        self.holder = None  # this run's record, while it holds the lock
        self._environment = None  # HELD_LOCKS_ENV before the lock was taken
        self._handles_sigterm = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc_info):
        self.release()

    def acquire(self):
        """Takes the lock (or runs under the one a parent process holds); :class:`OutputDirLocked` when another run
        holds it."""
        os.makedirs(self.folder, exist_ok=True)
        for _ in range(3):  # a lock released or taken over by another run meanwhile: look again
            if self._create():
                self._hold()
                return
            found = read_run_lock(self.path)
            if found is None:
                continue
            if found.get("token") in _inherited_tokens() and found.get("pid") != os.getpid():
                logger.info(f"{self.folder}: running under the lock of the process that started this one ({self.path})")
                return
            reason = self._stale_reason(found)
            if reason is None:
                raise OutputDirLocked(self._locked_message(found))
            if self._remove_stale(found):
                logger.warning(f"{self.folder}: the lock of {describe_lock_holder(found)} taken over: {reason}")
        raise OutputDirLocked(f"{self.folder}: other runs are taking its lock {self.path} at the same time; try again")

    def release(self):
        """Removes the lock if it is still this run's (a run that forced it out keeps its own); a no-op when this
        run does not hold it."""
        if self.holder is None:
            return
        holder, self.holder = self.holder, None
        found = read_run_lock(self.path)
        if found is not None and found.get("token") == holder["token"]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
        else:
            logger.warning(f"{self.path} is no longer this run's lock ({describe_lock_holder(found)}): left as it is")
        if self._handles_sigterm and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self._handles_sigterm = False
        if self._environment is None:
            os.environ.pop(HELD_LOCKS_ENV, None)
        else:
            os.environ[HELD_LOCKS_ENV] = self._environment

    def _create(self):
        """Creates the lock file holding this run's record; False when it exists."""
        holder = _this_run()
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(holder, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            os.remove(self.path)
            raise
        self.holder = holder
        return True

    def _hold(self):
        self._environment = os.environ.get(HELD_LOCKS_ENV)
        os.environ[HELD_LOCKS_ENV] = ",".join(filter(None, [self._environment, self.holder["token"]]))
        self._handles_sigterm = _exit_on_sigterm()

    def _stale_reason(self, found):
        """Why the lock ``found`` (its record; {} when unreadable) may be taken over, or None."""
        if self.force:
            return f"forced (--force-lock or {FORCE_LOCK_ENV}=1)"
        if not found:
            age = _age_s(self.path)
            if age is not None and age > UNWRITTEN_LOCK_AGE_S:
                return f"it has been empty or unreadable for {age:.0f} s (a run killed while writing it)"
            return None
        return stale_lock_reason(found)

    def _remove_stale(self, found):
        """Moves the stale lock aside and removes it; False when another run took it first (one of several runs
        taking it over at once wins: the rename is atomic)."""
        aside = f"{self.path}.stale-{uuid.uuid4().hex}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        if read_run_lock(aside) != found:  # another run's fresh lock replaced the stale one meanwhile: put it back
            os.rename(aside, self.path)
            return False
        os.remove(aside)
        return True

    def _locked_message(self, found):
        text = (
            f"{self.folder} is in use by another run: {describe_lock_holder(found)} (its lock: {self.path}). Two runs "
            f"in one output folder would both write its checkpoints, phase records and metrics: wait for that run to "
            f"end, or give this one another train.output_dir"
        )
        if found.get("host") != socket.gethostname():
            text += (
                f". If that run is gone (a process of another host cannot be checked from here), run again with "
                f"--force-lock ({FORCE_LOCK_ENV}=1), or delete {self.path}"
            )
        return text


def read_run_lock(path):
    """The record of lock ``path``: a dict, {} when the file is empty or unreadable, None when there is none."""
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def describe_lock_holder(record):
    if not record:
        return "a lock that is empty or unreadable (being written, or left by a run killed while writing it)"
    return f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started')}: {record.get('command')}"


def stale_lock_reason(record):
    """Why the run that wrote lock ``record`` is gone, or None when it may still run."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and record.get("slurm_job_id") == job and _slurm_restart_count() > record.get("slurm_restart_count", 0):
        return f"it was taken by an earlier run of this Slurm job ({job}, requeued since)"
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int):
        return None
    if not _pid_running(pid):
        return f"its process (pid {pid}) is gone"
    started = record.get("pid_start")
    if started is not None and _process_start(pid) not in (None, started):
        return f"pid {pid} is another process now"
    return None


def _this_run():
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _process_start(os.getpid()),
        "command": shlex.join(sys.argv),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "token": uuid.uuid4().hex,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart_count": _slurm_restart_count(),
    }


def _inherited_tokens():
    return set(filter(None, os.environ.get(HELD_LOCKS_ENV, "").split(",")))


def _slurm_restart_count():
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def _pid_running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _process_start(pid):
    """When process ``pid`` started (clock ticks since boot, Linux' /proc), None where that cannot be read: tells a
    reused pid from the process that wrote a lock."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _age_s(path):
    try:
        return time.time() - os.path.getmtime(path)
    except FileNotFoundError:
        return None


def _exit_on_sigterm():
    """Makes SIGTERM raise SystemExit in this process, so that ``finally`` blocks run, when nothing else handles it
    (and this is the main thread); returns whether it did. Forked children (data loader workers) end at once."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    process = os.getpid()

    def handler(signum, frame):
        if os.getpid() != process:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    return True


# ---------------------------------------------------------------------------------------------------
# process groups


def init_process_group(*, rank, world_size, local_rank, local_world_size, dist_url, use_gpu, timeout_min=30):
    """Joins the process group as Detectron2's ``launch`` workers do (NCCL with GPUs, gloo without),
    for processes started by a scheduler (one per GPU, or per CPU process): the local process group,
    the process's GPU (``local_rank``; the only visible one when the scheduler binds one GPU per task)."""
    if use_gpu:
        torch.cuda.set_device(local_rank if torch.cuda.device_count() > local_rank else 0)
    if world_size > 1:
        dist.init_process_group(
            backend="NCCL" if use_gpu else "GLOO",
            init_method=dist_url,
            world_size=world_size,
            rank=rank,
            timeout=timedelta(minutes=timeout_min),
        )
        comm.create_local_process_group(local_world_size)
        comm.synchronize()


def close_process_group():
    """Leaves the process group (after collecting what still uses it: DDP models of an interrupted run)."""
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
