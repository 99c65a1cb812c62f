"""Methods' extra steps of a phase, for its ``train.hooks`` (the engine's contract: :mod:`ltdet2.engine.train_loop`).

* :class:`MemoryWarmup` (LOCE): fills the memories and indicators before the first iteration of a run that does not
  resume (:mod:`ltdet2.hooks.memory_warmup`);
* :class:`WriteGeneratedWeights` (LST's meta weight generator): writes the new classes' generated classifier rows
  after the last iteration and saves ``model_final`` again (:mod:`ltdet2.hooks.weight_generation`);
* :class:`~ltdet2.modeling.expansion.ClassExpansion` (LST's network expansion): a transform of the phase's initial
  checkpoint (not a Detectron2 hook: the engine hands it to the checkpointer), re-exported here.

The engine imports nothing from this package; a new method's hook goes here (or next to its modeling code) and into
its configs' ``train.hooks``, with no edit to :mod:`ltdet2.engine`.
"""

from ltdet2.modeling.expansion import ClassExpansion

from .memory_warmup import MemoryWarmup
from .weight_generation import WriteGeneratedWeights

__all__ = ["ClassExpansion", "MemoryWarmup", "WriteGeneratedWeights"]
