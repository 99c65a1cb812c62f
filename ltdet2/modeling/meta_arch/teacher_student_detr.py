"""Deformable DETR trained with distillation from a frozen teacher (step-wise knowledge transfer on the paper's own
detector; ``../shared/reference/stepwise.md`` §2.6)."""

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..distillers import DetrDistillationContext
from .deformable_detr import DeformableDETR
from .frozen_teacher import FrozenTeacherMixin
from .shared_stages import frozen_module, same_frozen_weights, same_preprocessing

__all__ = ["TeacherStudentDETR", "input_proj_names"]

logger = logging.getLogger(__name__)


def input_proj_names(num_levels: int) -> list[str]:
    """The feature names of the ``detr.model.input_proj`` outputs in a :class:`DetrDistillationContext`."""
    return [f"input_proj.{k}" for k in range(num_levels)]


class _KeepOutputs:
    """Forward hooks on ``modules`` that keep each one's output (for the duration of a ``with``)."""

    def __init__(self, modules):
        self.modules = list(modules)
        self.outputs = [None] * len(self.modules)

    def __enter__(self):
        def keep(index):
            def hook(module, args, output):
                self.outputs[index] = output

            return hook

        self.handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(self.modules)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


@META_ARCH_REGISTRY.register()
class TeacherStudentDETR(FrozenTeacherMixin, DeformableDETR):
    """The student, a :class:`DeformableDETR`, trained with its usual losses plus those of distillation terms
    (``distillers``: modules ``forward(DetrDistillationContext) -> dict of named losses``) between it and a frozen
    teacher (a :class:`DeformableDETR`): the step-wise method's knowledge transfer (paper Eq. 2-4).

    The teacher is built, loaded and frozen as :class:`~ltdet2.modeling.TeacherStudentRCNN`'s
    (:class:`~ltdet2.modeling.meta_arch.frozen_teacher.FrozenTeacherMixin`: no submodule, not in checkpoints,
    ``eval()``, no gradients). Without distillers the model is exactly :class:`DeformableDETR` (no teacher is built).

    A training step: the student's :meth:`DeformableDETR.training_outputs` and losses as they are (the same terms,
    the same random draws), with forward hooks keeping its ``detr.model.input_proj`` outputs (the 4 levels, strides
    ``level_strides``); then the teacher, under no_grad and in eval mode (dropout off: two teacher passes are
    identical; the official code leaves it in train mode with dropout 0.1, ``engine_local1.py:43-44``, a deviation
    we do not offer), on the same padded batch and mask, keeping its ``input_proj`` outputs and its decoder's output
    queries of every layer (``intermediate_hidden_states``). The terms see a :class:`DetrDistillationContext`
    (features named ``input_proj.{k}``, the ground truth ``Instances`` on the device, ``sampled_proposals`` None),
    e.g. :class:`~ltdet2.modeling.distillers.MaskedFeatureDistillation` on the ``input_proj`` levels and
    :class:`~ltdet2.modeling.distillers.SharedQueryKLDistillation`.

    Args:
        teacher: the teacher model, or its LazyConfig; None until the phase runner fills it
            (``train.teacher_from_phase``).
        teacher_weights: checkpoint of the teacher (the runner sets the phase's final checkpoint).
        distillers: distillation terms.
        share_frozen_backbone: the teacher takes the student's backbone outputs instead of running its own backbone
            when the student's backbone is frozen (no trainable parameter, no BatchNorm in train mode) and holds the
            teacher's weights, on the same normalised images (decided and logged when the teacher is built; ours, a
            speed-up: step-wise trains only the class heads and input projections, so the head expert's backbone
            is the student's). The teacher's outputs are the same.
        other arguments: those of :class:`DeformableDETR`.
    """

    student_class = DeformableDETR
    teacher_student_arguments = FrozenTeacherMixin.teacher_student_arguments + ("share_frozen_backbone",)

    @configurable
    def __init__(
        self,
        *,
        teacher: nn.Module | Mapping | None = None,
        teacher_weights: str | None = None,
        distillers: Sequence[nn.Module] = (),
        share_frozen_backbone: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._init_teacher(teacher, teacher_weights, distillers)
        self.share_frozen_backbone = share_frozen_backbone
        self._shares_backbone = False  # decided when the teacher is built

    def _build_teacher(self) -> nn.Module:
        teacher = super()._build_teacher()
        self._shares_backbone = bool(
            self.share_frozen_backbone
            and same_preprocessing(self, teacher)
            and frozen_module(self.backbone)
            and same_frozen_weights(self.backbone, teacher.backbone)
        )
        if self._shares_backbone:
            logger.info("TeacherStudentDETR: the teacher takes the backbone outputs from the student (frozen there)")
        return teacher

    @property
    def feature_names(self) -> list[str]:
        """The names of the ``input_proj`` levels in the distillation context, finest first."""
        return input_proj_names(len(self.detr.model.input_proj))

    def forward(self, batched_inputs):
        if not self.training or not self.distillers:
            return super().forward(batched_inputs)
        teacher = self.teacher_model()
        kept = [*self.detr.model.input_proj] + ([self.backbone] if self._shares_backbone else [])
        with _KeepOutputs(kept) as student_outputs:
            images, mask, targets, outputs = self.training_outputs(batched_inputs)
        student_levels = student_outputs.outputs[: len(self.detr.model.input_proj)]
        backbone_features = student_outputs.outputs[-1] if self._shares_backbone else None
        losses = self.losses(outputs, targets)
        teacher_levels, teacher_states = self._teacher_outputs(
            teacher, batched_inputs, images.tensor, backbone_features
        )
        names = self.feature_names
        context = DetrDistillationContext(
            images=images,
            student_features=dict(zip(names, student_levels)),
            teacher_features=dict(zip(names, teacher_levels)),
            targets=[x["instances"].to(self.device) for x in batched_inputs],
            sampled_proposals=None,
            student=self,
            teacher=teacher,
            feature_strides=dict(zip(names, self.level_strides)),
            teacher_decoder_states=teacher_states,
        )
        return self._add_distillation_losses(losses, context)

    @torch.no_grad()
    def _teacher_outputs(self, teacher, batched_inputs, student_images: torch.Tensor, backbone_features=None):
        """The teacher's ``input_proj`` outputs (per level ``[B, d, H_k, W_k]``) and decoder output queries
        (``[B, L, Q, d]``) on the batch; ``student_images``: the student's padded batch tensor;
        ``backbone_features``: the student's backbone outputs, which the teacher takes instead of running its
        backbone (``share_frozen_backbone``), or None."""
        images, mask = teacher.preprocess_image(batched_inputs)
        if images.tensor.shape != student_images.shape:
            raise ValueError(
                f"TeacherStudentDETR: the teacher pads the batch to {tuple(images.tensor.shape)}, the student to "
                f"{tuple(student_images.shape)}"
            )
        adapter = teacher.detr.model.backbone  # _BackboneAdapter: its backbone is a plain attribute
        own_backbone = adapter.backbone
        if backbone_features is not None:
            object.__setattr__(adapter, "backbone", lambda pixel_values: backbone_features)
        try:
            with _KeepOutputs(teacher.detr.model.input_proj) as levels:
                outputs = teacher.detr.model(pixel_values=images.tensor, pixel_mask=mask)
        finally:
            object.__setattr__(adapter, "backbone", own_backbone)
        return levels.outputs, outputs.intermediate_hidden_states
