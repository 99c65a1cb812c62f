"""Distillation terms: small modules that turn one training iteration of a teacher and a student into losses.

:class:`~ltdet2.modeling.TeacherStudentRCNN` (:class:`~ltdet2.modeling.TeacherStudentDETR`) runs each term on a
:class:`DistillationContext` (:class:`DetrDistillationContext`) and adds the named
losses it returns to the student's. The terms hold no parameters and no state (nothing in checkpoints).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from detectron2.structures import Boxes, ImageList, Instances

from .batching import image_index, valid_ground_truth
from .losses.distillation import (
    EMPTY_MODES,
    LOGIT_MODES,
    kl_distillation,
    logit_distillation,
    masked_feature_distillation,
)


@dataclass
class DistillationContext:
    """What a distillation term sees in one training iteration.

    Attributes:
        images: the student's normalised, padded images (Detectron2 pads at the bottom and right, so box
            coordinates are the same in the padded tensor).
        student_features, teacher_features: backbone (FPN) outputs, name -> ``[B, C, H, W]``; the teacher's
            computed under no_grad, on the same padded size.
        targets: per image, the ground truth (``gt_boxes`` in input-image pixels, ``gt_classes`` contiguous,
            ``gt_valid`` where the mapper sets it).
        sampled_proposals: per image, the RoIs the student's box head sampled this iteration
            (``proposal_boxes``, ``gt_classes``, ...; ``LongTailROIHeads.latest_sampled_proposals``), or None
            when the student's heads do not keep them.
        student: the student (the unwrapped model, not a DDP wrapper).
        teacher: the frozen teacher (eval mode, no gradients).
        feature_strides: name -> stride of the features; None: those of ``student.backbone.output_shape()``.
    """

    images: ImageList
    student_features: dict[str, torch.Tensor]
    teacher_features: dict[str, torch.Tensor]
    targets: list[Instances]
    sampled_proposals: list[Instances] | None
    student: nn.Module
    teacher: nn.Module
    feature_strides: dict[str, int] | None = None

    def stride(self, name: str) -> int:
        """The stride of feature ``name`` (``feature_strides``, else the student's backbone's)."""
        if self.feature_strides is not None:
            return self.feature_strides[name]
        return self.student.backbone.output_shape()[name].stride


@dataclass
class DetrDistillationContext(DistillationContext):
    """A :class:`DistillationContext` of :class:`~ltdet2.modeling.meta_arch.TeacherStudentDETR`: the features are
    both models' ``detr.model.input_proj`` outputs (``input_proj.{k}``, strides ``feature_strides``, the
    wrapper's ``level_strides``), ``sampled_proposals`` is None, and

    Attributes:
        teacher_decoder_states: ``[B, L, Q, d]`` the teacher's decoder output queries of every layer
            (``intermediate_hidden_states``), under no_grad.
    """

    teacher_decoder_states: torch.Tensor | None = None


class ClassSubset:
    """The classes a term distils: explicit contiguous indices, the head classes of a dataset (resolved on
    first use, so that configs do not read datasets), or all classes."""

    def __init__(self, classes: Sequence[int] | None, classes_from_dataset: str | None, min_images: int, owner: str):
        if classes is not None and classes_from_dataset is not None:
            raise ValueError(f"{owner}: give classes or classes_from_dataset, not both")
        self.classes = None if classes is None else [int(c) for c in classes]
        self.classes_from_dataset = classes_from_dataset
        self.min_images = min_images
        self.owner = owner
        self._index_tensors = {}  # device -> indices() as a tensor there (index_tensor)

    def indices(self) -> list[int] | None:
        """Contiguous class indices, or None for all classes."""
        if self.classes is None and self.classes_from_dataset is not None:
            from ltdet2.data import lvis_meta_from_dataset

            head = lvis_meta_from_dataset(self.classes_from_dataset).head_classes(self.min_images)
            self.classes = head.tolist()
            if not self.classes:
                raise ValueError(
                    f"{self.owner}: dataset {self.classes_from_dataset!r} has no class in >= {self.min_images} "
                    "training images (no head class to distil)"
                )
        return self.classes

    def index_tensor(self, device) -> torch.Tensor | None:
        """:meth:`indices` as an int64 tensor on ``device`` (None for all classes), built once per device: a
        per-iteration copy of the list to the GPU would synchronise the stream."""
        classes = self.indices()
        if classes is None:
            return None
        key = str(torch.device(device))
        if key not in self._index_tensors:
            self._index_tensors[key] = torch.as_tensor(classes, dtype=torch.long, device=device)
        return self._index_tensors[key]

    def __repr__(self):
        if self.classes_from_dataset is not None:
            return f"head classes of {self.classes_from_dataset!r} (min_images={self.min_images})"
        return "all classes" if self.classes is None else f"classes {self.classes}"


def box_masks(
    boxes: torch.Tensor, image_index: torch.Tensor, num_images: int, stride: int, height: int, width: int
) -> torch.Tensor:
    """``[num_images, height, width]`` bool: the union of each image's boxes on a feature map of ``stride``.

    Boxes (``[G, 4]`` xyxy in input-image pixels, ``image_index`` [G]) cover the cells from
    ``floor(x1 / stride), floor(y1 / stride)`` to ``ceil(x2 / stride), ceil(y2 / stride)`` (exclusive), in the
    image's own (unpadded) coordinates: padding at the bottom and right never shifts them. Vectorised over
    boxes: each box adds +1/-1 at its corners and a 2-D cumulative sum fills them in.
    """
    corners = torch.empty_like(boxes)
    corners[:, :2] = torch.floor(boxes[:, :2] / stride)
    corners[:, 2:] = torch.ceil(boxes[:, 2:] / stride)
    limits = torch.tensor([width, height, width, height], device=boxes.device, dtype=boxes.dtype)
    corners = torch.minimum(corners.clamp(min=0), limits).long()
    x1, y1, x2, y2 = corners.unbind(1)
    keep = (x2 > x1) & (y2 > y1)
    x1, y1, x2, y2, image_index = x1[keep], y1[keep], x2[keep], y2[keep], image_index[keep]
    counts = torch.zeros(num_images, height + 1, width + 1, dtype=torch.int32, device=boxes.device)
    ones = torch.ones_like(x1, dtype=torch.int32)
    for ys, xs, sign in ((y1, x1, 1), (y1, x2, -1), (y2, x1, -1), (y2, x2, 1)):
        counts.index_put_((image_index, ys, xs), ones * sign, accumulate=True)
    return counts.cumsum(1).cumsum(2)[:, :height, :width] > 0


class MaskedFeatureDistillation(nn.Module):
    """Squared difference of student and teacher FPN features inside the chosen classes' ground-truth boxes
    (step-wise knowledge transfer, Eq. 3: the paper distils the expert's head-class knowledge there).

    Per level, the mask is the union of the image's valid ground-truth boxes (``gt_valid`` not False) of the
    chosen classes, rasterised at the level's stride (:meth:`DistillationContext.stride`) by :func:`box_masks`, in
    each image's unpadded coordinates (the step-wise official code scales the boxes by the padded size, which
    shifts the masks of the smaller images of a batch: a bug, not followed); the loss is
    :func:`~ltdet2.modeling.losses.masked_feature_distillation` times ``weight``.

    Args:
        in_features: FPN levels (the step-wise official code distils its 4 input projections; p2-p5 here for an
            R-CNN, ``input_proj.0``-``input_proj.3`` for :class:`~ltdet2.modeling.meta_arch.TeacherStudentDETR`).
        classes: contiguous class indices; or ``classes_from_dataset``: the classes in at least ``min_images``
            training images of that registered dataset (``LVISMeta.head_classes``); neither: every class.
        weight: lambda_fm (1, the official code's).
        empty: (level, image) pairs without a masked position: ``"exclude"`` (ours) or ``"zero"`` (official).
    """

    def __init__(
        self,
        *,
        in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
        classes: Sequence[int] | None = None,
        classes_from_dataset: str | None = None,
        min_images: int = 30,
        weight: float = 1.0,
        empty: str = "exclude",
    ):
        super().__init__()
        if empty not in EMPTY_MODES:
            raise ValueError(f"MaskedFeatureDistillation: empty={empty!r}; expected one of {EMPTY_MODES}")
        self.in_features = tuple(in_features)
        self.classes = ClassSubset(classes, classes_from_dataset, min_images, "MaskedFeatureDistillation")
        self.weight = weight
        self.empty = empty

    def masks(self, context: DistillationContext) -> list[torch.Tensor]:
        """Per level of ``in_features``, ``[B, H, W]`` bool masks of the chosen classes' boxes."""
        device = context.student_features[self.in_features[0]].device
        boxes = torch.cat([t.gt_boxes.tensor for t in context.targets]).to(device)
        classes = torch.cat([t.gt_classes for t in context.targets]).to(device)
        rows_image = image_index([len(t) for t in context.targets], device)
        keep = valid_ground_truth(context.targets, device)
        chosen = self.classes.index_tensor(device)
        if chosen is not None:
            keep &= torch.isin(classes, chosen)
        boxes, rows_image = boxes[keep], rows_image[keep]
        masks = []
        for name in self.in_features:
            num_images, _, height, width = context.student_features[name].shape
            masks.append(box_masks(boxes, rows_image, num_images, context.stride(name), height, width))
        return masks

    def forward(self, context: DistillationContext) -> dict[str, torch.Tensor]:
        missing = [f for f in self.in_features if f not in context.student_features]
        if missing:
            raise KeyError(
                f"MaskedFeatureDistillation: levels {missing} are not backbone outputs "
                f"({sorted(context.student_features)})"
            )
        loss = masked_feature_distillation(
            [context.student_features[f] for f in self.in_features],
            [context.teacher_features[f] for f in self.in_features],
            self.masks(context),
            empty=self.empty,
        )
        return {"loss_distill_feature": loss * self.weight}

    def extra_repr(self):
        return f"in_features={self.in_features}, {self.classes!r}, weight={self.weight}, empty={self.empty!r}"


class _ClassColumnKL(nn.Module):
    """A KL distillation term over some class columns (``classes`` / ``classes_from_dataset`` / ``min_images`` as
    :class:`MaskedFeatureDistillation`), with its ``weight`` and temperature ``temperature``."""

    def __init__(
        self,
        *,
        classes: Sequence[int] | None = None,
        classes_from_dataset: str | None = None,
        min_images: int = 30,
        weight: float = 0.1,
        temperature: float = 1.0,
    ):
        super().__init__()
        self.classes = ClassSubset(classes, classes_from_dataset, min_images, type(self).__name__)
        self.weight = weight
        self.temperature = temperature

    def extra_repr(self):
        return f"{self.classes!r}, weight={self.weight}, temperature={self.temperature}"


class SharedRoIKLDistillation(_ClassColumnKL):
    """KL distillation on RoIs both models see through the teacher: the R-CNN analogue of the step-wise
    method's shared object queries (its Eq. 4; our mapping onto R-CNN).

    The teacher's box head computes features ``h_T`` of the student's sampled RoIs (all of them, as the
    official code uses all queries) from the teacher's FPN features; the loss is
    ``KL(softmax(z_T) || softmax(cls_S(h_T)))`` over the chosen classes' columns (background and the other
    classes excluded), ``z_T`` the teacher's class logits of ``h_T`` and ``cls_S`` the student's classifier
    (the box predictor's ``cls_score``), times ``weight``. ``h_T`` is the teacher's, under no_grad: the
    gradient reaches only the student's classifier, and the student's FPN does not change the logits.

    Args:
        classes, classes_from_dataset, min_images: the distilled columns, as :class:`MaskedFeatureDistillation`;
            neither: every foreground class.
        weight: lambda_cls (0.1, the official code's).
        temperature: T (1, the official code's).
    """

    def forward(self, context: DistillationContext) -> dict[str, torch.Tensor]:
        if context.sampled_proposals is None:
            raise ValueError(
                "SharedRoIKLDistillation needs the student's sampled RoIs: the student's ROI heads must keep "
                "latest_sampled_proposals (use ltdet2.modeling.LongTailROIHeads)"
            )
        teacher_heads = context.teacher.roi_heads
        with torch.no_grad():
            feature_maps = [context.teacher_features[f] for f in teacher_heads.box_in_features]
            pooled = teacher_heads.box_pooler(feature_maps, [p.proposal_boxes for p in context.sampled_proposals])
            box_features = torch.flatten(teacher_heads.box_head(pooled), 1)
            teacher_logits = teacher_heads.box_predictor.cls_score(box_features)
        student_logits = context.student.roi_heads.box_predictor.cls_score(box_features)
        columns = self.classes.index_tensor(student_logits.device)
        if columns is None:  # every foreground class: the background column (C) is never distilled
            student_logits, teacher_logits = student_logits[:, :-1], teacher_logits[:, :-1]
        loss = kl_distillation(student_logits, teacher_logits, columns, temperature=self.temperature)
        return {"loss_distill_kl": loss * self.weight}


class SharedQueryKLDistillation(_ClassColumnKL):
    """The step-wise method's KL distillation with shared object queries (paper Eq. 4; official
    ``deformable_detr_local1.py:185-209, 289-308``), for :class:`~ltdet2.modeling.meta_arch.TeacherStudentDETR`.

    For every decoder layer l, the teacher's output queries ``q_l`` (``[B, Q, d]``, the context's
    ``teacher_decoder_states``) go through the teacher's and the student's class heads ``detr.class_embed[l]``; the
    loss of layer l is :func:`~ltdet2.modeling.losses.kl_distillation` between them: ``KL(softmax(z_T) ||
    softmax(z_S))`` over the chosen classes' columns (softmax, as the official code, although the detector scores
    with sigmoids), the mean over the B x Q rows (every query, matched or not; "batchmean"), times ``weight``.
    ``q_l`` is the teacher's, under no_grad: the gradient reaches only the student's class heads. Losses
    ``loss_distill_kl`` (last layer) and ``loss_distill_kl_{l}`` (the others), as the detection losses are named.

    Args:
        classes, classes_from_dataset, min_images: the distilled columns, as :class:`MaskedFeatureDistillation`
            (the official code: the head classes); neither: every class.
        weight: lambda_cls per layer (0.1, the official code's).
        temperature: T (1, the official code's).
    """

    def forward(self, context: DistillationContext) -> dict[str, torch.Tensor]:
        states = getattr(context, "teacher_decoder_states", None)
        if states is None:
            raise ValueError(
                "SharedQueryKLDistillation needs the teacher's decoder states (DetrDistillationContext."
                f"teacher_decoder_states): use it in a TeacherStudentDETR, not a {type(context.student).__name__}"
            )
        student_heads, teacher_heads = context.student.detr.class_embed, context.teacher.detr.class_embed
        num_layers = states.shape[1]
        columns = self.classes.index_tensor(states.device)
        losses = {}
        for layer in range(num_layers):
            queries = states[:, layer].detach().flatten(0, 1)  # [B * Q, d]
            with torch.no_grad():
                teacher_logits = teacher_heads[layer](queries)
            student_logits = student_heads[layer](queries)
            loss = kl_distillation(student_logits, teacher_logits, columns, temperature=self.temperature)
            name = "loss_distill_kl" if layer == num_layers - 1 else f"loss_distill_kl_{layer}"
            losses[name] = loss * self.weight
        return losses


def unscaled_cosine_logits(model: nn.Module, features: dict[str, torch.Tensor], boxes: list[Boxes]) -> torch.Tensor:
    """``[G, C+1]`` cosines between the box-head features of ``boxes`` (per image, input-image pixels) and the rows
    of ``model``'s cosine classifier (``roi_heads.box_predictor.cls_score.cosine``: no scale, no per-class norm)."""
    heads = model.roi_heads
    classifier = heads.box_predictor.cls_score
    if not callable(getattr(classifier, "cosine", None)):
        raise TypeError(
            f"unscaled cosine logits need a cosine classifier (ltdet2.modeling.CosineClassifier) as the box "
            f"predictor's cls_score; {type(model).__name__} has {type(classifier).__name__}"
        )
    pooled = heads.box_pooler([features[f] for f in heads.box_in_features], boxes)
    return classifier.cosine(heads.box_head(pooled))


class OldClassLogitDistillation(nn.Module):
    """LST's logit distillation (paper Eq. 2): the previous phase's model (the teacher, K_old classes) and the
    student compute the unscaled cosine logits of the old foreground classes (columns ``[:K_old]``, background
    excluded) on the valid ground-truth boxes of the new classes (contiguous index >= K_old); the loss is
    :func:`~ltdet2.modeling.losses.logit_distillation` between them times ``weight``.

    Each model pools the boxes from its own FPN features and runs its own box head (the student's with gradients,
    the teacher's under no_grad): the gradient reaches only the student. Images without a valid new-class box add
    nothing (replayed entries: their new-class boxes are ignored, so they are not distilled, as the official code's
    teacher json holds new-class images only); a batch without any gives 0 (still on the student's graph).
    Logits are the unscaled cosines in [-1, 1] (official: ``cls_score`` without ``scale_cls``), so both models
    need a :class:`~ltdet2.modeling.CosineClassifier`.

    Official code: teacher logits dumped offline from the unflipped and flipped test-size image; here the teacher
    runs online on the student's (same) augmented batch, equivalent at a fixed train size.

    Args:
        num_old_classes: K_old, the teacher's foreground classes (a prefix of the student's).
        mode: ``"l2"`` (paper: L2 distance, mean over boxes) or ``"squared"`` (official: squared L2 summed over
            classes, mean over boxes).
        weight: 1 (paper and official).
    """

    def __init__(self, *, num_old_classes: int, mode: str = "l2", weight: float = 1.0):
        super().__init__()
        if mode not in LOGIT_MODES:
            raise ValueError(f"OldClassLogitDistillation: mode={mode!r}; expected one of {LOGIT_MODES}")
        if int(num_old_classes) < 1:
            raise ValueError(f"OldClassLogitDistillation: num_old_classes={num_old_classes}; expected >= 1")
        self.num_old_classes = int(num_old_classes)
        self.mode = mode
        self.weight = weight

    def new_class_boxes(self, targets: list[Instances], device) -> list[Boxes]:
        """Per image, its valid ground-truth boxes of new classes (contiguous index >= K_old), on ``device``."""
        return [b.to(device) for b in new_class_boxes(targets, self.num_old_classes)[0]]

    def forward(self, context: DistillationContext) -> dict[str, torch.Tensor]:
        device = next(iter(context.student_features.values())).device
        boxes = self.new_class_boxes(context.targets, device)
        teacher_classes = context.teacher.roi_heads.num_classes
        if teacher_classes != self.num_old_classes:
            raise ValueError(
                f"OldClassLogitDistillation: num_old_classes={self.num_old_classes}, but the teacher has "
                f"{teacher_classes} classes"
            )
        with torch.no_grad():
            teacher_logits = unscaled_cosine_logits(context.teacher, context.teacher_features, boxes)
        student_logits = unscaled_cosine_logits(context.student, context.student_features, boxes)
        old = self.num_old_classes
        loss = logit_distillation(student_logits[:, :old], teacher_logits[:, :old], mode=self.mode)
        return {"loss_distill_logit": loss * self.weight}

    def extra_repr(self):
        return f"num_old_classes={self.num_old_classes}, mode={self.mode!r}, weight={self.weight}"


from .meta_weight_term import MetaWeightGeneratorTerm, new_class_boxes  # noqa: E402  (it reads this module's context)

__all__ = [
    "DistillationContext",
    "DetrDistillationContext",
    "SharedQueryKLDistillation",
    "MetaWeightGeneratorTerm",
    "MaskedFeatureDistillation",
    "OldClassLogitDistillation",
    "SharedRoIKLDistillation",
    "unscaled_cosine_logits",
    "box_masks",
]
