"""Deformable DETR trained with distillation from a frozen teacher (step-wise knowledge transfer on the paper's own
detector; ``../shared/reference/stepwise.md`` §2.6)."""

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..distillers import DetrDistillationContext
from .deformable_detr import DeformableDETR
from .frozen_teacher import FrozenTeacherMixin

__all__ = ["TeacherStudentDETR", "input_proj_names"]


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
        other arguments: those of :class:`DeformableDETR`.
    """

    student_class = DeformableDETR

    @configurable
    def __init__(
        self,
        *,
        teacher: nn.Module | Mapping | None = None,
        teacher_weights: str | None = None,
        distillers: Sequence[nn.Module] = (),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._init_teacher(teacher, teacher_weights, distillers)

    @property
    def feature_names(self) -> list[str]:
        """The names of the ``input_proj`` levels in the distillation context, finest first."""
        return input_proj_names(len(self.detr.model.input_proj))

    def forward(self, batched_inputs):
        if not self.training or not self.distillers:
            return super().forward(batched_inputs)
        teacher = self.teacher_model()
        with _KeepOutputs(self.detr.model.input_proj) as student_levels:
            images, mask, targets, outputs = self.training_outputs(batched_inputs)
        losses = self.losses(outputs, targets)
        teacher_levels, teacher_states = self._teacher_outputs(teacher, batched_inputs, images.tensor)
        names = self.feature_names
        context = DetrDistillationContext(
            images=images,
            student_features=dict(zip(names, student_levels.outputs)),
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
    def _teacher_outputs(self, teacher, batched_inputs, student_images: torch.Tensor):
        """The teacher's ``input_proj`` outputs (per level ``[B, d, H_k, W_k]``) and decoder output queries
        (``[B, L, Q, d]``) on the batch; ``student_images``: the student's padded batch tensor."""
        images, mask = teacher.preprocess_image(batched_inputs)
        if images.tensor.shape != student_images.shape:
            raise ValueError(
                f"TeacherStudentDETR: the teacher pads the batch to {tuple(images.tensor.shape)}, the student to "
                f"{tuple(student_images.shape)}"
            )
        with _KeepOutputs(teacher.detr.model.input_proj) as levels:
            outputs = teacher.detr.model(pixel_values=images.tensor, pixel_mask=mask)
        return levels.outputs, outputs.intermediate_hidden_states
