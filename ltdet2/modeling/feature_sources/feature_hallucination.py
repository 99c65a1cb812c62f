"""BACL's feature hallucination module (FHM) as a feature source."""

import math

import torch

from ltdet2.memory import PrototypeBank

from ..batching import image_index
from ..box_generator import dense_boxes_per_image
from ..extra_rows import ExtraRows
from ..losses.foreground_balance import STRENGTH_NORMALIZATIONS, check_indicator_classes, indicator_strengths
from .base import FeatureSource

__all__ = ["FeatureHallucination", "HALLUCINATION_CLASS_DRAWS"]

BOXES_PER_OBJECT = 16  # dense_boxes_per_image: one per sign pattern
HALLUCINATION_CLASS_DRAWS = ("seen", "all")
# dense boxes pooled and sent through the box head per call: the pooled block (e.g. 256x7x7 float32 = 49 KiB
# per box) stays bounded when an image holds hundreds of objects (LVIS)
_POOL_BLOCK_BYTES = 64 << 20


class FeatureHallucination(FeatureSource):
    """FHM (BACL Sec. III-E, Alg. 1): per-class statistics of box-head features and hallucinated rows
    ``f = mu + eps * std`` for classes drawn towards the weak ones, trained by the classifier only.

    Each training iteration:

    1. 16 dense boxes around every ground-truth box (:func:`~ltdet2.modeling.dense_boxes`, Eq. 10) are
       pooled and sent through the box head under ``no_grad`` (the box-head output, BACL's post-ReLU
       1024-d ``x_cls``);
    2. their per-class batch mean and variance are folded into a :class:`~ltdet2.memory.PrototypeBank`
       (EMA with ``momentum`` beta = 0.9, Eq. 11; a class's first batch is copied; unbiased batch
       variance as the official code, ``unbiased=False`` for the population variance);
    3. ``num_sampled_classes`` c classes are drawn with replacement with probability ``p_i ∝ 1 - l_i``
       (Eq. 12), l the bound indicator's per-class value in [0, 1] (:func:`indicator_strengths`:
       the confusion matrix's diagonal ``M[i, i]`` by default); the indicator is the previous
       iterations' (the ROI heads update it after the losses), the bank already holds this batch;
    4. ``per_class`` m features ``mu_i + eps * sqrt(var_i)``, ``eps ~ N(0, I)``, are drawn for each drawn
       class (Eq. 13 with the standard deviation, as the official code) and returned as
       classification-only :class:`ExtraRows` (no boxes: no regression, never the mask head). They
       count in the loss's normalisation and in the confusion matrix (Alg. 1 l. 14).

    Class draw: ``"seen"`` (the issue's rule, default): among the classes the bank has statistics of,
    so every draw gives m rows; ``"all"`` (official code): over all C classes (unseen classes have
    ``M[i, i] = 0``, the largest weight), draws of classes the bank has not seen give no rows.

    Images without ground truth add nothing; a batch without any still draws from earlier statistics.

    Args:
        num_classes: C.
        feature_dim: D, the box head's output size (the box predictor's input).
        num_sampled_classes: c (8). per_class: m (12). momentum: beta (0.9). unbiased: see above.
        indicator: name of the ROI heads' indicator (``"confusion"``; None: uniform over the classes).
        normalize: how a count indicator is scaled to [0, 1] (:func:`indicator_strengths`).
        class_draw: ``"seen"`` or ``"all"``, see above.
        shared_eta: the official code's dense boxes (one offset draw per image, shared by its objects);
            default False: per box, as the papers.
        sync: the bank's multi-process policy, ``"local"`` (per rank, official) or ``"global"``.
    """

    stage = "box_head"

    def __init__(
        self,
        *,
        num_classes: int,
        feature_dim: int,
        num_sampled_classes: int = 8,
        per_class: int = 12,
        momentum: float = 0.9,
        unbiased: bool = True,
        indicator: str | None = "confusion",
        normalize: str = "auto",
        class_draw: str = "seen",
        shared_eta: bool = False,
        sync: str = "local",
    ):
        super().__init__()
        if class_draw not in HALLUCINATION_CLASS_DRAWS:
            raise ValueError(
                f"FeatureHallucination: class_draw must be one of {HALLUCINATION_CLASS_DRAWS}, got {class_draw!r}"
            )
        if normalize not in STRENGTH_NORMALIZATIONS:
            raise ValueError(
                f"FeatureHallucination: normalize must be one of {STRENGTH_NORMALIZATIONS}, got {normalize!r}"
            )
        if num_sampled_classes < 0 or per_class < 0:
            raise ValueError(
                f"FeatureHallucination: num_sampled_classes and per_class must be >= 0, got {num_sampled_classes} "
                f"and {per_class}"
            )
        self.num_classes = int(num_classes)
        self.feature_dim = int(feature_dim)
        self.num_sampled_classes = int(num_sampled_classes)
        self.per_class = int(per_class)
        self.normalize = normalize
        self.class_draw = class_draw
        self.shared_eta = bool(shared_eta)
        self.indicator_names = (indicator,) if indicator is not None else ()
        self.bank = PrototypeBank(self.num_classes, self.feature_dim, momentum, sync=sync, unbiased=unbiased)

    def bind_indicators(self, indicators, owner=None):
        super().bind_indicators(indicators, owner)
        if self.indicator_names:
            check_indicator_classes(self, self.num_classes, owner)

    # --- statistics -----------------------------------------------------------------------------

    @torch.no_grad()
    def collect(self, context):
        """Box-head features of dense boxes around every ground-truth box, folded into the bank."""
        targets = context.targets
        boxes = dense_boxes_per_image(
            [t.gt_boxes.tensor for t in targets], [t.image_size for t in targets], shared_eta=self.shared_eta
        )
        labels = torch.cat([t.gt_classes for t in targets]).repeat_interleave(BOXES_PER_OBJECT)
        features = self._box_head_features(context, boxes)
        self.bank.update(features, labels)  # under sync="global" a collective, also with no rows

    def _box_head_features(self, context, boxes):
        """[sum B_i, D] box-head outputs of per-image boxes, pooled in blocks of bounded size."""
        reference = context.box_features
        counts = [len(b) for b in boxes]
        total = sum(counts)
        if total == 0:
            return reference.new_zeros((0, self.feature_dim))
        row_bytes = math.prod(context.pooled_features.shape[1:]) * context.pooled_features.element_size()
        block = max(1, _POOL_BLOCK_BYTES // max(row_bytes, 1))
        all_boxes = torch.cat(boxes)
        rows_image = image_index(counts, all_boxes.device)
        outputs = []
        for start in range(0, total, block):
            end = min(start + block, total)
            per_image = torch.bincount(rows_image[start:end], minlength=len(boxes)).tolist()
            outputs.append(context.box_head(context.pool(list(all_boxes[start:end].split(per_image)))))
        features = torch.cat(outputs)
        if features.shape[1:] != (self.feature_dim,):
            raise ValueError(
                f"FeatureHallucination built for {self.feature_dim}-d box-head features, the box head gives "
                f"{tuple(features.shape[1:])}"
            )
        return features

    # --- hallucination --------------------------------------------------------------------------

    def sampling_weights(self) -> torch.Tensor:
        """[C] unnormalised probabilities of one draw: ``1 - l_i`` (0 for unseen classes under ``"seen"``)."""
        seen = self.bank.seen
        if self.indicator_names:
            strengths = indicator_strengths(self.bound_indicator, self.num_classes, self.normalize)
            weights = (1.0 - strengths.to(seen.device)).clamp(min=0)
        else:
            weights = torch.ones(self.num_classes, device=seen.device)
        if self.class_draw == "seen":
            weights = weights * seen
        return weights

    @torch.no_grad()
    def sample_classes(self) -> torch.Tensor:
        """[c] int64 drawn classes (repeats possible); empty when no class has a positive weight."""
        weights = self.sampling_weights()
        if self.num_sampled_classes == 0 or not bool(weights.sum() > 0):
            return torch.zeros(0, dtype=torch.int64, device=weights.device)
        return torch.multinomial(weights, self.num_sampled_classes, replacement=True)

    def forward(self, context):
        if context.num_classes != self.num_classes:
            raise ValueError(
                f"FeatureHallucination built for {self.num_classes} classes, the ROI heads have {context.num_classes}"
            )
        self.collect(context)
        # sampled even when no class is drawn (under sync="global" the bank's draw is a collective);
        # draws of classes the bank has not seen are skipped ("all")
        sample = self.bank.sample(self.sample_classes(), self.per_class, dtype=context.box_features.dtype)
        if len(sample) == 0:
            return None
        device = context.box_features.device
        return ExtraRows(features=sample.features.to(device), labels=sample.labels.to(device))

    def extra_repr(self):
        return (
            f"num_sampled_classes={self.num_sampled_classes}, per_class={self.per_class}, "
            f"class_draw={self.class_draw!r}, indicators={self.indicator_names}, shared_eta={self.shared_eta}"
        )
