"""Classifier heads for :class:`LongTailOutputLayers` (``classifier=``): ``[N, D] -> [N, C+1]`` logits,
background at index C (Detectron2's convention).
"""

import math

import torch
from torch import nn

__all__ = ["CosineClassifier", "WeightNormCosineClassifier"]


class CosineClassifier(nn.Module):
    """Scaled cosine-similarity classifier (LST; TFA's ``CosineSimOutputLayers``).

    ``logits[n, j] = s * g_j * <x_n / (||x_n|| + eps), w_j / (||w_j|| + eps)>`` for the C+1 rows
    ``w_j`` (background is row C, an ordinary row), scale ``s`` and per-row multipliers ``g_j``
    (1 unless ``learnable_norm``). With the defaults a pure cosine with a learnable global scale; RIO's
    official classifier (per-class learnable norm, fixed scale) is :class:`WeightNormCosineClassifier`.

    Args:
        input_dim: D (features of more dimensions are flattened, as ``FastRCNNOutputLayers`` does).
        num_classes: C foreground classes; the weight has C+1 rows.
        scale: initial s (LST: 10, learnable).
        learnable_scale: s is a parameter (``scale``), else a fixed buffer.
        learnable_norm: learn ``g`` (``norm``, [C+1], init 1): a per-class magnitude on top of the
            cosine, off by default (pure cosine).
        eps: added to the feature norms (and to the weight norms unless ``weight_eps`` is given).
        weight_eps: added to the weight norms; None: ``eps``.
        init_std: std of the weight's normal init (0.01: Detectron2's / TFA's); None: ``nn.Linear``'s
            default init (uniform in ``±1/sqrt(D)``). The cosine makes the effective learning rate of a
            row's direction ``lr / ||w_j||^2``.

    Parameters are named ``weight`` (``[C+1, D]``, init N(0, 0.01) as Detectron2's linear
    ``cls_score``, so a linear checkpoint's weight loads), ``scale`` and ``norm``.
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        *,
        scale: float = 48.0,
        learnable_scale: bool = True,
        learnable_norm: bool = False,
        eps: float = 1e-5,
        weight_eps: float | None = None,
        init_std: float | None = 0.01,
    ):
        super().__init__()
        self.input_dim = int(input_dim)
        self.num_classes = int(num_classes)
        self.eps = float(eps)
        self.weight_eps = self.eps if weight_eps is None else float(weight_eps)
        self.weight = nn.Parameter(torch.empty(self.num_classes + 1, self.input_dim))
        if init_std is None:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default
        else:
            nn.init.normal_(self.weight, std=init_std)
        scale_tensor = torch.tensor(float(scale))
        if learnable_scale:
            self.scale = nn.Parameter(scale_tensor)
        else:
            self.register_buffer("scale", scale_tensor)
        self.norm = nn.Parameter(torch.ones(self.num_classes + 1)) if learnable_norm else None

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C+1] cosine similarities of ``x`` ([N, D] or [N, ...]) with every row."""
        x = x.flatten(1)
        x = x / (x.norm(p=2, dim=1, keepdim=True) + self.eps)
        w = self.weight / (self.weight.norm(p=2, dim=1, keepdim=True) + self.weight_eps)
        return x @ w.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.scale * self.cosine(x)
        if self.norm is not None:
            logits = logits * self.norm
        return logits

    def extra_repr(self):
        return (
            f"input_dim={self.input_dim}, num_classes={self.num_classes}, scale={float(self.scale.detach()):.3g}, "
            f"learnable_scale={isinstance(self.scale, nn.Parameter)}, learnable_norm={self.norm is not None}"
        )


class WeightNormCosineClassifier(CosineClassifier):
    """RIO's official classifier: Closer-Look's ``distLinear`` (Chen et al., ICLR 2019), a weight-normalised
    linear layer on L2-normalised features, times a fixed scale.

    ``logits[n, j] = scale * g_j * <x_n / (||x_n|| + eps), v_j / ||v_j||>``: per class a direction ``v_j``
    (``weight``, ``[C+1, D]``) and a learnable norm ``g_j`` (``norm``, ``[C+1]``), i.e. the weight-norm
    reparametrisation ``w_j = g_j v_j / ||v_j||`` of a bias-free linear layer, the official code's
    ``torch.nn.utils.weight_norm(nn.Linear(D, C+1, bias=False), dim=0)`` held as two plain parameters.

    Initialisation as the official code: ``v`` is ``nn.Linear``'s default init (uniform in
    ``±1/sqrt(D)``) and ``g_j = ||v_j||`` (what ``weight_norm`` sets), about ``1/sqrt(3) ≈ 0.577`` for any
    D; the scale is a fixed 48 (RIO's ``TEMP_S``), so the initial effective scale is about 27.7.

    The RIO paper only says "cosine layer"; this is the official code's, and RIO's default. The pure
    cosine with a learnable global scale (LST; TFA) is :class:`CosineClassifier`.

    Parameters: ``weight`` (v), ``norm`` (g); buffer ``scale``.
    """

    def __init__(self, input_dim: int, num_classes: int, *, scale: float = 48.0, eps: float = 1e-5):
        super().__init__(
            input_dim,
            num_classes,
            scale=scale,
            learnable_scale=False,
            learnable_norm=True,
            eps=eps,
            weight_eps=0.0,
            init_std=None,
        )
        with torch.no_grad():
            self.norm.copy_(self.weight.norm(p=2, dim=1))
