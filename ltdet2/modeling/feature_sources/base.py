"""The interface between the long-tail ROI heads and the memories that add training rows."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from detectron2.structures import Instances

from ..extra_rows import ExtraRows
from ..indicator_links import IndicatorUser

STAGES = ("pooled", "box_head")


@dataclass
class SourceContext:
    """What a feature source sees in one training iteration of the ROI heads.

    Attributes:
        proposals: per image, the sampled RoIs with ``proposal_boxes``, ``gt_classes``, ``gt_indices``
            (index into that image's targets; -1 for background) and, only for images with ground
            truth, ``gt_boxes`` (Detectron2 sets no ``gt_*`` field on the RoIs of an image without
            annotations: read boxes with :meth:`roi_gt_boxes`).
        targets: per image, the ground truth (``gt_boxes``, ``gt_classes``, ...; empty for an image
            without annotations).
        pool: ``pool(list of [B_i, 4] box tensors) -> [sum B_i, ...]`` RoI features of any boxes,
            from the current feature maps with the box pooler (before the box head).
        box_head: the box head (pooled features -> box-head features).
        pooled_features: [N, ...] pooled features of the sampled RoIs.
        box_features: [N, D] box-head features of the sampled RoIs; None for "pooled" sources,
            which run before the box head.
        num_classes: C (foreground classes; background is C).
    """

    proposals: list[Instances]
    targets: list[Instances]
    pool: Callable[[list[torch.Tensor]], torch.Tensor]
    box_head: nn.Module
    pooled_features: torch.Tensor
    box_features: torch.Tensor | None
    num_classes: int

    @property
    def image_sizes(self):
        return [p.image_size for p in self.proposals]

    def roi_gt_boxes(self) -> torch.Tensor:
        """[N, 4] matched ground-truth box of every sampled RoI, images concatenated; the RoI's own box
        for the RoIs of an image without ground truth (all background there), as Detectron2's losses do."""
        return torch.cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in self.proposals])


class FeatureSource(IndicatorUser, nn.Module):
    """A memory that sees each training iteration and returns extra rows for the box predictor.

    Subclasses set ``stage`` ("pooled": rows are pooled RoI features that go through the box head
    with the sampled RoIs; "box_head": rows are box-head features that go straight to the
    predictor) and implement ``forward(context) -> Optional[ExtraRows]``. A source that steers by
    indicators names them in ``indicator_names``; the ROI heads bind them (read with :meth:`indicator`).
    State (queues, banks) must be registered buffers or submodules, so it is checkpointed.
    """

    stage: str = "box_head"

    def forward(self, context: SourceContext) -> ExtraRows | None:
        raise NotImplementedError
