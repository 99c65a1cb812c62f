"""Mask heads: Detectron2's conv-upsample head with a normalised (cosine) mask predictor (LOCE's configs)."""

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, MaskRCNNConvUpsampleHead

__all__ = ["NormalizedConv2d", "NormalizedMaskRCNNConvUpsampleHead"]


class NormalizedConv2d(nn.Conv2d):
    """``scale * conv(x / ||x||, w / ||w||) + b``: a convolution of L2-normalised inputs with L2-normalised
    weights, norms taken over the channel dimension (``F.normalize(., dim=1)``, eps 1e-12), so a 1x1
    convolution gives ``scale`` times the cosine between each pixel's feature and each output channel's
    weight, plus the bias.

    This is the mask predictor of LOCE's official ``FCNNormMaskHead`` (``20 * F.normalize(x)`` convolved
    with ``F.normalize(weight)``, bias kept), the "normalized linear activation" of the Seesaw paper.
    Weight initialised as the official head's (``kaiming_normal_``, fan-out, ReLU gain), bias 0.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, *, scale: float = 20.0, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, **kwargs)
        self.scale = float(scale)
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        if self.bias is not None:
            nn.init.constant_(self.bias, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.scale * F.normalize(x, dim=1), F.normalize(self.weight, dim=1), self.bias)

    def extra_repr(self):
        return f"{super().extra_repr()}, scale={self.scale}"


@ROI_MASK_HEAD_REGISTRY.register()
class NormalizedMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """:class:`MaskRCNNConvUpsampleHead` whose 1x1 predictor is a :class:`NormalizedConv2d` (scale 20).

    LOCE's official Mask R-CNN configs (both stages) use this head (``FCNNormMaskHead``); the paper says
    "we adopt normalized linear activation to the mask prediction" (as Seesaw Loss). Everything else,
    the loss and inference included, is Detectron2's. The predictor keeps the name ``predictor`` and its
    parameters ``weight`` / ``bias``, so a stock head's checkpoint loads. For YAML configs:
    ``MODEL.ROI_MASK_HEAD.NAME = "NormalizedMaskRCNNConvUpsampleHead"``.

    Args:
        scale: the fixed multiplier of the cosine (official: 20).
        other arguments: those of :class:`MaskRCNNConvUpsampleHead`.
    """

    @configurable
    def __init__(self, input_shape, *, scale: float = 20.0, **kwargs):
        super().__init__(input_shape, **kwargs)
        stock = self.predictor
        self.predictor = NormalizedConv2d(
            stock.in_channels, stock.out_channels, 1, scale=scale, bias=stock.bias is not None
        )
