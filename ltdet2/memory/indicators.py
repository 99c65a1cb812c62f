"""Learning-status indicators (BACL Tab. II, LOCE's mean score, EQLv2's gradient ratio): per-class vectors for losses
and samplers.

Conventions: foreground classes are ``0 .. C-1`` and the background index is ``C`` (Detectron2). From the box
predictor (:class:`PredictorBatch`) an indicator reads per-class scores from the ``[N, C+1]`` probabilities
(background column C, in [0, 1]), whatever the width of the logits (``C+1``, or ``C+2`` for Seesaw's scoring), and
from the logits only their first C columns, the classes'.
``update`` ignores background rows where they can occur (all RoIs of a batch) and rejects labels
outside ``[0, C]``. Under ``sync="global"`` the increments of all ranks are summed before they are
applied (a collective: every rank calls ``update`` every step, possibly with no rows), which gives
the state a single process would reach on the ranks' batches concatenated.
"""

from dataclasses import InitVar, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .base import StateModule, check_choice
from .sync import all_reduce_sum, check_sync, is_global

__all__ = [
    "UPDATE_TIMINGS",
    "PredictorBatch",
    "object_mean_scores",
    "LearningStatusIndicator",
    "StaticFrequency",
    "ImageFrequency",
    "InstanceFrequency",
    "CumulativeCount",
    "MeanScore",
    "TruePositiveRate",
    "SoftConfusionMatrix",
    "GradientRatio",
    "eqlv2_weights",
]

# When in a training iteration the ROI heads update an indicator from the box predictor's rows: before the
# losses are computed (the losses read this iteration's update) or after them.
UPDATE_TIMINGS = ("before_loss", "after_loss")


def check_update_timing(timing: str) -> str:
    return check_choice("update_timing", timing, UPDATE_TIMINGS)


@dataclass
class PredictorBatch:
    """One training iteration's box-predictor rows, as the indicators read them (all detached).

    The two score tensors have different widths in general. The logits are the classifier's raw outputs, ``[N, L]``
    with ``L = scoring.num_logits(C)``: ``C+1`` (background column C) for Detectron2's scorings and BACL's, ``C+2``
    for Seesaw's objectness-aware one (C classes, then foreground and background objectness), whatever a scoring
    asks for. Only their first C columns have a meaning every scoring shares: the C classes' logits, in class order
    (:meth:`class_logits`). The probabilities are always ``[N, C+1]``, in [0, 1], background in column C: the
    predictor's test-time scores, the per-class scores an indicator reads (:meth:`class_probabilities`).

    Attributes:
        logits: [N, L] classification logits (see above): the sampled RoIs, then the extra (memory) rows.
        labels: [N] int64 classes in [0, C] (C = background).
        object_ids: [N] int64; rows of one object (one ground-truth box, or one (source, class) of
            memory rows) share an id; rows with id < 0 (background) belong to no object.
        probabilities: [N, C+1] float32 class probabilities (background column C) from the box predictor's own
            test-time scoring (``scoring.probabilities(logits)``); None when no indicator reads them
            (``reads_probabilities``).

    Init-only (checks, not stored: ``dataclasses.replace`` of a batch need not repeat them):
        num_classes: C, when the builder knows it (the ROI heads give it): the probabilities must then be
            ``[N, C+1]`` and the logits at least C columns wide.
        num_logits: L, when the builder knows the scoring (``scoring.num_logits(C)``): the logits must be
            ``[N, L]``. None: their width is not checked.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    object_ids: torch.Tensor
    probabilities: torch.Tensor | None = None
    num_classes: InitVar[int | None] = None
    num_logits: InitVar[int | None] = None

    def __post_init__(self, num_classes, num_logits):
        if self.logits.dim() != 2:
            raise ValueError(f"PredictorBatch: logits must be [N, L] (2-D), got {tuple(self.logits.shape)}")
        num_rows, columns = self.logits.shape
        for name in ("labels", "object_ids"):
            value = getattr(self, name)
            if tuple(value.shape) != (num_rows,):
                raise ValueError(f"PredictorBatch: {name} must be [{num_rows}], got {tuple(value.shape)}")
        if num_logits is not None and columns != num_logits:
            raise ValueError(
                f"PredictorBatch: logits must be [{num_rows}, {num_logits}] (the scoring's num_logits), "
                f"got {tuple(self.logits.shape)}"
            )
        if num_classes is not None and columns < num_classes:
            raise ValueError(
                f"PredictorBatch: logits must start with the {num_classes} classes' columns, got "
                f"{tuple(self.logits.shape)}"
            )
        if self.probabilities is None:
            return
        shape = tuple(self.probabilities.shape)
        width = None if num_classes is None else num_classes + 1
        if len(shape) != 2 or shape[0] != num_rows or (width is not None and shape[1] != width):
            expected = f"[{num_rows}, {width}]" if width is not None else f"[{num_rows}, C+1]"
            raise ValueError(
                f"PredictorBatch: probabilities must be {expected} (the C classes, then background in column C, "
                f"whatever the logits' width: {columns} here), got {shape}; a scoring's probabilities() gives C+1 "
                "columns"
            )

    def class_probabilities(self, reader: str, num_classes: int | None = None) -> torch.Tensor:
        """``probabilities`` ``[N, C+1]`` (background column C), or a clear error naming the indicator ``reader``
        that needs them; with ``num_classes`` (the reader's C) their width is checked against ``C+1``."""
        if self.probabilities is None:
            raise ValueError(
                f"{reader} reads the predictor's class probabilities, but the batch has none "
                "(set reads_probabilities = True on the indicator)"
            )
        if num_classes is not None and self.probabilities.shape[1] != num_classes + 1:
            raise ValueError(
                f"{reader} reads [N, {num_classes + 1}] class probabilities ({num_classes} classes, then "
                f"background), but the batch's are {tuple(self.probabilities.shape)}"
            )
        return self.probabilities

    def class_logits(self, reader: str, num_classes: int) -> torch.Tensor:
        """``[N, C]``: the C classes' logits, the first C columns of ``logits`` whatever the scoring's width (without
        background, objectness or any other column a scoring adds); a clear error naming ``reader`` when the logits
        are narrower."""
        if self.logits.shape[1] < num_classes:
            raise ValueError(
                f"{reader} reads the {num_classes} classes' logits (the first {num_classes} columns), but the "
                f"batch's logits are {tuple(self.logits.shape)}"
            )
        return self.logits[:, :num_classes]


@torch.no_grad()
def object_mean_scores(probabilities, labels, object_ids):
    """Per object, the mean over its rows of the probability of its class (LOCE's mean-score entries).

    Args:
        probabilities: [N, C+1] class probabilities (background index C), not logits (whose width depends on
            the scoring).
        labels: [N] classes; rows labelled C (background) are ignored.
        object_ids: [N] int64, rows of one object share an id; rows with id < 0 are ignored.

    Returns:
        (labels [K], mean probabilities [K]) of the K objects, in increasing id order.
    """
    num_classes = probabilities.shape[1] - 1
    keep = (labels < num_classes) & (object_ids >= 0)
    scores = probabilities.gather(1, labels[:, None]).squeeze(1)[keep]  # no copy of the kept [K, C+1] rows
    labels, object_ids = labels[keep], object_ids[keep]
    unique_ids, inverse = torch.unique(object_ids, return_inverse=True)
    sums = scores.new_zeros(unique_ids.numel()).index_add_(0, inverse, scores)
    counts = scores.new_zeros(unique_ids.numel()).index_add_(0, inverse, torch.ones_like(scores))
    object_labels = labels.new_zeros(unique_ids.numel()).scatter_(0, inverse, labels)
    return object_labels, sums / counts.clamp(min=1)


class LearningStatusIndicator(StateModule):
    """Base class: ``update(labels, ...)`` accumulates, ``vector()`` returns the per-class status.

    ``vector()`` is ``[C]`` (``[C+1]`` for :class:`MeanScore` and a :class:`StaticFrequency` with a
    ``background_count``, whose last entry is background).
    Indicators with a pairwise form also implement ``matrix()`` (``[C, C]``); ``has_matrix`` says
    which. Larger values mean a stronger (better learned / more frequent) class throughout.

    In training, the ROI heads call ``update_from_predictions(batch)`` once per iteration with the box
    predictor's rows (:class:`PredictorBatch`); each indicator says there what it reads.
    ``reads_probabilities`` asks for the predictor's class probabilities in the batch.
    ``update_timing`` says when: ``"after_loss"`` (the default: this iteration's losses read the state
    the previous iterations left, e.g. BACL's confusion matrix) or ``"before_loss"`` (the losses read
    this iteration's update, e.g. LOCE's mean score). Feature sources run before the predictor and
    always read the previous iterations' state.
    """

    has_matrix = False
    reads_probabilities = False
    update_timing = "after_loss"

    def __init__(self, num_classes: int, *, sync: str = "local"):
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.sync = check_sync(sync)

    def update(self, labels: torch.Tensor, *args, **kwargs) -> None:
        raise NotImplementedError

    def update_from_predictions(self, batch: PredictorBatch) -> None:
        """Updates from one iteration's box-predictor rows (see :class:`PredictorBatch`)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no rule to update from the box predictor's outputs; "
            "implement update_from_predictions"
        )

    def vector(self) -> torch.Tensor:
        raise NotImplementedError

    def matrix(self) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no matrix form; use vector()")

    def reset(self) -> None:
        for buf in self.buffers():
            buf.zero_()

    def forward(self) -> torch.Tensor:
        return self.vector()

    def _check_class_columns(self, scores, name):
        """``scores`` must be ``[N, C]`` or ``[N, C+1]``."""
        if scores.dim() != 2 or scores.shape[1] not in (self.num_classes, self.num_classes + 1):
            raise ValueError(
                f"{type(self).__name__}.update: {name} must be [N, {self.num_classes}] or "
                f"[N, {self.num_classes + 1}], got {tuple(scores.shape)}"
            )

    def _foreground(self, labels, *rows):
        """Validate ``labels [N]`` (background allowed) and keep the foreground rows of ``rows``."""
        labels = self._check_labels(labels, self.num_classes, "update", allow_background=True)
        for r in rows:
            if r.shape[0] != labels.numel():
                raise ValueError(f"{type(self).__name__}.update: {labels.numel()} labels but {r.shape[0]} rows")
        keep = (labels < self.num_classes).nonzero().squeeze(1)  # one host sync for all the rows
        return (labels[keep],) + tuple(r.to(self.device)[keep] for r in rows)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, sync={self.sync!r}"


class StaticFrequency(LearningStatusIndicator):
    """A fixed per-class statistic from dataset counts (BACL's static f_i / F_i).

    ``vector()`` is ``counts / counts.sum()`` (``normalize="sum"``, default), ``counts / counts.max()``
    (``"max"``) or the raw counts (``"none"``), as float32 ``[C]``. ``update`` does nothing.

    With ``background_count`` the vector is ``[C+1]``: the raw count ``background_count`` is appended as
    the background entry (index C) and normalised with the same divisor as the foreground counts, so
    ratios to it are those of the raw counts. LOCE's dataset-guided EBL (supplement eq. 1) uses raw
    instance counts with ``n_{C+1} = 1``: ``InstanceFrequency(..., background_count=1)``.
    """

    count_field = None  # attribute read by from_lvis_meta

    def __init__(self, counts, *, normalize: str = "sum", background_count: float | None = None):
        counts = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
        if counts.dim() != 1 or counts.numel() == 0:
            raise ValueError(
                f"{type(self).__name__}: counts must be a non-empty 1-D array, got shape {tuple(counts.shape)}"
            )
        bad = torch.nonzero(~torch.isfinite(counts) | (counts < 0)).flatten()
        if bad.numel():
            raise ValueError(
                f"{type(self).__name__}: counts must be finite and >= 0; class indices {bad[:10].tolist()} hold "
                f"{counts[bad[:10]].tolist()}{' ...' if bad.numel() > 10 else ''}"
            )
        if normalize not in ("sum", "max", "none"):
            raise ValueError(f"normalize must be 'sum', 'max' or 'none', got {normalize!r}")
        if background_count is not None and not background_count > 0:
            raise ValueError(f"{type(self).__name__}: background_count must be > 0, got {background_count!r}")
        super().__init__(counts.numel())
        self.normalize = normalize
        self.background_count = None if background_count is None else float(background_count)
        self.register_buffer("counts", counts)

    @classmethod
    def from_lvis_meta(cls, meta, **kwargs):
        """Build from an object with ``image_count`` / ``instance_count`` arrays (``LVISMeta``)."""
        if cls.count_field is None:
            raise TypeError("use ImageFrequency or InstanceFrequency")
        counts = getattr(meta, cls.count_field, None)
        if counts is None:
            raise ValueError(f"{type(meta).__name__} has no {cls.count_field!r} field")
        return cls(counts, **kwargs)

    def update(self, *args, **kwargs) -> None:
        pass

    def update_from_predictions(self, batch: PredictorBatch) -> None:
        pass

    def reset(self) -> None:
        pass

    def vector(self) -> torch.Tensor:
        counts = self.counts
        if self.background_count is not None:
            counts = torch.cat([counts, counts.new_full((1,), self.background_count)])
        foreground = self.counts
        if self.normalize == "sum":
            counts = counts / foreground.sum().clamp(min=1)
        elif self.normalize == "max":
            counts = counts / foreground.max().clamp(min=1)
        return counts.float()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, normalize={self.normalize!r}, background_count={self.background_count}"


class ImageFrequency(StaticFrequency):
    """Number of training images containing each class (LVIS ``image_count``)."""

    count_field = "image_count"


class InstanceFrequency(StaticFrequency):
    """Number of training instances of each class (LVIS ``instance_count``)."""

    count_field = "instance_count"


class CumulativeCount(LearningStatusIndicator):
    """N_i: number of foreground rows of each class seen so far. ``vector()`` float32 ``[C]`` (an int64 ``counts``
    buffer, checkpointed).

    ``update_timing``: ``"after_loss"`` (default: an iteration's losses read the counts of the previous iterations) or
    ``"before_loss"`` (they include the iteration's own rows: Seesaw loss's N, whose official code, MMDetection's
    ``SeesawLoss``, adds each batch's labels to its ``cum_samples`` before the loss and does not reduce them over GPUs:
    ``sync="local"``).
    """

    def __init__(self, num_classes: int, *, update_timing: str = "after_loss", sync: str = "local"):
        super().__init__(num_classes, sync=sync)
        self.update_timing = check_update_timing(update_timing)
        self.register_buffer("counts", torch.zeros(self.num_classes, dtype=torch.int64))

    @torch.no_grad()
    def update(self, labels: torch.Tensor) -> None:
        (labels,) = self._foreground(labels)
        increment = torch.bincount(labels, minlength=self.num_classes)
        if is_global(self.sync):
            all_reduce_sum(increment)
        self.counts += increment

    def update_from_predictions(self, batch: PredictorBatch) -> None:
        """Counts the foreground rows (sampled RoIs and memory rows)."""
        self.update(batch.labels)

    def vector(self) -> torch.Tensor:
        return self.counts.float()


class MeanScore(LearningStatusIndicator):
    """LOCE's mean classification score s, ``[C+1]`` float32 with background at index C.

    Each update entry is a (class, score) pair, the score a probability in [0, 1] (LOCE: per
    ground-truth box, the mean softmax probability of its class over its positive RoIs; one entry per
    class for memory rows). A class with n entries in one update becomes
    ``s <- alpha^n * s + (1 - alpha^n) * mean(entries)``. All classes start at ``initial_score`` and
    the background entry is the constant ``background_score`` (LOCE uses 0.01 for both).

    From the box predictor (:meth:`update_from_predictions`): one entry per object, the mean over the
    object's rows of the predictor's probability of its class (:func:`object_mean_scores`), read from the
    ``[N, C+1]`` test-time probabilities of the predictor's scoring whatever the width of its logits (Seesaw's
    ``C+2``: ``softmax(classes) * p_fg``).

    Timing and multi-process (the paper is silent on both; defaults are the official code's):
    ``update_timing="before_loss"`` (official: EBL of an iteration uses the scores updated with that
    iteration's entries; ``"after_loss"``: the previous iterations' scores). The official code gathers
    the entries of all GPUs before updating: ``sync="global"``, the default here (every rank then holds
    the same s, which a checkpoint restores exactly); ``"local"`` updates each rank from its own
    entries. ``global`` is a collective on several processes (every rank updates every iteration) and
    touches nothing in torch.distributed in a single process.
    """

    reads_probabilities = True

    def __init__(
        self,
        num_classes: int,
        *,
        alpha: float = 0.9,
        initial_score: float = 0.01,
        background_score: float = 0.01,
        update_timing: str = "before_loss",
        sync: str = "global",
    ):
        super().__init__(num_classes, sync=sync)
        self.update_timing = check_update_timing(update_timing)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        self.alpha = float(alpha)
        self.initial_score = float(initial_score)
        self.background_score = float(background_score)
        scores = torch.full((self.num_classes + 1,), self.initial_score, dtype=torch.float32)
        scores[-1] = self.background_score
        self.register_buffer("mean_scores", scores)

    @torch.no_grad()
    def update(self, labels: torch.Tensor, scores: torch.Tensor) -> None:
        """``labels [N]`` (background entries ignored), ``scores [N]`` probabilities."""
        scores = torch.as_tensor(scores)
        if scores.dim() != 1:
            raise ValueError(f"MeanScore.update: scores must be [N], got {tuple(scores.shape)}")
        labels, scores = self._foreground(labels, scores.detach())
        # accumulate in float64: alpha**n underflows gracefully and sums of many entries stay exact
        stats = torch.zeros(2, self.num_classes, dtype=torch.float64, device=self.device)
        stats[0].index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        stats[1].index_add_(0, labels, scores.to(torch.float64))
        if is_global(self.sync):
            all_reduce_sum(stats)
        counts, sums = stats
        # dense over the C classes (no host sync): a class without entries has decay 1 and keeps its score
        decay = torch.pow(self.alpha, counts)
        means = sums / counts.clamp(min=1)
        old = self.mean_scores[: self.num_classes].to(torch.float64)
        self.mean_scores[: self.num_classes] = (decay * old + (1 - decay) * means).to(self.mean_scores.dtype)

    def update_from_predictions(self, batch: PredictorBatch) -> None:
        probabilities = batch.class_probabilities(type(self).__name__, self.num_classes)
        self.update(*object_mean_scores(probabilities, batch.labels, batch.object_ids))

    def reset(self) -> None:
        self.mean_scores.fill_(self.initial_score)
        self.mean_scores[-1] = self.background_score

    def vector(self) -> torch.Tensor:
        return self.mean_scores.clone()

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, alpha={self.alpha}, background_score={self.background_score}, "
            f"update_timing={self.update_timing!r}"
        )


class TruePositiveRate(LearningStatusIndicator):
    """Online TPR_i = #(rows labelled i with argmax score == i) / #(rows labelled i), cumulative.

    ``update``: ``scores [N, C]`` or ``[N, C+1]``, probabilities or logits, whatever the classifier's
    decision is the argmax of; with C+1 columns a positive whose argmax is background is a miss.
    From the box predictor (:meth:`update_from_predictions`): the argmax over the C foreground
    columns of the predictor's ``[N, C+1]`` probabilities, never its logits (BACL Tab. II; with a background
    channel, the argmax of the detection scores), so a positive counts by its best foreground class even when
    background scores higher. Classes never seen have TPR 0. ``vector()`` float32 ``[C]``.
    """

    reads_probabilities = True

    def __init__(self, num_classes: int, *, sync: str = "local"):
        super().__init__(num_classes, sync=sync)
        self.register_buffer("true_positives", torch.zeros(self.num_classes, dtype=torch.int64))
        self.register_buffer("positives", torch.zeros(self.num_classes, dtype=torch.int64))

    @torch.no_grad()
    def update(self, labels: torch.Tensor, scores: torch.Tensor) -> None:
        self._check_class_columns(scores, "scores")
        labels, scores = self._foreground(labels, scores.detach())
        hits = (scores.argmax(dim=1) == labels).long()
        stats = torch.zeros(2, self.num_classes, dtype=torch.int64, device=self.device)
        stats[0].index_add_(0, labels, hits)
        stats[1] += torch.bincount(labels, minlength=self.num_classes)
        if is_global(self.sync):
            all_reduce_sum(stats)
        self.true_positives += stats[0]
        self.positives += stats[1]

    def update_from_predictions(self, batch: PredictorBatch) -> None:
        probabilities = batch.class_probabilities(type(self).__name__, self.num_classes)
        self.update(batch.labels, probabilities[:, : self.num_classes])

    def vector(self) -> torch.Tensor:
        return (self.true_positives.double() / self.positives.clamp(min=1)).float()


class SoftConfusionMatrix(LearningStatusIndicator):
    """BACL's confusion matrix M (Tab. II): cumulative from the last reset (stage start).

    ``M[i, j]`` = mean over foreground rows labelled i of ``softmax(z[:C])[j]``, the softmax taken over
    the C foreground logits only (the background logit of BACL's sigmoid classifier is left out).
    Rows of classes never seen are 0, as in the official code (``numerator / max(count, 1)``).
    ``matrix()`` float32 ``[C, C]``; ``vector()`` is the diagonal ``M[i, i]``, the per-class status
    BACL's FHM samples by (``p ∝ 1 - M[i, i]``). FCBL's pairwise form uses ``matrix()``.
    From the box predictor (:meth:`update_from_predictions`) it reads the logits, not the predictor's
    probabilities: the definition is a softmax over the foreground logits whatever the classifier, the C class
    columns of the predictor's logits (:meth:`PredictorBatch.class_logits`, whatever their width: with Seesaw's
    ``C+2`` logits, the softmax over its C class logits).
    """

    has_matrix = True

    def __init__(self, num_classes: int, *, sync: str = "local"):
        super().__init__(num_classes, sync=sync)
        self.register_buffer("numerator", torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64))
        self.register_buffer("positives", torch.zeros(self.num_classes, dtype=torch.int64))

    @torch.no_grad()
    def update(self, labels: torch.Tensor, logits: torch.Tensor) -> None:
        """``labels [N]``, ``logits [N, C]`` or ``[N, C+1]`` (raw classifier outputs)."""
        self._check_class_columns(logits, "logits")
        labels, logits = self._foreground(labels, logits.detach())
        probs = F.softmax(logits[:, : self.num_classes].float(), dim=1)
        counts = torch.bincount(labels, minlength=self.num_classes)
        # rows summed per class present in the batch, not into a dense [C, C] temporary
        classes, inverse = torch.unique(labels, return_inverse=True)
        row_sums = probs.new_zeros(classes.numel(), self.num_classes).index_add_(0, inverse, probs)
        if is_global(self.sync):
            increment = probs.new_zeros(self.num_classes, self.num_classes).index_copy_(0, classes, row_sums)
            all_reduce_sum(increment)
            all_reduce_sum(counts)
            self.numerator += increment
        else:
            self.numerator.index_add_(0, classes, row_sums.to(self.numerator.dtype))
        self.positives += counts

    def update_from_predictions(self, batch: PredictorBatch) -> None:
        # the C class logits only: the logits may have other columns than C+1 (Seesaw's objectness pair)
        self.update(batch.labels, batch.class_logits(type(self).__name__, self.num_classes))

    def matrix(self) -> torch.Tensor:
        return (self.numerator / self.positives.clamp(min=1)[:, None]).float()

    def vector(self) -> torch.Tensor:
        return (self.numerator.diagonal() / self.positives.clamp(min=1)).float()


# EQLv2's official values (tztztztztz/eqlv2, mmdet/models/losses/eqlv2.py: EQLv2.__init__ and collect_grad)
EQLV2_GAMMA = 12.0
EQLV2_MU = 0.8
EQLV2_ALPHA = 4.0
EQLV2_EPS = 1e-10  # g_j = pos_j / (neg_j + 1e-10)


def eqlv2_weights(
    pos_grad: torch.Tensor,
    neg_grad: torch.Tensor,
    *,
    gamma: float = EQLV2_GAMMA,
    mu: float = EQLV2_MU,
    alpha: float = EQLV2_ALPHA,
    eps: float = EQLV2_EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EQLv2's per-class weights (Tan et al., CVPR 2021, gradient-guided re-weighing) from the accumulated gradients.

    ``g_j = pos_j / (neg_j + eps)``, ``f(x) = 1 / (1 + exp(-gamma (x - mu)))``, negative weight ``r_j = f(g_j)``,
    positive weight ``q_j = 1 + alpha (1 - r_j)``. A class with no positive gradient yet (``g_j = 0``) gets
    ``r_j = f(0)`` (``6.8e-5`` with the official gamma and mu) and ``q_j`` close to ``1 + alpha``.

    Args:
        pos_grad, neg_grad: ``[K]`` accumulated positive / negative gradient magnitudes of the K classes
            (no background entry).
        gamma, mu, alpha: the mapping's slope and centre and the positive up-weighting (official 12, 0.8, 4).
        eps: added to the negative sum (official 1e-10).

    Returns:
        ``(q [K], r [K])`` in ``pos_grad``'s dtype; not differentiated through (the inputs are state).
    """
    if pos_grad.shape != neg_grad.shape or pos_grad.dim() != 1:
        raise ValueError(
            f"eqlv2_weights: pos_grad and neg_grad must both be [K], got {tuple(pos_grad.shape)} and "
            f"{tuple(neg_grad.shape)}"
        )
    ratio = pos_grad.detach() / (neg_grad.detach() + eps)
    negative = torch.sigmoid(gamma * (ratio - mu))  # 1 / (1 + exp(-gamma (g - mu))), without overflow
    positive = 1 + alpha * (1 - negative)
    return positive, negative


class GradientRatio(LearningStatusIndicator):
    """EQLv2's learning status: per class j, the accumulated positive and negative gradient magnitudes of its sigmoid
    logit, ``pos_j`` and ``neg_j`` (float64 ``[K]`` buffers ``pos_grad`` / ``neg_grad``, checkpointed, with the
    number of updates ``num_updates``), and from them the weights the loss uses (:meth:`weights`,
    :func:`eqlv2_weights`). ``vector()`` is the ratio ``g_j = pos_j / (neg_j + 1e-10)``, float32 ``[K]`` (larger: a
    class whose positives weigh more against its negatives, a better trained one).

    It reads the predictor's ``[N, K+1]`` logits of a sigmoid classifier with a background column K (BACL's and
    EQLv2's :class:`~ltdet2.modeling.box_predictors.scoring.SigmoidBackgroundScoring`): the gradient of each logit's
    binary cross-entropy is ``sigmoid(z) - y``, so a row of class i adds ``q_i |sigmoid(z_i) - 1|`` to ``pos_i`` and
    ``r_j sigmoid(z_j)`` to ``neg_j`` for every other class j (background rows to every class's ``neg``), with the
    weights ``q``, ``r`` of this iteration, those the loss used (official ``collect_grad(cls_score, target,
    weight)``, called with the step's weights after the loss). The background column is not accumulated (its weights
    are 1: official ``[:-1]``). Magnitudes are not divided by the number of rows (official).

    Timing: always ``"after_loss"``: the update computes the step's weights from the state the loss read (nothing
    changes the state in between), then adds the step's gradients. Until the first update the weights are 1 (both
    official versions: the first one skips the mapping while its buffers are unset, the later one starts the ratio
    at 100, where ``f = 1``).

    ``sync="global"`` (default): the increments are summed over the ranks before they are added (the official
    ``dist.all_reduce`` of both sums), so every rank holds the same state; ``"local"``: each rank its own.
    Per-row weights of extra rows (feature sources) scale their loss terms but not the accumulated gradients (the
    indicator sees the rows, not their weights); EQLv2's own setting has no extra rows.
    """

    update_timing = "after_loss"

    def __init__(
        self,
        num_classes: int,
        *,
        gamma: float = EQLV2_GAMMA,
        mu: float = EQLV2_MU,
        alpha: float = EQLV2_ALPHA,
        sync: str = "global",
    ):
        super().__init__(num_classes, sync=sync)
        for name, value in (("gamma", gamma), ("mu", mu), ("alpha", alpha)):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)):
                raise ValueError(f"GradientRatio: {name} must be a finite number, got {value!r}")
        if alpha < 0:
            raise ValueError(f"GradientRatio: alpha must be >= 0 (positive weights 1 + alpha (1 - r)), got {alpha}")
        self.gamma, self.mu, self.alpha = float(gamma), float(mu), float(alpha)
        self.register_buffer("pos_grad", torch.zeros(self.num_classes, dtype=torch.float64))
        self.register_buffer("neg_grad", torch.zeros(self.num_classes, dtype=torch.float64))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))

    def ratio(self) -> torch.Tensor:
        """``[K]`` float64 ``g_j = pos_j / (neg_j + 1e-10)``."""
        return self.pos_grad / (self.neg_grad + EQLV2_EPS)

    def vector(self) -> torch.Tensor:
        return self.ratio().float()

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This iteration's ``(positive [K+1], negative [K+1])`` float64 weights, ``(q, 1)`` and ``(r, 1)``: the K
        classes' (:func:`eqlv2_weights` of the state; 1 before the first update), then 1 for the background column."""
        positive, negative = eqlv2_weights(self.pos_grad, self.neg_grad, gamma=self.gamma, mu=self.mu, alpha=self.alpha)
        started = self.num_updates > 0  # a 0-dim tensor: no host sync
        positive = torch.where(started, positive, torch.ones_like(positive))
        negative = torch.where(started, negative, torch.ones_like(negative))
        background = positive.new_ones(1)
        return torch.cat([positive, background]), torch.cat([negative, background])

    @torch.no_grad()
    def update(self, labels: torch.Tensor, logits: torch.Tensor) -> None:
        """``labels [N]`` in ``[0, K]``, ``logits [N, K+1]`` (background column K): adds the step's weighted
        gradient magnitudes of the K class columns."""
        num_classes = self.num_classes
        if logits.dim() != 2 or logits.shape[1] != num_classes + 1:
            raise ValueError(
                f"GradientRatio.update: logits must be [N, {num_classes + 1}] ({num_classes} classes, then "
                f"background), got {tuple(logits.shape)}"
            )
        labels = self._check_labels(labels, num_classes, "update", allow_background=True)
        if logits.shape[0] != labels.numel():
            raise ValueError(f"GradientRatio.update: {labels.numel()} labels but {logits.shape[0]} rows")
        positive, negative = self.weights()
        probabilities = logits.detach().to(device=self.device, dtype=torch.float64)[:, :num_classes].sigmoid()
        targets = F.one_hot(labels, num_classes + 1)[:, :num_classes].to(torch.float64)
        # per column, the weight is the same for every row: sum the magnitudes over the rows, then weight
        stats = torch.stack(
            [
                ((1 - probabilities) * targets).sum(0) * positive[:num_classes],
                (probabilities * (1 - targets)).sum(0) * negative[:num_classes],
            ]
        )
        if is_global(self.sync):
            all_reduce_sum(stats)
        self.pos_grad += stats[0]
        self.neg_grad += stats[1]
        self.num_updates += 1

    def update_from_predictions(self, batch: PredictorBatch) -> None:
        """Accumulates from the predictor's ``[N, K+1]`` logits (sampled RoIs and extra rows)."""
        if batch.logits.shape[1] != self.num_classes + 1:
            raise ValueError(
                f"GradientRatio reads the [N, {self.num_classes + 1}] logits of a sigmoid classifier with a "
                f"background column (SigmoidBackgroundScoring), but the batch's are {tuple(batch.logits.shape)}"
            )
        self.update(batch.labels, batch.logits)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma}, mu={self.mu}, alpha={self.alpha}"
