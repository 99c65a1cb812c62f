"""Extra training rows for the box predictor, drawn from memories (MFS, RIO replay, FHM)."""

from dataclasses import dataclass, field, replace

import torch


@dataclass
class ExtraRows:
    """Rows a feature source adds to one iteration's box-predictor batch.

    Attributes:
        features: [R, ...] features at the source's stage: pooled RoI features (e.g. [R, 256, 7, 7]),
            which then go through the box head, or box-head outputs (e.g. [R, 1024]).
        labels: [R] int64 classes in [0, C] (C is background, Detectron2's convention).
        proposal_boxes, gt_boxes: [R, 4] boxes (x1, y1, x2, y2) from which regression targets are
            computed with the predictor's current box transform; None: classification only.
        weights: [R] classification-loss weights; None means 1.
        source_index: which feature source produced the rows (set by the ROI heads).
    """

    features: torch.Tensor
    labels: torch.Tensor
    proposal_boxes: torch.Tensor | None = None
    gt_boxes: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    source_index: int = 0

    def __post_init__(self):
        num_rows = self.labels.shape[0]
        if self.features.shape[0] != num_rows:
            raise ValueError(f"ExtraRows: {self.features.shape[0]} feature rows but {num_rows} labels")
        if (self.proposal_boxes is None) != (self.gt_boxes is None):
            raise ValueError("ExtraRows: give both proposal_boxes and gt_boxes, or neither")
        for name in ("proposal_boxes", "gt_boxes", "weights"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != num_rows:
                raise ValueError(f"ExtraRows: {name} has {value.shape[0]} rows, labels {num_rows}")

    def __len__(self):
        return self.labels.shape[0]

    @property
    def has_boxes(self):
        return self.proposal_boxes is not None

    def with_features(self, features):
        return replace(self, features=features)


@dataclass
class ExtraRowsBatch:
    """All sources' rows of one iteration, in the order they follow the sampled RoIs."""

    rows: list[ExtraRows] = field(default_factory=list)

    def __len__(self):
        return sum(len(r) for r in self.rows)

    def labels(self, device):
        if not self.rows:
            return torch.empty(0, dtype=torch.int64, device=device)
        return torch.cat([r.labels for r in self.rows])

    def weights(self, device, dtype):
        """[R] classification weights (1 where a source gave none)."""
        return (
            torch.cat(
                [
                    r.weights.to(dtype) if r.weights is not None else torch.ones(len(r), dtype=dtype, device=device)
                    for r in self.rows
                ]
            )
            if self.rows
            else torch.empty(0, dtype=dtype, device=device)
        )

    def box_mask(self, device):
        """[R] bool: rows that train box regression."""
        if not self.rows:
            return torch.empty(0, dtype=torch.bool, device=device)
        return torch.cat([torch.full((len(r),), r.has_boxes, dtype=torch.bool, device=device) for r in self.rows])

    def boxes(self):
        """(proposal_boxes, gt_boxes) of the rows that carry boxes, [R_box, 4] each (None if none)."""
        with_boxes = [r for r in self.rows if r.has_boxes]
        if not with_boxes:
            return None, None
        return torch.cat([r.proposal_boxes for r in with_boxes]), torch.cat([r.gt_boxes for r in with_boxes])

    def source_indices(self, device):
        if not self.rows:
            return torch.empty(0, dtype=torch.int64, device=device)
        return torch.cat([torch.full((len(r),), r.source_index, dtype=torch.int64, device=device) for r in self.rows])
