"""LST's meta weight generator (Hu et al., CVPR 2020, Sec. 3.4, Eq. 3): classifier weights for new classes written
from RoI features and their attention over the base classes' classifier weights.

The design is Gidaris & Komodakis' attention-based few-shot weight generator (CVPR 2018), which LST adopts:
the official LST code has a non-working copy (a SyntaxError, imported nowhere), so the details below follow
Gidaris & Komodakis' design (its constants as LST's bytecode suggests); the parts that are ltdet2's are marked.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MetaWeightGenerator"]


class MetaWeightGenerator(nn.Module):
    """Generates a classifier weight per RoI feature and averages them per class.

    For an RoI feature ``x`` ([D]) and the ``b`` base classes' classifier weights ``W^B`` ([b, D]):

    - ``x̄ = x / ||x||`` and ``W̄^B`` row-normalised;
    - query ``q = V x̄`` (``query``: Linear(D, D), weight initialised to identity + 0.001·N(0, 1), bias 0);
    - attention ``m = softmax_b(s_att · cos(q, K_b))`` over the base classes (``keys`` K: [b, D], learnable,
      N(0, 2/D) init; ``attention_scale`` s_att learnable, init 10);
    - ``w = a ⊙ x̄ + b ⊙ (W̄^B m)`` (Eq. 3; ``feature_gain`` a and ``attention_gain`` b: [D], init 1).

    The weight of a class is the mean of ``w`` over its RoIs (:meth:`class_average`). Weights are not
    normalised (the cosine classifier normalises its rows).

    Args:
        feature_dim: D, the box head's output (what the classifier reads).
        num_base_classes: b, the base phase's classes (contiguous indices ``0..b-1``, the classifier's first rows).
        attention_scale: initial s_att.
    """

    def __init__(self, feature_dim: int, num_base_classes: int, *, attention_scale: float = 10.0):
        super().__init__()
        if feature_dim < 1 or num_base_classes < 1:
            raise ValueError(
                f"MetaWeightGenerator: feature_dim={feature_dim} and num_base_classes={num_base_classes} must be >= 1"
            )
        self.feature_dim = int(feature_dim)
        self.num_base_classes = int(num_base_classes)
        self.query = nn.Linear(self.feature_dim, self.feature_dim)
        with torch.no_grad():
            self.query.weight.copy_(
                torch.eye(self.feature_dim) + 0.001 * torch.randn(self.feature_dim, self.feature_dim)
            )
            self.query.bias.zero_()
        self.keys = nn.Parameter(torch.randn(self.num_base_classes, self.feature_dim) * (2.0 / self.feature_dim) ** 0.5)
        self.attention_scale = nn.Parameter(torch.tensor(float(attention_scale)))
        self.feature_gain = nn.Parameter(torch.ones(self.feature_dim))
        self.attention_gain = nn.Parameter(torch.ones(self.feature_dim))

    def _check(self, features: torch.Tensor, base_weights: torch.Tensor | None = None):
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"MetaWeightGenerator: features must be [N, {self.feature_dim}], got {list(features.shape)}"
            )
        if base_weights is not None and tuple(base_weights.shape) != (self.num_base_classes, self.feature_dim):
            raise ValueError(
                f"MetaWeightGenerator: base_weights must be [{self.num_base_classes}, {self.feature_dim}] "
                f"(the base classes' classifier rows), got {list(base_weights.shape)}"
            )

    def attention(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, b]`` attention coefficients m of the RoI features ``[N, D]`` over the base classes (rows sum to 1)."""
        self._check(features)
        query = F.normalize(self.query(F.normalize(features, dim=1)), dim=1)
        return torch.softmax(self.attention_scale * query @ F.normalize(self.keys, dim=1).t(), dim=1)

    def forward(self, features: torch.Tensor, base_weights: torch.Tensor) -> torch.Tensor:
        """Per-RoI weights ``w`` ([N, D]) of Eq. 3 from RoI features ``[N, D]`` and base weights ``W^B`` ``[b, D]``."""
        self._check(features, base_weights)
        attended = self.attention(features) @ F.normalize(base_weights, dim=1)
        return self.feature_gain * F.normalize(features, dim=1) + self.attention_gain * attended

    @staticmethod
    def class_average(weights: torch.Tensor, labels: torch.Tensor, num_classes: int):
        """Mean of the per-RoI ``weights`` ([N, D]) of each class.

        Args:
            labels: [N] class of each RoI, in ``0..num_classes-1``.
        Returns:
            (Tensor [num_classes, D], Tensor [num_classes] int64): the means (0 for a class without RoIs) and
            the RoI counts.
        """
        counts = torch.bincount(labels, minlength=num_classes)
        sums = weights.new_zeros(num_classes, weights.shape[1]).index_add(0, labels, weights)
        return sums / counts.clamp(min=1).unsqueeze(1).to(weights.dtype), counts

    def extra_repr(self):
        return f"feature_dim={self.feature_dim}, num_base_classes={self.num_base_classes}"
