"""Decisions taken on rank 0 for every rank, and errors met on one rank raised on all.

Nothing here calls torch.distributed in a single process: with one process, :func:`on_main_process` runs its
function and :func:`raise_if_any_rank_failed` raises the local error, and nothing else.
"""

import pickle

from detectron2.utils import comm

__all__ = ["on_main_process", "raise_if_any_rank_failed"]


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
