"""Class scorings of a box predictor: how classification logits (``[R, K+1]``, background column K, Detectron2's
convention; a scoring may ask for more columns, :meth:`ClassScoring.num_logits`) become ``[R, K+1]`` test-time class
probabilities, which classification loss trains them when the predictor is given none, and how the linear
classifier's biases start.

A scoring is a small module (LazyConfig-instantiable, keyword-only arguments) given to
:class:`~ltdet2.modeling.LongTailOutputLayers` as ``scoring=``. A new classifier family (another sigmoid, an
objectness-aware scoring) subclasses :class:`ClassScoring` instead of editing the predictor. A loss written for one
scoring declares it with a ``class_scoring`` attribute (a scoring's :attr:`~ClassScoring.name`, or a scoring
class), which the predictor checks (:func:`check_loss_scoring`).
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..losses.seesaw import objectness_softmax_loss, objectness_softmax_probs
from ..losses.sigmoid_background import sigmoid_background_loss, sigmoid_background_probs

__all__ = [
    "CLASS_SCORINGS",
    "ClassScoring",
    "ObjectnessSoftmaxScoring",
    "SigmoidBackgroundScoring",
    "SigmoidCEScoring",
    "SoftmaxScoring",
    "check_loss_scoring",
    "detectron2_scoring",
    "scoring_from_name",
]


class ClassScoring(nn.Module):
    """The scoring of a classifier with ``L = num_logits(K)`` logit columns: ``K+1`` with background last unless a
    scoring says otherwise.

    Subclasses implement :meth:`probabilities` and :meth:`loss`, :meth:`init_bias` where their classifier starts
    elsewhere than Detectron2's zero biases, and :meth:`num_logits` where their classifier has other than ``K+1``
    outputs (the objectness-aware scoring: ``K+2``). The first K logit columns are the K classes', in class order
    (what follows is the scoring's own: background, an objectness pair); a reader of the logits that is not the
    scoring itself (:class:`~ltdet2.memory.SoftConfusionMatrix`) reads only those K. Whatever the logits,
    :meth:`probabilities` gives ``[R, K+1]`` probabilities in [0, 1] with background in column K: what inference and
    the learning-status indicators read (:class:`~ltdet2.memory.PredictorBatch` checks the ``K+1`` columns). A scoring
    may hold buffers (they are checkpointed under the predictor's ``scoring.``) or read indicators (an
    ``IndicatorUser``: the ROI heads bind it like a loss); the ones here hold nothing.
    """

    #: the name a loss declares as its ``class_scoring`` to require this scoring
    name: str = ""

    def num_logits(self, num_classes: int) -> int:
        """L, the classifier's output columns for K = ``num_classes`` foreground classes: ``K+1`` (Detectron2's K
        classes and background; the default). :class:`~ltdet2.modeling.LongTailOutputLayers` sizes its linear
        ``cls_score`` with it and checks a classifier module's outputs against it."""
        return num_classes + 1

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """``[R, K+1]`` test-time class probabilities in [0, 1] (background column K, which inference drops) of
        ``[R, L]`` logits, ``L = num_logits(K)``; also what the learning-status indicators read. Always ``K+1`` columns,
        whatever ``L``."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The default classification loss (the predictor's when it has no ``cls_loss``): a scalar of ``[N, L]``
        logits, ``[N]`` int64 labels in ``[0, K]`` (K: background) and optional ``[N]`` per-row weights."""
        raise NotImplementedError

    def init_bias(self, bias: torch.Tensor) -> None:
        """Initialises, in place, the ``[L]`` biases of the predictor's linear ``cls_score`` (called once, when the
        predictor is built, unless it is given a ``cls_bias_init`` or a classifier module). Default: leaves
        Detectron2's zeros."""


class SoftmaxScoring(ClassScoring):
    """Detectron2's default: softmax over the K+1 columns, cross-entropy, zero biases
    (:class:`~detectron2.modeling.roi_heads.FastRCNNOutputLayers` without ``use_sigmoid_ce``).

    The loss is ``sum_n w_n * CE_n / N`` (per-row weights multiply each row's cross-entropy; without weights
    Detectron2's mean cross-entropy).
    """

    name = "softmax"

    def probabilities(self, logits):
        return F.softmax(logits, dim=-1)

    def loss(self, logits, labels, weights=None):
        if logits.numel() == 0:
            return logits.sum() * 0.0
        per_row = F.cross_entropy(logits, labels, reduction="none")
        if weights is not None:
            per_row = per_row * weights
        return per_row.sum() / logits.shape[0]


class SigmoidCEScoring(ClassScoring):
    """Detectron2's ``use_sigmoid_ce``: the sigmoid of each logit as its probability, and binary cross-entropy over
    the K foreground columns only (background rows: all-zero targets; the background column is never trained and
    its probability is not used), zero biases.

    The loss is Detectron2's ``sigmoid_cross_entropy_loss`` without the federated classes (``use_fed_loss``, whose
    class draws and weights belong to the predictor: :class:`~ltdet2.modeling.LongTailOutputLayers` computes that
    one with Detectron2's method), ``sum_n w_n * sum_k BCE_nk / N`` with per-row weights.

    Not :class:`SigmoidBackgroundScoring`, whose background column is a class of its own.
    """

    name = "sigmoid_ce"

    def probabilities(self, logits):
        return logits.sigmoid()

    def loss(self, logits, labels, weights=None):
        if logits.numel() == 0:
            return logits.new_zeros([1])[0]  # as Detectron2
        num_rows, num_classes = logits.shape[0], logits.shape[1] - 1
        target = logits.new_zeros(num_rows, num_classes + 1)
        target[range(len(labels)), labels] = 1
        per_entry = F.binary_cross_entropy_with_logits(logits[:, :-1], target[:, :num_classes], reduction="none")
        if weights is not None:
            per_entry = per_entry * weights[:, None]
        return torch.sum(per_entry) / num_rows


class SigmoidBackgroundScoring(ClassScoring):
    """BACL's sigmoid classifier whose last channel is background (paper Eq. 2-5): probabilities
    ``[sigmoid(z_j) * (1 - sigmoid(z_K)), sigmoid(z_K)]`` (:func:`~ltdet2.modeling.sigmoid_background_probs`), loss
    :func:`~ltdet2.modeling.losses.sigmoid_background_loss` (BCE over all K+1 channels, background rows with target 1
    on channel K), and all K+1 biases at ``-ln((1 - prior_prob) / prior_prob)`` (official code: prior 0.001, mmcv's
    ``bias_init_with_prob``, so ``-ln 999``; not in the paper).

    EQLv2's official classifier scores the same way (``EQLv2.get_activation``;
    :class:`~ltdet2.modeling.losses.EQLv2Loss` declares this scoring), with ``prior_prob=None`` (the zero biases of
    Detectron2 and of EQLv2's official ``BBoxHead``) and ``test_with_objectness`` (EQLv2's ``test_with_obj``, True by
    default; False: the test-time class probabilities are the plain ``sigmoid(z_j)``, the background column
    ``sigmoid(z_K)``).

    Args:
        prior_prob: the initial probability of every channel; None: the biases stay Detectron2's zeros.
        test_with_objectness: multiply the class probabilities by ``1 - sigmoid(z_K)`` (default).
    """

    name = "sigmoid_background"

    def __init__(self, *, prior_prob: float | None = 0.001, test_with_objectness: bool = True):
        super().__init__()
        if prior_prob is not None and not 0.0 < prior_prob < 1.0:
            raise ValueError(f"SigmoidBackgroundScoring: prior_prob must be in (0, 1) or None, got {prior_prob}")
        self.prior_prob = prior_prob
        self.test_with_objectness = bool(test_with_objectness)

    @property
    def bias_value(self) -> float | None:
        """The initial bias of every channel; None with ``prior_prob=None`` (the biases are left at 0)."""
        if self.prior_prob is None:
            return None
        return -math.log((1 - self.prior_prob) / self.prior_prob)

    def probabilities(self, logits):
        if not self.test_with_objectness:
            return logits.sigmoid()
        return sigmoid_background_probs(logits)

    def loss(self, logits, labels, weights=None):
        return sigmoid_background_loss(logits, labels, weights)

    def init_bias(self, bias):
        if self.prior_prob is not None:
            nn.init.constant_(bias, self.bias_value)

    def extra_repr(self):
        extra = "" if self.test_with_objectness else ", test_with_objectness=False"
        return f"prior_prob={self.prior_prob}{extra}"


class ObjectnessSoftmaxScoring(ClassScoring):
    """The objectness-aware scoring of Seesaw loss's official code (MMDetection's ``SeesawLoss``: ``get_cls_channels``,
    ``get_activation``): ``K+2`` logits, K classes then an objectness pair (foreground, background).

    Probabilities (:func:`~ltdet2.modeling.losses.objectness_softmax_probs`): ``softmax(z[:K]) * p_fg`` for the K
    classes and ``p_bg`` for background, with ``(p_fg, p_bg) = softmax(z[K:])``. The default loss
    (:func:`~ltdet2.modeling.losses.objectness_softmax_loss`, used without a ``cls_loss``): cross-entropy over the K
    class logits on the foreground rows plus the 2-way objectness cross-entropy on all rows, divided by the number
    of rows: Seesaw loss (:class:`~ltdet2.modeling.losses.SeesawLoss`, which declares this scoring) with its factors
    off. Zero biases (Detectron2's and MMDetection's).
    """

    name = "objectness_softmax"

    def num_logits(self, num_classes):
        return num_classes + 2

    def probabilities(self, logits):
        return objectness_softmax_probs(logits)

    def loss(self, logits, labels, weights=None):
        return objectness_softmax_loss(logits, labels, weights)


def detectron2_scoring(use_sigmoid_ce: bool) -> ClassScoring:
    """The scoring :class:`~detectron2.modeling.roi_heads.FastRCNNOutputLayers` has with ``use_sigmoid_ce``."""
    return SigmoidCEScoring() if use_sigmoid_ce else SoftmaxScoring()


# the names LongTailOutputLayers(class_scoring=...) accepts (the option before scorings were objects): "softmax" is
# Detectron2's own scoring, as it was (sigmoid with use_sigmoid_ce)
CLASS_SCORINGS = ("softmax", "sigmoid_background")


def scoring_from_name(class_scoring: str, *, use_sigmoid_ce: bool = False) -> ClassScoring:
    """The scoring named by the ``class_scoring`` shortcut: ``"softmax"`` (Detectron2's: :class:`SoftmaxScoring`, or
    :class:`SigmoidCEScoring` with ``use_sigmoid_ce``) or ``"sigmoid_background"`` (:class:`SigmoidBackgroundScoring`
    with its defaults)."""
    if class_scoring == "softmax":
        return detectron2_scoring(use_sigmoid_ce)
    if class_scoring == "sigmoid_background":
        return SigmoidBackgroundScoring()
    raise ValueError(f"class_scoring must be one of {CLASS_SCORINGS}, got {class_scoring!r}")


def check_loss_scoring(cls_loss, scoring: ClassScoring, owner: str) -> None:
    """Refuses a ``cls_loss`` that declares (``class_scoring``: a scoring's name, or a scoring class) another scoring
    than ``scoring``."""
    required = getattr(cls_loss, "class_scoring", None)
    if required is None:
        return
    if isinstance(required, type):
        if not isinstance(scoring, required):
            raise ValueError(
                f"{owner}: cls_loss {type(cls_loss).__name__} is a loss for a {required.__name__}, but the box "
                f"predictor scores with {type(scoring).__name__}"
            )
    elif required != scoring.name:
        raise ValueError(
            f"{owner}: cls_loss {type(cls_loss).__name__} is a loss for class_scoring={required!r}, but the box "
            f"predictor scores with {type(scoring).__name__} (class_scoring={scoring.name!r})"
        )
