"""LVIS evaluation with a fast engine (faster-coco-eval, LVIS mode), per-class AP and plots."""

from .lvis_evaluation import (
    LVIS_METRICS,
    LTLVISEvaluator,
    evaluate_lvis,
    load_lvis_gt,
    load_lvis_results,
    per_class_records,
)

__all__ = [
    "LVIS_METRICS",
    "LTLVISEvaluator",
    "evaluate_lvis",
    "load_lvis_gt",
    "load_lvis_results",
    "per_class_records",
    "plot_per_class_ap",
]


def __getattr__(name):
    # lazy: importing matplotlib is only needed for plotting
    if name == "plot_per_class_ap":
        from .plots import plot_per_class_ap

        return plot_per_class_ap
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
