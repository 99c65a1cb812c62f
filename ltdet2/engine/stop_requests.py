"""Stop requests (preemption, time-out): a signal sets a flag; the training loop checks it after every iteration, on
every rank together, saves a checkpoint of that iteration and stops (:class:`ltdet2.engine.train_loop.StopOnRequest`)
with :class:`TrainingInterrupted`.
"""

import logging
import os
import signal

import torch
import torch.distributed as dist

from detectron2.utils import comm

logger = logging.getLogger("detectron2")

__all__ = [
    "INTERRUPTED_EXIT_STATUS",
    "TrainingInterrupted",
    "arm_stop_signal",
    "disarm_stop_requests",
    "request_stop",
    "stop_requests_armed",
    "stop_requested_on_any_rank",
]


# the exit status of a training process that stopped on request after saving a checkpoint (sysexits.h's EX_TEMPFAIL:
# a temporary failure, to be run again): scripts/lazyconfig_train_net.py, and the phase runs of scripts/leaderboard.py
INTERRUPTED_EXIT_STATUS = 75


class TrainingInterrupted(RuntimeError):
    """Training stopped on request after saving a checkpoint (``checkpoint``, of ``iteration``), or before a phase
    trained its first step (``phase``: its name; no checkpoint); ``--resume`` continues from it."""

    def __init__(self, message, *, checkpoint=None, iteration=None, phase=None):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.iteration = iteration
        self.phase = phase

    def resume_point(self):
        """Where ``--resume`` continues: the checkpoint and its iteration, or the start of the phase."""
        if self.checkpoint is not None:
            return f"{self.checkpoint} (iteration {self.iteration})"
        return f"the start of phase '{self.phase}'" if self.phase else "the start of the phase"


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
