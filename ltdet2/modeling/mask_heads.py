"""Mask heads: Detectron2's conv-upsample head with a normalised (cosine) mask predictor (LOCE's configs), and
LST's MaskX-style head whose class-specific mask weights come from the box classifier (:class:`TransferMaskHead`)."""

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, MaskRCNNConvUpsampleHead

__all__ = ["NormalizedConv2d", "NormalizedMaskRCNNConvUpsampleHead", "TransferMaskHead"]


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


@ROI_MASK_HEAD_REGISTRY.register()
class TransferMaskHead(MaskRCNNConvUpsampleHead):
    """MaskX-style mask head (LST, Sec. 3.2; official ``roi_mask_predictors.py``): class-specific mask weights
    transferred from the box classifier's weights, plus a class-agnostic MLP mask branch.

    With ``h`` the ``[N, conv_dim, M, M]`` mask features (Detectron2's convs and deconv, M = 2x the pooler
    resolution) and ``W`` the box classifier's weight rows ``[:C]`` (``[C, D]``, background row C excluded):
    ``logits[n, c] = <T(W)[c], h[n, :, y, x]> + A(h[n])[y, x]``, where the transfer MLP ``T`` is
    Linear(D, D) -> LeakyReLU(0.01) -> Linear(D, conv_dim) -> LeakyReLU(0.01) (official; the last activation is
    ``output_activation``: MaskX R-CNN's MLP ends linear) applied as a 1x1 convolution without bias, and ``A`` the
    class-agnostic MLP on the flattened features, added to every class channel. A class's mask weights depend only
    on its classifier row, so classes new in a phase get mask weights without mask training of their own.

    The head holds no classifier: the ROI heads give it theirs (:meth:`bind_classifier`, done by
    :class:`~ltdet2.modeling.LongTailROIHeads`), kept as a plain attribute (not a second registered submodule).
    Its ``weight`` is read at each forward (the raw weight, as the official code; a cosine classifier's direction
    and magnitude both). Without ``stop_gradient`` (official) the mask loss also trains the classifier's weight.

    Args:
        classifier_dim: D, the box classifier's input size (the box head's last FC: 1024 in LST).
        agnostic_mlp_dim: None: the official single Linear(conv_dim * M * M, M * M) (~157M parameters at
            conv_dim 256, M 28: 256 * 784 * 784 + 784); an int H: Linear(conv_dim * M * M, H) -> ReLU -> Linear(H,
            M * M) (ours, smaller: about conv_dim * M * M * H parameters); 0: no agnostic branch.
        output_activation: LeakyReLU(0.01) after the transfer MLP's last layer (official: True).
        stop_gradient: the transfer reads the classifier weight detached (no mask-loss gradient into it).
        other arguments: those of :class:`MaskRCNNConvUpsampleHead`; ``num_classes`` is C (class-specific).

    Parameters: Detectron2's convs and ``deconv``; ``transfer`` (the MLP); ``agnostic_mlp``. No ``predictor``.
    For YAML configs: ``MODEL.ROI_MASK_HEAD.NAME = "TransferMaskHead"`` (D from ``MODEL.ROI_BOX_HEAD.FC_DIM``).
    """

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        num_classes: int,
        classifier_dim: int,
        agnostic_mlp_dim: int | None = None,
        output_activation: bool = True,
        stop_gradient: bool = False,
        **kwargs,
    ):
        super().__init__(input_shape, num_classes=num_classes, **kwargs)
        conv_dim = self.predictor.in_channels
        del self.predictor  # the class-specific weights are the transfer's
        self._feature_layers = tuple(self._modules)  # Detectron2's convs, deconv and its ReLU, in order
        self.num_classes = int(num_classes)
        self.stop_gradient = bool(stop_gradient)
        self.mask_size = 2 * int(input_shape.height)
        activation = nn.LeakyReLU(0.01) if output_activation else nn.Identity()
        self.transfer = nn.Sequential(
            nn.Linear(classifier_dim, classifier_dim),
            nn.LeakyReLU(0.01),
            nn.Linear(classifier_dim, conv_dim),
            activation,
        )
        flat = conv_dim * self.mask_size * self.mask_size
        pixels = self.mask_size * self.mask_size
        if agnostic_mlp_dim is None:
            self.agnostic_mlp = nn.Linear(flat, pixels)
        elif agnostic_mlp_dim > 0:
            self.agnostic_mlp = nn.Sequential(
                nn.Linear(flat, agnostic_mlp_dim), nn.ReLU(), nn.Linear(agnostic_mlp_dim, pixels)
            )
        else:
            self.agnostic_mlp = None
        object.__setattr__(self, "_classifier", None)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["classifier_dim"] = cfg.MODEL.ROI_BOX_HEAD.FC_DIM
        return ret

    def bind_classifier(self, classifier: nn.Module):
        """Uses ``classifier.weight`` (``[C+1, D]``, background last) as the source of the mask weights."""
        weight = getattr(classifier, "weight", None)
        if weight is None or weight.dim() != 2 or weight.shape[0] != self.num_classes + 1:
            raise ValueError(
                f"TransferMaskHead: the box classifier {type(classifier).__name__} must have a weight [C+1, D] with "
                f"C = {self.num_classes}; got {None if weight is None else tuple(weight.shape)}"
            )
        object.__setattr__(self, "_classifier", classifier)

    def mask_weights(self) -> torch.Tensor:
        """``[C, conv_dim]``: the transfer MLP of the classifier's foreground rows."""
        if self._classifier is None:
            raise RuntimeError(
                "TransferMaskHead has no classifier: use it in ltdet2.modeling.LongTailROIHeads (which binds the box "
                "predictor's cls_score) or call bind_classifier"
            )
        weight = self._classifier.weight[: self.num_classes]
        return self.transfer(weight.detach() if self.stop_gradient else weight)

    def layers(self, x):
        for name in self._feature_layers:
            x = self._modules[name](x)
        logits = F.conv2d(x, self.mask_weights()[:, :, None, None])
        if self.agnostic_mlp is not None:
            logits = logits + self.agnostic_mlp(x.flatten(1)).view(-1, 1, self.mask_size, self.mask_size)
        return logits

    def extra_repr(self):
        return f"num_classes={self.num_classes}, stop_gradient={self.stop_gradient}"
