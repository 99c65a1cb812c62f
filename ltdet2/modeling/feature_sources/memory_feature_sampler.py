"""LOCE's memory-augmented feature sampling (MFS) as a feature source."""
from typing import Optional, Sequence

import torch

from ltdet2.memory import ClassQueue

from ..box_generator import dense_boxes
from ..extra_rows import ExtraRows
from .base import FeatureSource

MIN_SCORE = 1e-12


class MemoryFeatureSampler(FeatureSource):
    """MFS (LOCE sec. 3.3): dense boxes around every ground-truth box, their pooled RoI features
    (before the box head) pushed into a per-class queue, and ``num_sampled_classes`` classes drawn
    each iteration with probability ``p_y ∝ 1 / s_y`` (s: the bound indicator's scores), each
    contributing ``per_class`` random stored features.

    Rows go through the box head with the sampled RoIs and train both the classifier and the box
    regressor. The queue stores each feature's dense box and ground-truth box; its regression target
    is recomputed from them with the predictor's box transform, which equals the target the paper
    stores (the transform is fixed). Each iteration pushes first, then samples (a class seen for the
    first time can be drawn at once).

    Args:
        num_classes: C.
        feature_shape: per-RoI pooled feature shape, e.g. (256, 7, 7).
        capacity: M, entries per class (LOCE: 80).
        num_sampled_classes: k (LOCE: 8 per GPU); distinct classes among the non-empty queues.
        per_class: m (LOCE: 4), drawn with replacement among the class's stored entries.
        indicator: name of the ROI heads' indicator giving s ([C] or [C+1]; LOCE: "mean_score").
            For the paper's dataset-guided ablation, an ``InstanceFrequency`` indicator.
        storage_dtype: e.g. torch.float16 to halve the memory (LVIS: 1203 x 80 x 256x7x7).
        sync: "local" (per rank, as the official code) or "global".
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
        indicator: Optional[str] = "mean_score",
        storage_dtype: Optional[torch.dtype] = None,
        sync: str = "local",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.num_sampled_classes = num_sampled_classes
        self.per_class = per_class
        self.indicator_names = (indicator,) if indicator is not None else ()
        self.queue = ClassQueue(
            num_classes,
            capacity,
            {"features": tuple(feature_shape), "proposal_boxes": (4,), "gt_boxes": (4,)},
            storage_dtype=storage_dtype,
            sync=sync,
        )

    @torch.no_grad()
    def push_ground_truth(self, context):
        """Pools dense boxes around every ground-truth box of the batch and enqueues them."""
        dense = [dense_boxes(t.gt_boxes.tensor, t.image_size) for t in context.targets]
        if sum(len(b) for b in dense) == 0 and self.queue.sync != "global":
            return  # under "global" every rank must take part in the push, even with nothing
        features = context.pool(dense)
        labels = torch.cat([t.gt_classes.repeat_interleave(16) for t in context.targets])
        gt_boxes = torch.cat([t.gt_boxes.tensor.repeat_interleave(16, dim=0) for t in context.targets])
        self.queue.push(labels, features=features, proposal_boxes=torch.cat(dense), gt_boxes=gt_boxes)

    def sampling_weights(self):
        """[C] unnormalised class probabilities: 1 / s for classes with stored features, else 0."""
        scores = self.bound_indicator.vector()[: self.num_classes].to(self.queue.counts.device)
        weights = 1.0 / scores.float().clamp(min=MIN_SCORE)
        return weights * (self.queue.counts > 0)

    @torch.no_grad()
    def sample_classes(self):
        weights = self.sampling_weights()
        num_available = int((weights > 0).sum())
        if num_available == 0:
            return weights.new_zeros(0, dtype=torch.int64)
        return torch.multinomial(weights, min(self.num_sampled_classes, num_available), replacement=False)

    def forward(self, context):
        self.push_ground_truth(context)
        classes = self.sample_classes()
        if classes.numel() == 0:
            return None
        sample = self.queue.sample(classes, self.per_class, mode="random", dtype=context.pooled_features.dtype)
        return ExtraRows(
            features=sample.features,
            labels=sample.labels,
            proposal_boxes=sample.proposal_boxes,
            gt_boxes=sample.gt_boxes,
        )

    def extra_repr(self):
        return (f"num_sampled_classes={self.num_sampled_classes}, per_class={self.per_class}, "
                f"indicators={self.indicator_names}")
