"""LOCE's memory-augmented feature sampling (MFS) as a feature source."""

import math
from collections.abc import Sequence

import torch

from ltdet2.memory import ClassQueue

from ..batching import image_index
from ..box_generator import dense_boxes_per_image
from ..extra_rows import ExtraRows
from .base import FeatureSource

__all__ = ["MemoryFeatureSampler", "CLASS_DRAWS"]

MIN_SCORE = 1e-12
BOXES_PER_OBJECT = 16  # dense_boxes_per_image: one per sign pattern
CLASS_DRAWS = ("with_replacement", "distinct")
# RoIs pooled per call when pushing: the pooled block (e.g. 256x7x7 float32 = 49 KiB per RoI) stays a few
# MiB instead of growing with the batch's ground truth (allocator churn on a CPU)
_POOL_BLOCK_BYTES = 4 << 20


class MemoryFeatureSampler(FeatureSource):
    """MFS (LOCE sec. 3.3): dense boxes around every ground-truth box, their pooled RoI features
    (before the box head) pushed into a per-class queue, and ``num_sampled_classes`` classes drawn
    each iteration with probability ``p_y ∝ 1 / s_y`` (s: the bound indicator's scores), each
    contributing ``per_class`` random stored features (with replacement, as the official code).

    Rows go through the box head with the sampled RoIs and train both the classifier and the box
    regressor. The queue stores each feature's dense box and ground-truth box; its regression target
    is recomputed from them with the predictor's box transform, which equals the target the paper
    stores (the transform is fixed). Each iteration pushes first, then samples (a class seen for the
    first time can be drawn at once); the scores s are those before this iteration's update.

    Class draw (the paper only says "sample k classes with p ∝ 1/s"):
        ``"with_replacement"`` (official code, default): k independent draws over all C classes;
        draws of classes whose queue is empty are dropped (fewer rows then), a class drawn twice
        gives ``2 * per_class`` rows. ``"distinct"``: k distinct classes drawn without replacement
        among the non-empty queues (always ``min(k, non-empty)`` classes).

    Under ``sync="local"`` a push only pools the dense boxes the queue keeps (at most ``capacity``
    per class, the last ones in batch order) and pools them in blocks of a few MiB, pushed in order:
    the queue ends as after one push of everything.

    Where the official code differs (none of it is in the paper): when more than ``capacity`` dense boxes of a
    class arrive in one batch, the official MFS keeps the first ``capacity`` of them, ltdet2 the last (as if
    pushed one by one: :meth:`~ltdet2.memory.ClassQueue.push`); the dense boxes are clipped to
    ``[0, W] x [0, H]`` (Detectron2's ``Boxes.clip``), the official code to ``W - 1``, ``H - 1``; and the
    official code draws one set of box offsets per image (``shared_eta=True``), the paper one per box.

    Args:
        num_classes: C.
        feature_shape: per-RoI pooled feature shape, e.g. (256, 7, 7).
        capacity: M, entries per class (LOCE: 80).
        num_sampled_classes: k (LOCE: 8 per GPU).
        per_class: m (LOCE: 4), drawn with replacement among the class's stored entries.
        class_draw: ``"with_replacement"`` (official) or ``"distinct"``, see above.
        indicator: name of the ROI heads' indicator giving s ([C] or [C+1]; LOCE: "mean_score").
            For the paper's dataset-guided ablation, an ``InstanceFrequency`` indicator.
        storage_dtype: "float16" (or torch.float16) to halve the memory (LVIS: 1203 x 80 x 256x7x7); see ClassQueue.
        sync: "local" (per rank, as the official code) or "global".
        shared_eta: False (the paper, default): dense-box offsets drawn per box, pattern and coordinate; True
            (the official code): one [16, 4] draw per image, shared by its objects
            (:func:`~ltdet2.modeling.box_generator.dense_boxes_per_image`).
    """

    stage = "pooled"

    def __init__(
        self,
        *,
        num_classes: int,
        feature_shape: Sequence[int] = (256, 7, 7),
        capacity: int = 80,
        num_sampled_classes: int = 8,
        per_class: int = 4,
        class_draw: str = "with_replacement",
        indicator: str | None = "mean_score",
        storage_dtype: torch.dtype | str | None = None,
        sync: str = "local",
        shared_eta: bool = False,
    ):
        super().__init__()
        if class_draw not in CLASS_DRAWS:
            raise ValueError(f"MemoryFeatureSampler: class_draw must be one of {CLASS_DRAWS}, got {class_draw!r}")
        if num_sampled_classes < 1 or per_class < 1:
            raise ValueError(
                f"MemoryFeatureSampler: num_sampled_classes and per_class must be >= 1, got {num_sampled_classes} "
                f"and {per_class} (to turn MFS off, leave it out of the feature sources)"
            )
        self.num_classes = num_classes
        self.feature_shape = tuple(feature_shape)
        self.num_sampled_classes = num_sampled_classes
        self.per_class = per_class
        self.class_draw = class_draw
        self.indicator_names = (indicator,) if indicator is not None else ()
        self.shared_eta = bool(shared_eta)
        self.queue = ClassQueue(
            num_classes,
            capacity,
            {"features": self.feature_shape, "proposal_boxes": (4,), "gt_boxes": (4,)},
            storage_dtype=storage_dtype,
            sync=sync,
        )

    @torch.no_grad()
    def push_ground_truth(self, context):
        """Pools dense boxes around every ground-truth box of the batch and enqueues them."""
        targets = context.targets
        boxes = dense_boxes_per_image(
            [t.gt_boxes.tensor for t in targets], [t.image_size for t in targets], shared_eta=self.shared_eta
        )
        labels = torch.cat([t.gt_classes for t in targets]).repeat_interleave(BOXES_PER_OBJECT)
        gt_boxes = torch.cat([t.gt_boxes.tensor for t in targets]).repeat_interleave(BOXES_PER_OBJECT, dim=0)
        if self.queue.sync == "global":
            # a collective: every rank pushes once, also with nothing; the survivors depend on all ranks
            self.queue.push(labels, features=context.pool(boxes), proposal_boxes=torch.cat(boxes), gt_boxes=gt_boxes)
            return
        num_images = len(boxes)
        rows_image = image_index([len(b) for b in boxes], labels.device)
        kept = self.queue.kept_by_push(labels).to(labels.device).nonzero().squeeze(1)
        if kept.numel() == 0:
            return
        labels, gt_boxes, rows_image = labels[kept], gt_boxes[kept], rows_image[kept]
        proposal_boxes = torch.cat(boxes)[kept]
        if labels.device.type == "cpu":  # see _POOL_BLOCK_BYTES
            block = max(1, _POOL_BLOCK_BYTES // (4 * math.prod(self.feature_shape)))
        else:  # a GPU pools every kept box in one call
            block = labels.numel()
        for start in range(0, labels.numel(), block):
            end = min(start + block, labels.numel())
            per_image = self._split_by_image(proposal_boxes[start:end], rows_image[start:end], num_images)
            self.queue.push(
                labels[start:end],
                features=context.pool(per_image),
                proposal_boxes=proposal_boxes[start:end],
                gt_boxes=gt_boxes[start:end],
            )

    @staticmethod
    def _split_by_image(boxes, image_index, num_images):
        """Rows sorted by image -> one [B_i, 4] tensor per image (empty where none), for the pooler."""
        counts = torch.bincount(image_index, minlength=num_images).tolist()
        return list(boxes.split(counts))

    def sampling_weights(self):
        """[C] unnormalised class probabilities of one draw: ``1 / s``; under ``class_draw="distinct"``
        0 for classes with an empty queue (``"with_replacement"`` draws them and drops the draw)."""
        scores = self.bound_indicator.vector()[: self.num_classes].to(self.queue.fill_counts.device)
        # (official: 1 / (s + 1e-7); a clamp keeps p ∝ 1/s exact for tiny s, e.g. normalised instance counts)
        weights = 1.0 / scores.float().clamp(min=MIN_SCORE)
        if self.class_draw == "distinct":
            weights = weights * (self.queue.fill_counts > 0)
        return weights

    @torch.no_grad()
    def sample_classes(self):
        """[k'] int64 classes to draw features of (repeats possible with ``"with_replacement"``)."""
        weights = self.sampling_weights()
        if self.class_draw == "with_replacement":
            drawn = torch.multinomial(weights, self.num_sampled_classes, replacement=True)
            return drawn[self.queue.fill_counts[drawn] > 0]
        num_available = int((weights > 0).sum())
        if num_available == 0:
            return weights.new_zeros(0, dtype=torch.int64)
        return torch.multinomial(weights, min(self.num_sampled_classes, num_available), replacement=False)

    def forward(self, context):
        self.push_ground_truth(context)
        classes = self.sample_classes()
        # sampled even when no class is (under "global" the draw of entries is a collective)
        sample = self.queue.sample(classes, self.per_class, mode="random", dtype=context.pooled_features.dtype)
        if sample.labels.numel() == 0:
            return None
        return ExtraRows(
            features=sample.features,
            labels=sample.labels,
            proposal_boxes=sample.proposal_boxes,
            gt_boxes=sample.gt_boxes,
        )

    def extra_repr(self):
        return (
            f"num_sampled_classes={self.num_sampled_classes}, per_class={self.per_class}, "
            f"class_draw={self.class_draw!r}, indicators={self.indicator_names}, shared_eta={self.shared_eta}"
        )
