"""Box heads: Detectron2's conv/FC box head without the ReLU after its last FC (LST's cosine-classifier head)."""

from detectron2.config import configurable
from detectron2.modeling.roi_heads.box_head import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead

__all__ = ["LinearOutputConvFCHead"]


@ROI_BOX_HEAD_REGISTRY.register()
class LinearOutputConvFCHead(FastRCNNConvFCHead):
    """:class:`FastRCNNConvFCHead` whose last FC has no ReLU: its ``[N, fc_dims[-1]]`` output can be negative.

    LST's box head (official ``FPN2MLPCosineFeatureExtractor``: fc6 + ReLU, fc7 without ReLU; paper: "we remove
    the ReLU of the last FC layer") feeding a cosine classifier, which then sees features of any sign. Use it with
    ``LongTailOutputLayers(regressor_input_relu=True)`` so that the box regressor reads ReLU(fc7), as the official
    ``FPNCosinePredictor`` does. Parameters keep Detectron2's names (``fc1``, ``fc2``, ...): a stock head's
    checkpoint loads. For YAML configs: ``MODEL.ROI_BOX_HEAD.NAME = "LinearOutputConvFCHead"``.

    Args: those of :class:`FastRCNNConvFCHead`; ``fc_dims`` must not be empty.
    """

    @configurable
    def __init__(self, input_shape, **kwargs):
        super().__init__(input_shape, **kwargs)
        if not self.fcs:
            raise ValueError("LinearOutputConvFCHead: fc_dims is empty; it removes the ReLU of the last FC layer")
        delattr(self, f"fc_relu{len(self.fcs)}")
