"""ltdet2's Detectron2 components: ROI heads, box predictors, feature sources, losses."""
from .box_generator import dense_boxes
from .box_predictors import LongTailOutputLayers
from .classifiers import CosineClassifier
from .roi_heads import LongTailROIHeads

__all__ = ["dense_boxes", "LongTailOutputLayers", "LongTailROIHeads", "CosineClassifier"]
