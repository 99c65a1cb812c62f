"""Processes and ranks: the training entry point, decisions taken on rank 0 for every rank, process
groups from a scheduler's environment, and stop requests (preemption, time-out).

Nothing here calls torch.distributed in a single process: with one process, :func:`on_main_process`
runs its function and :func:`raise_if_any_rank_failed` raises the local error, and nothing else.
"""

import gc
import logging
import os
import pickle
import signal
from datetime import timedelta

import torch
import torch.distributed as dist

from detectron2.utils import comm

logger = logging.getLogger("detectron2")

__all__ = [
    "train_main",
    "split_flags_from_overrides",
    "on_main_process",
    "raise_if_any_rank_failed",
    "init_process_group",
    "close_process_group",
    "TrainingInterrupted",
    "arm_stop_signal",
    "request_stop",
    "stop_requests_armed",
    "stop_requested_on_any_rank",
]


def train_main(args):
    """Loads ``args.config_file`` with ``args.opts``, sets up logging and seeds (Detectron2's
    ``default_setup``) and runs the phases; ``args``: the training script's parsed command line."""
    from detectron2.engine import default_setup

    from .phases import load_config, run_phases

    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    # ltdet2's own modules log under "ltdet2.*": the same console and log.txt as Detectron2's logger (otherwise
    # their INFO lines, e.g. what a derived dataset selected, would reach no handler)
    from detectron2.utils.comm import get_rank
    from detectron2.utils.logger import setup_logger

    setup_logger(cfg.train.output_dir, distributed_rank=get_rank(), name="ltdet2", abbrev_name="ltdet2")
    return run_phases(
        cfg,
        resume=args.resume,
        only=args.phase,
        eval_only=args.eval_only,
        eval_checkpoint=checkpoint_to_evaluate(args.opts) if args.eval_only else None,
    )


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


# ---------------------------------------------------------------------------------------------------
# decisions on rank 0


class _Raised:
    """An exception travelling from one rank to the others."""

    def __init__(self, error, rank):
        self.rank = rank
        try:  # the exception itself when it pickles, else its text
            pickle.loads(pickle.dumps(error))
            self.error = error
        except Exception:
            self.error = RuntimeError(f"{type(error).__name__}: {error}")


def on_main_process(fn):
    """Runs ``fn()`` on rank 0 only and returns its result on every rank (a collective: every rank
    calls it). An exception ``fn`` raises is raised on every rank, so that no rank waits for the others
    in a later collective. Use it for what must not differ between ranks: whether a phase is finished,
    which checkpoint to resume from (ranks whose folders are not in sync would otherwise disagree)."""
    if comm.get_world_size() == 1:
        return fn()
    outcome = None
    if comm.is_main_process():
        try:
            outcome = fn()
        except Exception as e:
            outcome = _Raised(e, 0)
    outcome = comm.all_gather(outcome)[0]
    if isinstance(outcome, _Raised):
        if comm.is_main_process():
            raise outcome.error
        raise outcome.error from RuntimeError("raised on rank 0")
    return outcome


def raise_if_any_rank_failed(error=None):
    """A collective: each rank passes the exception it met (or None). If any rank met one, every rank
    raises: a failed rank its own, the others a RuntimeError naming the lowest failed rank and its error.
    Single process: raises ``error`` if given."""
    if comm.get_world_size() == 1:
        if error is not None:
            raise error
        return
    failures = [f for f in comm.all_gather(None if error is None else _Raised(error, comm.get_rank())) if f]
    if error is not None:
        raise error
    if failures:
        first = failures[0]
        raise RuntimeError(f"rank {first.rank} failed: {type(first.error).__name__}: {first.error}") from first.error


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


# ---------------------------------------------------------------------------------------------------
# stop requests: a signal sets a flag; the training loop checks it after every iteration, on every
# rank together, saves a checkpoint of that iteration and stops (ltdet2.engine.train_loop.StopOnRequest)


class TrainingInterrupted(RuntimeError):
    """Training stopped on request after saving a checkpoint; ``--resume`` continues from it."""

    def __init__(self, message, *, checkpoint=None, iteration=None):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.iteration = iteration


_STOP = {"armed": False, "reason": None}


def arm_stop_signal(signum=signal.SIGUSR2):
    """Makes signal ``signum`` (Slurm's and submitit's preemption / time-out warning: SIGUSR2) a stop
    request, and arms the check in the training loop. Returns the previous handler."""
    process = os.getpid()

    def handler(received, frame):
        if os.getpid() == process:  # not in data loader workers, which inherit the handler and get the signal too
            request_stop(f"signal {signal.Signals(received).name}")

    previous = signal.signal(signum, handler)
    _STOP["armed"] = True
    return previous


def disarm_stop_requests():
    _STOP.update(armed=False, reason=None)


def request_stop(reason):
    """Asks training to save a checkpoint and stop after the current iteration (on every rank)."""
    if _STOP["reason"] is None:
        logger.warning(f"stop requested ({reason}): saving a checkpoint after this iteration, then stopping")
    _STOP["reason"] = reason
    _STOP["armed"] = True


def stop_requests_armed():
    return _STOP["armed"]


def stop_requested_on_any_rank():
    """Whether any rank received a stop request (a collective when there are several processes: every
    rank calls it at the same iteration)."""
    requested = _STOP["reason"] is not None
    if comm.get_world_size() == 1:
        return requested
    device = "cuda" if dist.get_backend() == dist.Backend.NCCL else "cpu"
    flag = torch.tensor([int(requested)], device=device)
    dist.all_reduce(flag)
    return bool(flag.item())
