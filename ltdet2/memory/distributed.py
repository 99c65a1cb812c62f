"""What each rank holds of a model's memory stores and learning-status indicators, for checkpoints.

Checkpoints (:mod:`ltdet2.engine.checkpoint`): a ``global`` store is saved once, in rank 0's checkpoint,
and resumes identically on every rank; a ``local`` store is saved and restored per rank (rank 0's in the
checkpoint, rank r's in its rank file), so every rank resumes its own state. A checkpoint with ``local``
memories resumes only with the number of processes that saved it (one state per process cannot be split
or merged): another number is refused with an error naming them. :func:`per_rank_state_names` and
:func:`local_memory_names` tell which buffers are per rank.

The ``sync`` policy itself (``"local"`` / ``"global"``) and its collectives are defined in
:mod:`ltdet2.memory.sync`; their names are importable from here too, as they always were.
"""

import torch

from .base import StateModule
from .indicators import StaticFrequency
from .sync import (
    SYNC_POLICIES,
    all_gather_rows,
    all_reduce_sum,
    check_sync,
    get_world_size,
    is_global,
    shared_generator,
)

__all__ = [
    "SYNC_POLICIES",
    "check_sync",
    "get_world_size",
    "is_global",
    "all_gather_rows",
    "all_reduce_sum",
    "shared_generator",
    "per_rank_state_names",
    "local_memory_names",
]


def _is_global_store(module, inherited):
    """Whether ``module``'s own buffers are the same on every rank: it is a ``global`` store or indicator,
    or lies inside one (the nearest store decides)."""
    if isinstance(module, StateModule) and hasattr(module, "sync"):
        return module.sync == "global"
    return inherited


def per_rank_state_names(model: torch.nn.Module) -> list[str]:
    """Names (``model.state_dict()`` keys) of the persistent buffers each rank holds its own value of:
    every buffer except those of ``global`` stores and indicators (``local`` stores, BatchNorm statistics,
    ...). Parameters are left out: DDP keeps them identical on every rank."""
    names = []

    def visit(module, prefix, inherited):
        is_global = _is_global_store(module, inherited)
        for name, buffer in module._buffers.items():
            if buffer is not None and name not in module._non_persistent_buffers_set and not is_global:
                names.append(prefix + name)
        for child_name, child in module._modules.items():
            if child is not None:
                visit(child, f"{prefix}{child_name}.", is_global)

    visit(model, "", False)
    keys = set(model.state_dict().keys())
    return [name for name in names if name in keys]


def local_memory_names(model: torch.nn.Module) -> list[str]:
    """Module names of the ``local`` stores and indicators of ``model`` that learn while training (static
    frequency indicators hold the same dataset counts on every rank and are left out)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, StateModule)
        and getattr(module, "sync", None) == "local"
        and not isinstance(module, StaticFrequency)
    ]
