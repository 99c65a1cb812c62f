"""Equalization Loss v2 (Tan et al., "Equalization Loss v2: A New Gradient Balance Approach for Long-tailed Object
Detection", CVPR 2021, arXiv 2012.08548). Official code: ``tztztztztz/eqlv2``, ``mmdet/models/losses/eqlv2.py``.

**The loss.** A sigmoid classifier over ``K+1`` logits, background column K (Detectron2's order; the official
``fc_cls`` has ``num_classes + 1`` outputs, background last too), binary cross-entropy on every column against the
one-hot label (a background row has target 1 on column K), each term weighted by its class's weight::

    loss = sum_n w_n sum_j [y_nj q_j + (1 - y_nj) r_j] BCE(z_nj, y_nj) / N

    g_j = pos_j / (neg_j + 1e-10),   f(x) = 1 / (1 + exp(-gamma (x - mu))),   r_j = f(g_j),   q_j = 1 + alpha (1 - r_j)

with ``pos_j`` / ``neg_j`` the positive / negative gradient magnitudes of class j's logit accumulated over the
previous iterations (each step's weighted ones: :class:`~ltdet2.memory.GradientRatio`), gamma 12, mu 0.8, alpha 4,
``q = r = 1`` on the background column, ``w_n`` ltdet2's per-row weights (1 for the sampled RoIs) and N the number of
rows (the official ``/ self.n_i``). The weights are state, not differentiated through.

**Test-time scores** (official ``EQLv2.get_activation``, called by the repository's ``BBoxHead.get_bboxes`` because
the loss sets ``group = True``): ``sigmoid(z_j) * (1 - sigmoid(z_K))`` for the K classes, i.e. each class's sigmoid
times the objectness of the category-agnostic (background) task:
:class:`~ltdet2.modeling.box_predictors.scoring.SigmoidBackgroundScoring`, which this loss declares. The later official
version has ``test_with_obj`` (default True; False: the plain sigmoid), ltdet2's ``test_with_objectness``.

**Where ltdet2 follows the official code** (the paper is silent or ltdet2 could not check it; see
``docs/methods/eqlv2.md``): the weights are 1 until the first accumulation; the accumulated magnitudes are not divided
by N; the sums are all-reduced over the ranks (``sync="global"``); the classifier's biases start at 0. The official
``label_weights`` (``weight`` argument) and ``avg_factor`` are ignored by the official loss; ltdet2's per-row weights
scale their rows' terms (the extra rows of feature sources; none in EQLv2's own setting).
"""

import torch
import torch.nn.functional as F
from torch import nn

from ltdet2.memory.indicators import EQLV2_ALPHA, EQLV2_GAMMA, EQLV2_MU, GradientRatio, eqlv2_weights

from ..indicator_links import IndicatorUser
from .sigmoid_background import compute_dtype, one_hot_targets

__all__ = ["EQLv2Loss", "eqlv2_loss", "eqlv2_weights", "weighted_sigmoid_loss"]


def weighted_sigmoid_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    positive_weights: torch.Tensor,
    negative_weights: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``sum_n w_n sum_j [y_nj q_j + (1 - y_nj) r_j] BCE(z_nj, y_nj) / N`` over all ``K+1`` columns.

    Args:
        logits: ``[N, K+1]``, background column K.
        labels: ``[N]`` int64 in ``[0, K]`` (K: background; target 1 on column K).
        positive_weights, negative_weights: ``[K+1]`` per-column weights q (on each row's own column) and r (on the
            other columns); not differentiated through.
        weights: optional ``[N]`` per-row weights.

    Returns:
        scalar in ``logits``' dtype (0 for N == 0, still connected to ``logits``).
    """
    if logits.dim() != 2:
        raise ValueError(f"weighted_sigmoid_loss: logits must be [N, K+1], got {tuple(logits.shape)}")
    columns = logits.shape[1]
    for name, value in (("positive_weights", positive_weights), ("negative_weights", negative_weights)):
        if tuple(value.shape) != (columns,):
            raise ValueError(
                f"weighted_sigmoid_loss: {name} must be [{columns}] for logits {tuple(logits.shape)}, got "
                f"{tuple(value.shape)}"
            )
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    dtype = compute_dtype(logits)
    logits32 = logits.to(dtype)
    targets = one_hot_targets(labels, columns, dtype)
    positive = positive_weights.detach().to(device=logits.device, dtype=dtype)
    negative = negative_weights.detach().to(device=logits.device, dtype=dtype)
    entry_weights = targets * positive + (1 - targets) * negative
    per_row = (F.binary_cross_entropy_with_logits(logits32, targets, reduction="none") * entry_weights).sum(dim=1)
    if weights is not None:
        per_row = per_row * weights.to(dtype)
    return (per_row.sum() / logits.shape[0]).to(logits.dtype)


def eqlv2_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pos_grad: torch.Tensor,
    neg_grad: torch.Tensor,
    *,
    gamma: float = EQLV2_GAMMA,
    mu: float = EQLV2_MU,
    alpha: float = EQLV2_ALPHA,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The paper's equations: EQLv2's loss of ``[N, K+1]`` logits given the ``[K]`` accumulated positive and
    negative gradients (:func:`eqlv2_weights` for the K classes, 1 on the background column, then
    :func:`weighted_sigmoid_loss`). Without the official first-iteration rule (weights 1 before any accumulation:
    :meth:`GradientRatio.weights`)."""
    positive, negative = eqlv2_weights(pos_grad, neg_grad, gamma=gamma, mu=mu, alpha=alpha)
    background = positive.new_ones(1)
    return weighted_sigmoid_loss(
        logits, labels, torch.cat([positive, background]), torch.cat([negative, background]), weights
    )


class EQLv2Loss(IndicatorUser, nn.Module):
    """EQLv2 as a ``cls_loss`` of :class:`~ltdet2.modeling.LongTailOutputLayers` (module docstring), reading the
    step's weights from a :class:`~ltdet2.memory.GradientRatio` indicator of the ROI heads (which holds gamma, mu,
    alpha and accumulates the gradients after the loss).

    A loss for the sigmoid classifier with a background column (``class_scoring = "sigmoid_background"``:
    :class:`~ltdet2.modeling.box_predictors.scoring.SigmoidBackgroundScoring`, ``K+1`` logits); the predictor refuses
    it with another scoring. ``ltdet2.config.eqlv2.add_eqlv2`` adds the loss, the scoring and the indicator together.

    Args:
        indicator: the name of the ROI heads' :class:`~ltdet2.memory.GradientRatio`.
        num_classes: K, checked against the indicator's and the logits' when the loss runs (None: not checked).
    """

    class_scoring = "sigmoid_background"

    def __init__(self, *, indicator: str = "eqlv2_gradients", num_classes: int | None = None):
        super().__init__()
        self.indicator_names = (indicator,)
        self.num_classes = None if num_classes is None else int(num_classes)

    def weights(self, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q [K+1], r [K+1])`` of the bound indicator; a clear error when it is not a GradientRatio of K classes."""
        indicator = self.bound_indicator
        if not isinstance(indicator, GradientRatio):
            raise ValueError(
                f"EQLv2Loss: indicator {self.indicator_names[0]!r} is a {type(indicator).__name__}; EQLv2 reads the "
                "accumulated gradients of a GradientRatio"
            )
        if indicator.num_classes != num_classes or self.num_classes not in (None, num_classes):
            raise ValueError(
                f"EQLv2Loss: indicator {self.indicator_names[0]!r} has {indicator.num_classes} classes, the loss "
                f"num_classes={self.num_classes} and the logits {num_classes} class columns (+1 background): they "
                "must all be K"
            )
        return indicator.weights()

    def forward(self, logits, labels, weights=None):
        positive, negative = self.weights(logits.shape[1] - 1)
        return weighted_sigmoid_loss(logits, labels, positive, negative, weights)

    def extra_repr(self):
        return f"indicator={self.indicator_names[0]!r}"
