"""BACL's foreground classification balance loss (FCBL, paper Sec. III-D, Eq. 6-9)."""

import torch
import torch.nn.functional as F
from torch import nn

from ltdet2.memory import CumulativeCount, StaticFrequency

from ..indicator_links import IndicatorUser
from .sigmoid_background import compute_dtype, one_hot_targets, sigmoid_background_probs

__all__ = [
    "STRENGTH_NORMALIZATIONS",
    "confusion_margins",
    "strength_margins",
    "foreground_balance_weights",
    "margin_balanced_loss",
    "foreground_balance_loss",
    "indicator_strengths",
    "check_indicator_classes",
    "ForegroundBalanceLoss",
]

STRENGTH_NORMALIZATIONS = ("auto", "max", "none")
# indicators whose vector holds counts (or count fractions) rather than a value in [0, 1] per class
_COUNT_INDICATORS = (StaticFrequency, CumulativeCount)


def confusion_margins(confusion: torch.Tensor, *, alpha: float = 0.85, min_confusion: float = 1e-3) -> torch.Tensor:
    """FCBL's pairwise margins from a confusion matrix (Eq. 7 with ``l_i := M[j, i]``).

    Args:
        confusion: [C, C], ``M[i, j]`` = how much rows of class i score class j (BACL Tab. II).
        alpha: margin scale (paper: 0.85; 0 turns the margin off).
        min_confusion: both entries are clamped to at least this (official code: 1e-3), so unseen
            pairs (M = 0) give finite margins.

    Returns:
        [C, C] float32, ``delta[i, j] = alpha * log(max(M[i, j], m) / max(M[j, i], m))``: added to
        logit j of a row of class i. The diagonal is 0.
    """
    log_m = confusion.detach().float().clamp(min=min_confusion).log()
    return alpha * (log_m - log_m.t())


def strength_margins(strengths: torch.Tensor, *, alpha: float = 0.85, min_strength: float = 1e-3) -> torch.Tensor:
    """FCBL's margins from a per-class long-term indicator l (Eq. 7): ``delta[i, j] = alpha * log(l_j / l_i)``.

    Args:
        strengths: [C] per-class indicator in [0, 1] (see :func:`indicator_strengths`).
        alpha: margin scale.
        min_strength: both values are clamped to at least this (as the confusion entries).

    Returns:
        [C, C] float32, the diagonal 0.
    """
    log_l = strengths.detach().float().clamp(min=min_strength).log()
    return alpha * (log_l[None, :] - log_l[:, None])


def foreground_balance_weights(logits: torch.Tensor, labels: torch.Tensor, threshold: float = 0.7) -> torch.Tensor:
    """FCBL's weight term (Eq. 9), as the official code computes it.

    On a foreground row of class i, column j weighs 1 if ``p~_j >= p~_i`` or ``p~_j >= threshold`` and 0
    otherwise, with ``p~`` the test-time probabilities (:func:`sigmoid_background_probs`) of the
    margin-free logits, detached; the ground-truth column (``p~_i >= p~_i``) and the background column
    always weigh 1. Background rows weigh 1 everywhere.

    Args:
        logits: [N, C+1] (background column C). labels: [N] in [0, C].

    Returns:
        [N, C+1] float 0 / 1 weights in ``logits``' compute dtype.
    """
    num_classes = logits.shape[1] - 1
    probs = sigmoid_background_probs(logits.detach().to(compute_dtype(logits)))
    gt_probs = probs.gather(1, labels[:, None])
    weights = (probs >= gt_probs) | (probs >= threshold)
    weights[:, num_classes] = True
    weights[labels == num_classes] = True
    return weights.to(probs.dtype)


def margin_balanced_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    margins: torch.Tensor,
    *,
    weight_threshold: float = 0.7,
    weight_term: bool = True,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """FCBL from a margin table: ``sum(w * BCE(z + delta, one_hot)) / N`` over all rows and C+1 columns.

    A foreground row of class i gets ``margins[i, j]`` added to logit j for the C foreground columns
    (``margins[i, i]`` is 0) and nothing on the background column; background rows get no margin.
    This is Eq. 6 on foreground rows and Eq. 2 on background rows (the official code: one BCE over all
    columns, divided by the number of rows N, hallucinated rows included).

    Args:
        logits: [N, C+1], background column C. labels: [N] int64 in [0, C].
        margins: [C, C] ``delta[i, j]`` (:func:`confusion_margins`, :func:`strength_margins`); not
            differentiated through.
        weight_threshold: p~_t of the weight term.
        weight_term: False: every column weighs 1 (margin only).
        weights: optional [N] per-row weights (a feature source's), multiplying each row's sum.

    Returns:
        scalar in ``logits``' dtype (0 for N == 0, still connected to ``logits``).
    """
    num_rows, num_columns = logits.shape
    num_classes = num_columns - 1
    if margins.shape != (num_classes, num_classes):
        raise ValueError(
            f"FCBL: margins must be [{num_classes}, {num_classes}] for logits with {num_columns} columns, "
            f"got {tuple(margins.shape)}"
        )
    if num_rows == 0:
        return logits.sum() * 0.0
    dtype = compute_dtype(logits)
    # one zero row for background labels and one zero column for the background logit
    table = F.pad(margins.detach().to(device=logits.device, dtype=dtype), (0, 1, 0, 1))
    shifted = logits.to(dtype) + table[labels]
    targets = one_hot_targets(labels, num_columns, dtype)
    column_weights = foreground_balance_weights(logits, labels, weight_threshold) if weight_term else None
    loss = F.binary_cross_entropy_with_logits(shifted, targets, weight=column_weights, reduction="none")
    per_row = loss.sum(dim=1)
    if weights is not None:
        per_row = per_row * weights.to(dtype)
    return (per_row.sum() / num_rows).to(logits.dtype)


def foreground_balance_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    confusion: torch.Tensor,
    *,
    alpha: float = 0.85,
    weight_threshold: float = 0.7,
    min_confusion: float = 1e-3,
    weight_term: bool = True,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """FCBL (BACL Eq. 6-9) guided by a confusion matrix.

    On a foreground row of class i: BCE over the C+1 sigmoid channels against the one-hot label, with
    ``delta_ij = alpha * log(max(M[i, j], m) / max(M[j, i], m))`` added to every other foreground logit j
    (0 on the ground-truth column, the background column and on background rows) and the weight term
    of :func:`foreground_balance_weights` (when ``weight_term``); summed over rows and columns and
    divided by the number of rows N. With ``alpha=0`` and ``weight_term=False`` it is
    :func:`~ltdet2.modeling.losses.sigmoid_background_loss`.

    Args:
        logits: [N, C+1] (background column C). labels: [N] int64 in [0, C].
        confusion: [C, C] soft confusion matrix (:class:`~ltdet2.memory.SoftConfusionMatrix`), read as is.
        alpha, weight_threshold, min_confusion, weight_term: see :func:`confusion_margins` and
            :func:`margin_balanced_loss` (paper / official values are the defaults).
        weights: optional [N] per-row weights.
    """
    num_classes = logits.shape[1] - 1
    if confusion.shape != (num_classes, num_classes):
        raise ValueError(
            f"foreground_balance_loss: confusion must be [{num_classes}, {num_classes}] for logits with "
            f"{num_classes + 1} columns, got {tuple(confusion.shape)}"
        )
    margins = confusion_margins(confusion, alpha=alpha, min_confusion=min_confusion)
    return margin_balanced_loss(
        logits, labels, margins, weight_threshold=weight_threshold, weight_term=weight_term, weights=weights
    )


def check_indicator_classes(user: IndicatorUser, num_classes: int | None, owner: str | None = None):
    """Raises if ``user``'s bound indicator is built for another class count than ``num_classes`` (None: no check)."""
    found = getattr(user.bound_indicator, "num_classes", None)
    if num_classes is not None and found is not None and found != num_classes:
        raise ValueError(
            f"{owner or type(user).__name__}: indicator {user.indicator_names[0]!r} "
            f"({type(user.bound_indicator).__name__}) is built for {found} classes, "
            f"{type(user).__name__} for {num_classes}"
        )


def indicator_strengths(indicator: nn.Module, num_classes: int, normalize: str = "auto") -> torch.Tensor:
    """[C] float32 per-class long-term indicator l in [0, 1] (larger: stronger class), from ``vector()``.

    The C foreground entries are taken (a mean score's background entry is dropped); a confusion
    matrix gives its diagonal ``M[i, i]``. BACL's FHM samples class i with ``p ∝ 1 - l_i`` (Eq. 12),
    which needs ``l`` in [0, 1]: mean score, TPR and ``M[i, i]`` are, counts are not, and the paper
    does not say how to scale them. ``normalize``:

    - ``"auto"`` (default): counts (:class:`~ltdet2.memory.StaticFrequency` image / instance frequency,
      :class:`~ltdet2.memory.CumulativeCount`) are divided by their maximum (the most frequent class
      gets 1); other indicators are read as they are. (Dividing by the sum, a StaticFrequency's own
      default, would make ``1 - l`` almost uniform over a large vocabulary.)
    - ``"max"``: always divided by the maximum; ``"none"``: never.
    """
    if normalize not in STRENGTH_NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {STRENGTH_NORMALIZATIONS}, got {normalize!r}")
    vector = indicator.vector()
    if vector.dim() != 1 or vector.numel() not in (num_classes, num_classes + 1):
        raise ValueError(
            f"{type(indicator).__name__}.vector() has shape {tuple(vector.shape)}; expected [{num_classes}] or "
            f"[{num_classes + 1}] for {num_classes} classes"
        )
    strengths = vector[:num_classes].float()
    if normalize == "max" or (normalize == "auto" and isinstance(indicator, _COUNT_INDICATORS)):
        strengths = strengths / strengths.max().clamp(min=torch.finfo(torch.float32).tiny)
    return strengths


class ForegroundBalanceLoss(IndicatorUser, nn.Module):
    """FCBL as a ``cls_loss`` of :class:`~ltdet2.modeling.LongTailOutputLayers` (with the
    :class:`~ltdet2.modeling.box_predictors.SigmoidBackgroundScoring`, ``class_scoring="sigmoid_background"``),
    guided by a long-term indicator of the ROI heads.

    The indicator is read by name. An indicator with a matrix form (``has_matrix``: the soft confusion
    matrix, the default and the official code's only one) gives the pairwise margins
    :func:`confusion_margins`; any other (image / instance frequency, cumulative count, mean score,
    TPR) its per-class vector, scaled to [0, 1] by :func:`indicator_strengths` (``normalize``), gives
    :func:`strength_margins` ``alpha * log(l_j / l_i)``, both entries clamped at ``min_confusion``. Margins
    are scale-free; the scaling only sets where the clamp bites.

    The ROI heads update the indicator after the losses (``update_timing="after_loss"``), so an
    iteration reads the previous iterations' state, as the official code; the hallucinated rows of
    a feature source count in the loss's normalisation and in the confusion matrix.

    Ablations: ``alpha=0`` is the weight term alone, ``weight_term=False`` the margin alone.

    Args:
        indicator: name of the ROI heads' indicator ("confusion": a ``SoftConfusionMatrix``).
        num_classes: C; checked against the indicator when the ROI heads bind it (optional).
        alpha: margin scale (0.85). weight_threshold: p~_t (0.7). min_confusion: clamp (1e-3).
        weight_term: the weight term of Eq. 9 (the official code turns it on from the stage's start).
        normalize: how a vector indicator is scaled to [0, 1] (:func:`indicator_strengths`).
    """

    class_scoring = "sigmoid_background"  # the scoring this loss is for (its name; checked by the box predictor)

    def __init__(
        self,
        *,
        indicator: str = "confusion",
        num_classes: int | None = None,
        alpha: float = 0.85,
        weight_threshold: float = 0.7,
        min_confusion: float = 1e-3,
        weight_term: bool = True,
        normalize: str = "auto",
    ):
        super().__init__()
        if alpha < 0:
            raise ValueError(f"ForegroundBalanceLoss: alpha must be >= 0, got {alpha}")
        if not 0.0 < weight_threshold <= 1.0:
            raise ValueError(f"ForegroundBalanceLoss: weight_threshold must be in (0, 1], got {weight_threshold}")
        if not min_confusion > 0:
            raise ValueError(f"ForegroundBalanceLoss: min_confusion must be > 0, got {min_confusion}")
        if normalize not in STRENGTH_NORMALIZATIONS:
            raise ValueError(
                f"ForegroundBalanceLoss: normalize must be one of {STRENGTH_NORMALIZATIONS}, got {normalize!r}"
            )
        self.indicator_names = (indicator,)
        self.num_classes = num_classes
        self.alpha = float(alpha)
        self.weight_threshold = float(weight_threshold)
        self.min_confusion = float(min_confusion)
        self.weight_term = bool(weight_term)
        self.normalize = normalize

    def bind_indicators(self, indicators, owner=None):
        super().bind_indicators(indicators, owner)
        check_indicator_classes(self, self.num_classes, owner)

    def margins(self, num_classes: int) -> torch.Tensor:
        """[C, C] margins ``delta[i, j]`` from the bound indicator's current state."""
        indicator = self.bound_indicator
        if getattr(indicator, "has_matrix", False):
            matrix = indicator.matrix()
            if matrix.shape != (num_classes, num_classes):
                raise ValueError(
                    f"ForegroundBalanceLoss: indicator {self.indicator_names[0]!r} ({type(indicator).__name__}) "
                    f"has a {tuple(matrix.shape)} matrix; the box predictor has {num_classes} classes"
                )
            return confusion_margins(matrix, alpha=self.alpha, min_confusion=self.min_confusion)
        strengths = indicator_strengths(indicator, num_classes, self.normalize)
        return strength_margins(strengths, alpha=self.alpha, min_strength=self.min_confusion)

    def forward(self, logits, labels, weights=None):
        margins = self.margins(logits.shape[1] - 1)
        return margin_balanced_loss(
            logits,
            labels,
            margins,
            weight_threshold=self.weight_threshold,
            weight_term=self.weight_term,
            weights=weights,
        )

    def extra_repr(self):
        return (
            f"indicator={self.indicator_names[0]!r}, alpha={self.alpha}, weight_threshold={self.weight_threshold}, "
            f"min_confusion={self.min_confusion}, weight_term={self.weight_term}"
        )
