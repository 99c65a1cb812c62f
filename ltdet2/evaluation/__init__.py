"""LVIS evaluation with a fast engine (faster-coco-eval, LVIS mode), per-class AP and plots."""

from .lvis_evaluation import (
    LVIS_METRICS,
    COCOFormatGroundTruth,
    LTLVISEvaluator,
    evaluate_lvis,
    load_lvis_gt,
    load_lvis_results,
    per_class_records,
)
from .plots import plot_per_class_ap

__all__ = [
    "LVIS_METRICS",
    "COCOFormatGroundTruth",
    "LTLVISEvaluator",
    "evaluate_lvis",
    "load_lvis_gt",
    "load_lvis_results",
    "per_class_records",
    "plot_per_class_ap",
]
