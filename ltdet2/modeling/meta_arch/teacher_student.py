"""GeneralizedRCNN trained with distillation from a frozen teacher (step-wise knowledge transfer, LST)."""

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN

from ..distillers import DistillationContext
from .frozen_teacher import FrozenTeacherMixin
from .shared_stages import SharedStagesBottomUp, StageOutputs, shared_frozen_stages

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class TeacherStudentRCNN(FrozenTeacherMixin, GeneralizedRCNN):
    """The student, a :class:`GeneralizedRCNN`, trained with its usual losses plus the losses of distillation
    terms (``distillers``: modules ``forward(DistillationContext) -> dict of named losses``) between it and a
    frozen teacher.

    The teacher is not a submodule: it is in neither ``state_dict`` (checkpoints hold the student only),
    ``parameters()`` (nor the optimizer, nor DDP), and ``model.train()`` does not reach it. It is built at the
    first training step that has distillers (:class:`~ltdet2.modeling.meta_arch.frozen_teacher.FrozenTeacherMixin`,
    shared with :class:`~ltdet2.modeling.meta_arch.TeacherStudentDETR`): ``teacher`` instantiated (when it is a
    config), ``teacher_weights`` loaded with :class:`DetectionCheckpointer` (every parameter must be there, with the
    teacher's shape; the phase runner checks the class rows before training), moved to the student's device,
    ``eval()`` (dropout off, BatchNorm on its statistics) and ``requires_grad_(False)``; it runs under
    ``torch.no_grad()``. After a resume it is built again from ``teacher_weights``. Inference is the student
    alone. Without distillers the model is exactly :class:`GeneralizedRCNN` (no teacher is built).

    In a training step the student runs :meth:`GeneralizedRCNN.forward` itself; the teacher's backbone runs on the
    same images right after the student's (a forward hook on the student's backbone for that call; by default taking
    from the student the outputs of the leading ResNet stages that are frozen there and hold the teacher's weights,
    see ``share_frozen_stages``), and each term sees a :class:`DistillationContext` (the student's images, both
    models' FPN features, the ground truth, the student's sampled RoIs from ``roi_heads.latest_sampled_proposals``,
    kept by :class:`~ltdet2.modeling.LongTailROIHeads`). The teacher draws no random numbers, so the student's
    losses are those GeneralizedRCNN computes on the same batch and seed.

    Args:
        teacher: the teacher model, or its LazyConfig; None until the phase runner fills it
            (``train.teacher_from_phase``). A LazyConfig node is instantiated with the student, so it
            usually arrives as a module (with random weights until ``teacher_weights`` are loaded).
        teacher_weights: checkpoint of the teacher (the runner sets the phase's final checkpoint).
        distillers: distillation terms, e.g. :class:`~ltdet2.modeling.distillers.MaskedFeatureDistillation`.
        share_frozen_stages: the teacher reuses the student's outputs of the longest prefix of ResNet stages
            (stem, res2, ...) that are frozen in the student (no trainable parameter, no BatchNorm in train mode)
            and equal to the teacher's (:func:`~ltdet2.modeling.meta_arch.shared_stages.shared_frozen_stages`;
            logged when the teacher is built). The teacher's features are the same; only the repeated work goes
            (ours; e.g. the whole ResNet in step-wise transfer and LST's incremental phases).
        other arguments: those of :class:`GeneralizedRCNN`.
    """

    student_class = GeneralizedRCNN
    teacher_student_arguments = ("teacher", "teacher_weights", "distillers", "share_frozen_stages")
    teacher_class_count_key = "model.teacher.roi_heads.num_classes"

    @configurable
    def __init__(
        self,
        *,
        teacher: nn.Module | Mapping | None = None,
        teacher_weights: str | None = None,
        distillers: Sequence[nn.Module] = (),
        share_frozen_stages: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._init_teacher(teacher, teacher_weights, distillers)
        self.share_frozen_stages = share_frozen_stages
        object.__setattr__(self, "_student_stages", None)  # StageOutputs of the shared stages, set with the teacher

    def _build_teacher(self) -> nn.Module:
        teacher = super()._build_teacher()
        shared = shared_frozen_stages(self, teacher) if self.share_frozen_stages else []
        if shared:
            object.__setattr__(self, "_student_stages", StageOutputs(self.backbone.bottom_up, shared))
            teacher.backbone.bottom_up = SharedStagesBottomUp(teacher.backbone.bottom_up, shared, self._student_stages)
            logger.info(
                f"TeacherStudentRCNN: the teacher takes the outputs of {shared} from the student (frozen there)"
            )
        return teacher

    def forward(self, batched_inputs):
        if not self.training or not self.distillers:
            return super().forward(batched_inputs)

        # built before the student's step (so that it can take the student's frozen stages), without touching the
        # student's random draws (instantiate runs under fork_rng, loading draws nothing)
        teacher = self.teacher_model()
        # GeneralizedRCNN's training step as it is; two hooks for the duration of the call run the teacher's
        # backbone right after the student's (on the shared stages' outputs it just recorded) and keep the images,
        # features and ground truth that the student's ROI heads receive, for the distillers
        step = {}

        def teacher_after_student_backbone(backbone, args, features):
            try:
                step["teacher_features"] = self._teacher_features(teacher, batched_inputs, args[0])
            finally:
                self._take_student_stages()

        def keep_roi_heads_inputs(roi_heads, args, kwargs):
            step.update(zip(("images", "features", "proposals", "targets"), args), **kwargs)

        hooks = [
            self.backbone.register_forward_hook(teacher_after_student_backbone),
            self.roi_heads.register_forward_pre_hook(keep_roi_heads_inputs, with_kwargs=True),
        ]
        if self._student_stages is not None:
            self._student_stages.start()
        try:
            losses = super().forward(batched_inputs)
        finally:
            for hook in hooks:
                hook.remove()
            self._take_student_stages()

        context = DistillationContext(
            images=step["images"],
            student_features=step["features"],
            teacher_features=step["teacher_features"],
            targets=step.get("targets"),
            sampled_proposals=getattr(self.roi_heads, "latest_sampled_proposals", None),
            student=self,
            teacher=teacher,
        )
        return self._add_distillation_losses(losses, context)

    def _take_student_stages(self):
        """Ends the recording of the student's shared stages (nothing is kept after the teacher's backbone)."""
        if self._student_stages is not None:
            self._student_stages.take()

    @torch.no_grad()
    def _teacher_features(self, teacher, batched_inputs, student_images: torch.Tensor):
        """The teacher's FPN features of the batch (right after the student's backbone: the shared stages' outputs
        are those the student just recorded); ``student_images``: the student's padded batch tensor."""
        teacher_images = teacher.preprocess_image(batched_inputs)
        if teacher_images.tensor.shape != student_images.shape:
            raise ValueError(
                f"TeacherStudentRCNN: the teacher pads the batch to {tuple(teacher_images.tensor.shape)}, the "
                f"student to {tuple(student_images.shape)}; their backbones need the same size_divisibility"
            )
        return teacher.backbone(teacher_images.tensor)
