"""ltdet2's Detectron2 components: ROI heads, box predictors, classifiers, mask heads, feature sources, losses,
the teacher-student meta-architecture and its distillation terms."""

from .box_generator import dense_boxes, dense_boxes_per_image
from .box_heads import LinearOutputConvFCHead
from .box_predictors import (
    ClassScoring,
    LongTailOutputLayers,
    ObjectnessSoftmaxScoring,
    SigmoidBackgroundScoring,
    SigmoidCEScoring,
    SoftmaxScoring,
)
from .classifiers import CosineClassifier, WeightNormCosineClassifier
from .distillers import (
    DetrDistillationContext,
    DistillationContext,
    MaskedFeatureDistillation,
    MetaWeightGeneratorTerm,
    OldClassLogitDistillation,
    SharedQueryKLDistillation,
    SharedRoIKLDistillation,
)
from .losses.sigmoid_background import sigmoid_background_probs
from .mask_heads import NormalizedConv2d, NormalizedMaskRCNNConvUpsampleHead, TransferMaskHead
from .meta_arch import TeacherStudentDETR, TeacherStudentRCNN
from .roi_heads import LongTailROIHeads
from .weight_generator import MetaWeightGenerator

__all__ = [
    "dense_boxes",
    "dense_boxes_per_image",
    "sigmoid_background_probs",
    "LinearOutputConvFCHead",
    "LongTailOutputLayers",
    "ClassScoring",
    "SoftmaxScoring",
    "SigmoidCEScoring",
    "ObjectnessSoftmaxScoring",
    "SigmoidBackgroundScoring",
    "LongTailROIHeads",
    "CosineClassifier",
    "WeightNormCosineClassifier",
    "NormalizedConv2d",
    "NormalizedMaskRCNNConvUpsampleHead",
    "TransferMaskHead",
    "DistillationContext",
    "DetrDistillationContext",
    "MaskedFeatureDistillation",
    "MetaWeightGenerator",
    "MetaWeightGeneratorTerm",
    "OldClassLogitDistillation",
    "SharedQueryKLDistillation",
    "SharedRoIKLDistillation",
    "TeacherStudentDETR",
    "TeacherStudentRCNN",
]
