"""Seesaw loss (Wang et al., "Seesaw Loss for Long-Tailed Instance Segmentation", CVPR 2021, arXiv 2008.10032) and
the model parts of its official configurations: the objectness-aware scoring's loss and probabilities, and the
normalised linear classifier of ``K+2`` outputs.

**The loss (paper, Sec. 3).** For a row of class i, cross-entropy over the K classes with the other classes' terms
re-weighted::

    sigma_hat_i = e^{z_i} / (sum_{j != i} S_ij e^{z_j} + e^{z_i}),      S_ij = M_ij * C_ij

    M_ij = (N_j / N_i)^p  if N_j < N_i  else 1         (mitigation: N, the cumulative training samples per class)
    C_ij = (sigma_j / sigma_i)^q  if sigma_j > sigma_i  else 1     (compensation: sigma = softmax of the K logits)

p = 0.8, q = 2. It is computed as a cross-entropy of the logits ``z_j + log S_ij`` (``log S_ii = 0``), in log space
(``log M = p * min(0, log N_j - log N_i)``, ``log C = q * max(0, log sigma_j - log sigma_i)`` with ``log sigma`` the
log-softmax), which equals the official products without forming them. Gradients flow through ``z`` only: N is a
count and sigma the softmax of the *detached* logits (official code).

**Where ltdet2 follows the official code** (MMDetection's ``mmdet/models/losses/seesaw_loss.py``), each the default:

- ``eps=1e-2``: sigma_i in the compensation's denominator is clamped at ``eps`` (the equation has no clamp;
  ``eps=0`` computes it as written, exactly, in log space);
- N is clamped at 1 (a class never seen has N = 1: ``clamp(min=1)``); the counts are those of the
  :class:`~ltdet2.memory.indicators.CumulativeCount` indicator the loss reads (``update_timing="before_loss"``),
  updated with each iteration's rows *before* the loss (the official code adds the batch's labels to its buffer,
  then computes the loss), per process by default (``sync="local"``: the official buffer is not reduced over
  GPUs). The official buffer counts every label into ``K+1`` float32 entries and uses the first K: the same N for
  the foreground classes; ltdet2's are int64 (exact past 2^24 samples);
- the objectness branch: the classifier gives ``K+2`` logits, K classes then 2 objectness logits (foreground,
  background). The Seesaw term is taken over the foreground rows only, plus a 2-way cross-entropy "foreground vs
  background" over all rows; both are summed over rows and divided by the number of rows N (the official
  ``avg_factor``: the sampled RoIs), so the loss is ``(sum_fg seesaw + sum_all objectness) / N``. Test-time scores
  (:func:`objectness_softmax_probs`): the softmax over the K class logits times the objectness foreground
  probability, the background probability the objectness background probability;
- the classifier of the official configs (``NormedLinear``, temperature 20): :class:`SeesawNormalizedLinear`.

ltdet2's own choices: per-row weights (extra rows of feature sources) multiply both terms of their row (the
official ``label_weights``), and the denominator is all N rows (sampled RoIs and extra rows, as every loss of
:class:`~ltdet2.modeling.LongTailOutputLayers`). The official code logs the two terms apart
(``loss_cls_classes``, ``loss_cls_objectness``); here their sum is ``loss_cls``, the same total loss.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..classifiers import CosineClassifier
from ..indicator_links import IndicatorUser

__all__ = [
    "OBJECTNESS_LOGITS",
    "SeesawLoss",
    "SeesawNormalizedLinear",
    "objectness_softmax_loss",
    "objectness_softmax_probs",
    "seesaw_log_factors",
    "seesaw_loss",
    "seesaw_loss_terms",
]

# the objectness branch's logits after the K class logits: foreground (column K), background (column K+1)
OBJECTNESS_LOGITS = 2


def _split(logits: torch.Tensor, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(``[N, K]`` class logits, ``[N, 2]`` objectness logits) of ``[N, K+2]`` logits."""
    if logits.dim() != 2 or logits.shape[1] < OBJECTNESS_LOGITS + 1:
        raise ValueError(
            f"{owner}: logits must be [N, K+2] (K classes, then foreground, background), got {tuple(logits.shape)}"
        )
    return logits[:, :-OBJECTNESS_LOGITS], logits[:, -OBJECTNESS_LOGITS:]


def objectness_softmax_probs(logits: torch.Tensor) -> torch.Tensor:
    """The objectness-aware test-time scores of ``[N, K+2]`` logits (official ``SeesawLoss.get_activation``):
    ``[N, K+1]``, ``softmax(z[:K])_j * softmax(z[K:])_0`` for the K classes and ``softmax(z[K:])_1`` (the objectness
    background probability) in column K. Each row sums to 1."""
    class_logits, objectness_logits = _split(logits, "objectness_softmax_probs")
    objectness = F.softmax(objectness_logits, dim=1)
    return torch.cat([F.softmax(class_logits, dim=1) * objectness[:, :1], objectness[:, 1:]], dim=1)


def seesaw_log_factors(
    class_logits: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor | None, *, p: float, q: float, eps: float
) -> torch.Tensor:
    """``log S_ij = log M_ij + log C_ij`` of rows of class ``labels`` (all foreground): ``[M, K]``, 0 on each row's
    own column; detached (no gradient). ``counts``: ``[K]`` cumulative samples N (clamped at 1; may be None with
    ``p == 0``). ``p == 0`` / ``q == 0`` leave out M / C (as the official ``if p > 0`` / ``if q > 0``)."""
    class_logits = class_logits.detach()
    log_factors = class_logits.new_zeros(class_logits.shape)
    if p > 0:
        log_n = counts.detach().to(device=class_logits.device, dtype=class_logits.dtype).clamp(min=1).log()
        log_factors += p * (log_n[None, :] - log_n[labels][:, None]).clamp(max=0)
    if q > 0:
        log_sigma = F.log_softmax(class_logits, dim=1)
        log_own = log_sigma.gather(1, labels[:, None])
        if eps > 0:
            log_own = log_own.clamp(min=math.log(eps))
        log_factors += q * (log_sigma - log_own).clamp(min=0)
    return log_factors.scatter(1, labels[:, None], 0.0)


def seesaw_loss_terms(
    logits: torch.Tensor,
    labels: torch.Tensor,
    counts: torch.Tensor | None,
    *,
    p: float = 0.8,
    q: float = 2.0,
    eps: float = 1e-2,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms of :func:`seesaw_loss`: (Seesaw term over the foreground rows, objectness term over all rows),
    each a scalar summed over rows and divided by N, in ``logits``' dtype."""
    num_rows = logits.shape[0]
    class_logits, objectness_logits = _split(logits, "seesaw_loss")
    num_classes = class_logits.shape[1]
    if counts is not None and tuple(counts.shape) != (num_classes,):
        raise ValueError(
            f"seesaw_loss: counts must be [{num_classes}] for logits with {num_classes} class columns (+2 "
            f"objectness), got {tuple(counts.shape)}"
        )
    if counts is None and p > 0:
        raise ValueError("seesaw_loss: the mitigation factor (p > 0) needs the cumulative counts N")
    if num_rows == 0:
        zero = logits.sum() * 0.0
        return zero, zero
    # at least float32 (under AMP the log-space factors and the sums stay exact enough)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    class_logits, objectness_logits = class_logits.to(dtype), objectness_logits.to(dtype)
    foreground = labels < num_classes
    # every row goes through the class term (background rows as class 0, then dropped): no host sync
    class_labels = torch.where(foreground, labels, 0)
    log_factors = seesaw_log_factors(class_logits, class_labels, counts, p=p, q=q, eps=eps)
    class_term = F.cross_entropy(class_logits + log_factors, class_labels, reduction="none")
    class_term = torch.where(foreground, class_term, class_term.new_zeros(()))
    objectness_term = F.cross_entropy(objectness_logits, (~foreground).long(), reduction="none")
    if weights is not None:
        weights = weights.to(dtype)
        class_term, objectness_term = class_term * weights, objectness_term * weights
    return (
        (class_term.sum() / num_rows).to(logits.dtype),
        (objectness_term.sum() / num_rows).to(logits.dtype),
    )


def seesaw_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    counts: torch.Tensor | None,
    *,
    p: float = 0.8,
    q: float = 2.0,
    eps: float = 1e-2,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Seesaw loss with the objectness branch (module docstring), official defaults.

    Args:
        logits: ``[N, K+2]``: K class logits, then the objectness foreground and background logits.
        labels: ``[N]`` int64 in ``[0, K]`` (K: background).
        counts: ``[K]`` cumulative samples per class N (the indicator's, including this iteration's rows); not
            differentiated through. None only with ``p == 0``.
        p, q: the mitigation and compensation exponents (0 turns the factor off).
        eps: the clamp of sigma_i in the compensation factor (official 1e-2; 0: none, the paper's equation).
        weights: optional ``[N]`` per-row weights, multiplying both terms of their row.

    Returns:
        scalar ``(sum over foreground rows of the Seesaw term + sum over all rows of the objectness term) / N``
        (0 for N == 0, still connected to ``logits``).
    """
    classes, objectness = seesaw_loss_terms(logits, labels, counts, p=p, q=q, eps=eps, weights=weights)
    return classes + objectness


def objectness_softmax_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None):
    """The objectness-aware cross-entropy of ``[N, K+2]`` logits: Seesaw's loss without its factors (``p = q = 0``),
    i.e. softmax cross-entropy over the K classes on the foreground rows plus the 2-way objectness cross-entropy on
    all rows, divided by N. The default loss of
    :class:`~ltdet2.modeling.box_predictors.scoring.ObjectnessSoftmaxScoring`."""
    return seesaw_loss(logits, labels, None, p=0.0, q=0.0, weights=weights)


class SeesawLoss(IndicatorUser, nn.Module):
    """Seesaw loss as a ``cls_loss`` of :class:`~ltdet2.modeling.LongTailOutputLayers` (:func:`seesaw_loss`), reading
    the cumulative class counts N from an indicator of the ROI heads.

    It is a loss for the objectness-aware scoring (``class_scoring = "objectness_softmax"``:
    :class:`~ltdet2.modeling.box_predictors.scoring.ObjectnessSoftmaxScoring`, ``K+2`` logits); the predictor refuses
    it with another scoring. ``configs/seesaw.py:add_seesaw`` adds the loss, the scoring and the indicator together.

    Args:
        indicator: the ROI heads' indicator whose ``vector()`` gives N (``[K]``): a
            :class:`~ltdet2.memory.indicators.CumulativeCount` with ``update_timing="before_loss"`` (updated before
            the loss, as the official code); with the default ``"after_loss"`` it gives the previous iterations' N.
        p, q, eps: see :func:`seesaw_loss` (official 0.8, 2.0, 1e-2).
        num_classes: K, checked against the indicator's when the loss first runs (None: not checked).
    """

    class_scoring = "objectness_softmax"

    def __init__(
        self,
        *,
        indicator: str = "seesaw_count",
        p: float = 0.8,
        q: float = 2.0,
        eps: float = 1e-2,
        num_classes: int | None = None,
    ):
        super().__init__()
        for name, value in (("p", p), ("q", q), ("eps", eps)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"SeesawLoss: {name} must be a finite number >= 0, got {value!r}")
        if eps >= 1:
            raise ValueError(f"SeesawLoss: eps clamps a probability and must be < 1, got {eps}")
        self.indicator_names = (indicator,)
        self.p, self.q, self.eps = float(p), float(q), float(eps)
        self.num_classes = None if num_classes is None else int(num_classes)

    def counts(self, num_classes: int) -> torch.Tensor:
        """``[K]`` N from the bound indicator; a clear error when it is built for another class count."""
        indicator = self.bound_indicator
        counts = indicator.vector()
        if tuple(counts.shape) != (num_classes,) or self.num_classes not in (None, num_classes):
            raise ValueError(
                f"SeesawLoss: indicator {self.indicator_names[0]!r} ({type(indicator).__name__}) gives "
                f"{tuple(counts.shape)} counts; the loss has num_classes={self.num_classes} and logits with "
                f"{num_classes} class columns (+2 objectness): they must all be K"
            )
        return counts

    def forward(self, logits, labels, weights=None):
        num_classes = logits.shape[1] - OBJECTNESS_LOGITS
        counts = self.counts(num_classes) if self.p > 0 else None
        return seesaw_loss(logits, labels, counts, p=self.p, q=self.q, eps=self.eps, weights=weights)

    def extra_repr(self):
        return f"indicator={self.indicator_names[0]!r}, p={self.p}, q={self.q}, eps={self.eps}"


class SeesawNormalizedLinear(CosineClassifier):
    """The classifier of the official Seesaw configurations (MMDetection's ``NormedLinear``, ``tempearture=20``) with
    the ``K+2`` outputs of the objectness-aware scoring: ``logits = temperature * <x / (||x|| + eps), w_j / (||w_j||
    + eps)> + b_j`` for the K class rows then the 2 objectness rows.

    A :class:`~ltdet2.modeling.CosineClassifier` with a fixed scale (the temperature), eps on both norms
    (official 1e-6), the weight's N(0, 0.01) init (official ``init_weights``) and a learnable bias initialised to 0
    (``NormedLinear`` is an ``nn.Linear``: it has one; ``bias=False`` leaves it out).

    Args:
        input_dim: D. num_classes: K (the weight has K+2 rows).
        temperature: the fixed scale (official 20).
        eps: added to the feature and weight norms (official 1e-6).
        bias: a learnable per-output bias (official: yes).
    """

    def __init__(
        self, input_dim: int, num_classes: int, *, temperature: float = 20.0, eps: float = 1e-6, bias: bool = True
    ):
        super().__init__(
            input_dim,
            num_classes + OBJECTNESS_LOGITS - 1,  # CosineClassifier has num_classes + 1 rows
            scale=temperature,
            learnable_scale=False,
            eps=eps,
            weight_eps=eps,
            init_std=0.01,
        )
        self.num_classes = int(num_classes)  # K
        self.bias = nn.Parameter(torch.zeros(self.num_classes + OBJECTNESS_LOGITS)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return logits if self.bias is None else logits + self.bias

    def extra_repr(self):
        return (
            f"input_dim={self.input_dim}, num_classes={self.num_classes} (+{OBJECTNESS_LOGITS} objectness outputs), "
            f"temperature={float(self.scale):.3g}, bias={self.bias is not None}"
        )
