from .long_tail_output_layers import LongTailOutputLayers
from .scoring import ClassScoring, ObjectnessSoftmaxScoring, SigmoidBackgroundScoring, SigmoidCEScoring, SoftmaxScoring

__all__ = [
    "ClassScoring",
    "LongTailOutputLayers",
    "ObjectnessSoftmaxScoring",
    "SigmoidBackgroundScoring",
    "SigmoidCEScoring",
    "SoftmaxScoring",
]
