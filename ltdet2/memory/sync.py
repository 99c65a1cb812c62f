"""The ``sync`` policy of the memory stores and the learning-status indicators, and the collectives behind it.

``sync="local"``: every rank keeps its own state. ``sync="global"``: what a rank pushes or
accumulates is all-gathered / all-reduced first, so every rank holds the same state. With one
process, or torch.distributed not initialized, ``global`` behaves as ``local`` and nothing in
torch.distributed is called.

The official code: LOCE's MFS feature memory and RIO's replay memory are per GPU (``local``), while
LOCE's mean score is updated from the entries gathered over all GPUs (``global``, the default of
:class:`~ltdet2.memory.MeanScore`).

Under ``global`` every update is a collective: all ranks must call it at every step, also with an
empty batch.

Which buffers of a model are per rank (for checkpoints) is :mod:`ltdet2.memory.distributed`.
"""

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist

from .base import check_choice

__all__ = [
    "SYNC_POLICIES",
    "check_sync",
    "get_world_size",
    "is_global",
    "all_gather_rows",
    "all_reduce_sum",
    "shared_generator",
]

SYNC_POLICIES = ("local", "global")


def check_sync(sync: str) -> str:
    return check_choice("sync", sync, SYNC_POLICIES)


def get_world_size() -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def is_global(sync: str) -> bool:
    """True when ``sync`` asks for communication and there is more than one process."""
    return sync == "global" and get_world_size() > 1


# Dtypes every backend gathers; others (bool, 16-bit floats, ...) travel as raw bytes.
_NATIVE_DTYPES = (torch.float32, torch.float64, torch.int32, torch.int64, torch.uint8, torch.int8)


def all_gather_rows(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """All-gather tensors that share their first (row) dimension, rank order kept.

    Ranks may hold different numbers of rows: sizes are gathered first and every rank pads to the
    largest. Returns, per input, the rows of rank 0, then rank 1, ... concatenated.
    """
    world_size = get_world_size()
    if world_size == 1:
        return list(tensors)
    num_rows = tensors[0].shape[0]
    if any(t.shape[0] != num_rows for t in tensors):
        raise ValueError(f"all_gather_rows: first dimensions differ: {[tuple(t.shape) for t in tensors]}")
    device = tensors[0].device
    size = torch.tensor([num_rows], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    max_rows = max(sizes)
    gathered = []
    for tensor in tensors:
        row_shape = tuple(tensor.shape[1:])
        send = tensor.contiguous()
        as_bytes = tensor.dtype not in _NATIVE_DTYPES
        if as_bytes:
            send = send.reshape(num_rows, math.prod(row_shape)).view(torch.uint8)
        if num_rows < max_rows:
            pad = send.new_zeros((max_rows - num_rows,) + tuple(send.shape[1:]))
            send = torch.cat([send, pad])
        buffers = [torch.empty_like(send) for _ in range(world_size)]
        dist.all_gather(buffers, send)
        out = torch.cat([b[:n] for b, n in zip(buffers, sizes)])
        if as_bytes:
            out = out.view(tensor.dtype).reshape((-1,) + row_shape)
        gathered.append(out)
    return gathered


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op with one process); returns ``tensor``."""
    if get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shared_generator(sync: str, generator: torch.Generator | None, device: torch.device):
    """The generator to sample with.

    Under ``global`` without an explicit generator, rank 0 draws a seed from the default generator
    and broadcasts it, so that ranks holding identical state also draw identical samples.
    """
    if generator is not None or not is_global(sync):
        return generator
    seed = torch.randint(0, 2**62, (1,), dtype=torch.int64).to(device)
    dist.broadcast(seed, src=0)
    new_generator = torch.Generator(device=device)
    new_generator.manual_seed(int(seed.item()))
    return new_generator
