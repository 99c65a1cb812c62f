"""Memory stores and learning-status indicators shared by RIO, LOCE (MFS, EBL) and BACL (FHM, FCBL).

All of them are ``nn.Module``s whose state is registered buffers (checkpointed, restored exactly,
moved by ``.to(device)``, never cast by ``.to(dtype)``), updated with vectorized tensor ops, and with
a ``sync`` policy, ``"local"`` or ``"global"`` (see :mod:`ltdet2.memory.sync`).
"""

from .base import MemorySample, StateModule
from .class_queue import ClassQueue
from .indicators import (
    CumulativeCount,
    GradientRatio,
    ImageFrequency,
    InstanceFrequency,
    LearningStatusIndicator,
    MeanScore,
    PredictorBatch,
    SoftConfusionMatrix,
    StaticFrequency,
    TruePositiveRate,
)
from .prototype_bank import PrototypeBank
from .sync import SYNC_POLICIES

__all__ = [
    "SYNC_POLICIES",
    "StateModule",
    "MemorySample",
    "ClassQueue",
    "PrototypeBank",
    "PredictorBatch",
    "LearningStatusIndicator",
    "StaticFrequency",
    "ImageFrequency",
    "InstanceFrequency",
    "CumulativeCount",
    "MeanScore",
    "TruePositiveRate",
    "SoftConfusionMatrix",
    "GradientRatio",
]
