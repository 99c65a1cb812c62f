"""ltdet2: long-tailed detection and instance segmentation methods on stock Detectron2."""

__version__ = "0.1.0"
