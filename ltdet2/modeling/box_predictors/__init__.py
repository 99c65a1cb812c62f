from .long_tail_output_layers import LongTailOutputLayers

__all__ = ["LongTailOutputLayers"]
