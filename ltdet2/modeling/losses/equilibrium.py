"""LOCE's equilibrium loss (EBL)."""

import torch
import torch.nn.functional as F
from torch import nn

from ..indicator_links import IndicatorUser

# Mean scores below this are treated as this value, so log(s) stays finite.
MIN_SCORE = 1e-12


def equilibrium_loss(logits, labels, mean_scores, weights=None):
    """Softmax cross-entropy of ``logits + log(mean_scores)`` (LOCE eq. 3-4).

    Adding ``log s_j`` to every logit is the margin ``delta_{y j} = log(s_j / s_y)`` of the paper:
    ``-log softmax(z + log s)_y = log(1 + sum_{j != y} exp(z_j - z_y + log(s_j / s_y)))``.
    Inference stays a plain softmax of ``logits``.

    Args:
        logits (Tensor): [N, C+1] classification logits; background is index C (Detectron2).
        labels (Tensor): [N] int64 in [0, C].
        mean_scores (Tensor): [C+1] positive mean classification scores (the background entry is
            LOCE's fixed hat-s_{C+1}, 0.01 by default). Not differentiated through.
        weights (Tensor, optional): [N] per-row weights; the loss is ``sum(w * ce) / N``.

    Returns:
        Tensor: scalar, the mean over rows (0 for N == 0, still connected to ``logits``).
    """
    if logits.numel() == 0:
        return logits.sum() * 0.0
    # at least float32: under AMP, float16 would round MIN_SCORE to 0 and log() to -inf
    dtype = torch.promote_types(logits.dtype, torch.float32)
    log_scores = mean_scores.detach().to(dtype).clamp(min=MIN_SCORE).log()
    per_row = F.cross_entropy(logits.to(dtype) + log_scores, labels, reduction="none")
    if weights is not None:
        per_row = per_row * weights
    return (per_row.sum() / logits.shape[0]).to(logits.dtype)


class EquilibriumLoss(IndicatorUser, nn.Module):
    """EBL as a ``cls_loss`` of :class:`LongTailOutputLayers`, reading its scores from an indicator.

    Args:
        indicator: name of the ROI heads' indicator whose ``vector()`` gives the scores s: LOCE's
            ``MeanScore`` ([C+1], background fixed at 0.01), or for the paper's dataset-guided ablation
            ``InstanceFrequency(..., background_count=1)`` ([C+1]: normalised instance counts with a raw
            background count of 1, LOCE supplement eq. 1).
        background_score: appended to an indicator's [C] vector as hat-s_{C+1}; only meaningful for
            scores on a fixed scale (mean scores: LOCE's 0.01). Normalised counts are not: 0.01 there
            exceeds most classes' entries and flips the background margins; give such an indicator its
            own background entry (``background_count``) instead.
    """

    def __init__(self, *, indicator: str = "mean_score", background_score: float = 0.01):
        super().__init__()
        self.indicator_names = (indicator,)
        self.background_score = float(background_score)

    def scores(self, num_classes):
        scores = self.bound_indicator.vector()
        if scores.numel() == num_classes:
            scores = torch.cat([scores, scores.new_full((1,), self.background_score)])
        if scores.numel() != num_classes + 1:
            raise ValueError(
                f"EquilibriumLoss: indicator {self.indicator_names[0]!r} has {scores.numel()} "
                f"entries; expected {num_classes} or {num_classes + 1}"
            )
        return scores

    def forward(self, logits, labels, weights=None):
        return equilibrium_loss(logits, labels, self.scores(logits.shape[1] - 1).to(logits.device), weights)

    def extra_repr(self):
        return f"indicator={self.indicator_names[0]!r}, background_score={self.background_score}"
