from .long_tail_roi_heads import LongTailROIHeads

__all__ = ["LongTailROIHeads"]
