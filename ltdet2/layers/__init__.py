"""Layers: a CPU RoIAlign with a fast separable backward (see ``ltdet2.layers.roi_align``)."""

from .roi_align import FastCPUROIAlign, FastCPUROIPooler, roi_align_cpu, roi_align_weights, use_fast_cpu_roi_align

__all__ = ["FastCPUROIAlign", "FastCPUROIPooler", "roi_align_cpu", "roi_align_weights", "use_fast_cpu_roi_align"]
