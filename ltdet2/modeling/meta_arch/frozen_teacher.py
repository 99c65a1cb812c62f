"""What every teacher-student meta-architecture shares (:class:`~ltdet2.modeling.TeacherStudentRCNN`,
:class:`~ltdet2.modeling.meta_arch.TeacherStudentDETR`): a frozen teacher that is no submodule, built at the first
training step from its config and ``teacher_weights``, and the distillation terms' losses added to the student's."""

import logging
import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate

logger = logging.getLogger(__name__)

__all__ = ["FrozenTeacherMixin"]


class _TeacherCheckpointer(DetectionCheckpointer):
    """Remembers the entries of another shape (which Detectron2 skips) and the parameters the checkpoint lacked (a
    teacher must not run with random weights)."""

    missing_keys: list[str] = []
    incorrect_shapes: list[tuple] = []  # (key, shape in the checkpoint, shape in the model)

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        self.missing_keys = list(incompatible.missing_keys)
        self.incorrect_shapes = list(incompatible.incorrect_shapes)
        return incompatible


class FrozenTeacherMixin:
    """A student (an ``nn.Module`` with ``device`` and ``pixel_mean``) with a frozen teacher and distillation terms.

    The teacher is not a submodule: it is in neither ``state_dict`` (checkpoints hold the student only),
    ``parameters()`` (nor the optimizer, nor DDP), and ``model.train()`` does not reach it. :meth:`teacher_model`
    builds it on first call: ``teacher`` instantiated (when it is a config, under ``fork_rng``: the student's random
    draws do not depend on when it is built), ``teacher_weights`` loaded with :class:`DetectionCheckpointer` (every
    parameter must be there, with the teacher's shape), moved to the student's device, ``eval()`` and
    ``requires_grad_(False)``. After a resume it is built again from ``teacher_weights``.

    A subclass calls :meth:`_init_teacher` in its ``__init__`` and names, for the phase graph
    (:func:`~ltdet2.engine.phase_graph.teacher_model_config`), ``student_class`` (what its checkpoint is, as a teacher:
    the meta-architecture without teacher and terms) and ``teacher_student_arguments`` (its own constructor
    arguments, left out of that config).
    """

    student_class: type = None  # set by each subclass
    teacher_student_arguments: tuple[str, ...] = ("teacher", "teacher_weights", "distillers")
    # the config key of the teacher's class count, as the shape error names it
    teacher_class_count_key: str = "model.teacher.num_classes"

    def _init_teacher(
        self, teacher: nn.Module | Mapping | None, teacher_weights: str | None, distillers: Sequence[nn.Module]
    ):
        self.distillers = nn.ModuleList(distillers)
        self.teacher_weights = teacher_weights
        # plain attributes (object.__setattr__): nn.Module would register a module as a submodule
        object.__setattr__(self, "_teacher_spec", teacher)
        object.__setattr__(self, "_teacher", None)

    @property
    def teacher(self) -> nn.Module | None:
        """The built teacher (None before the first training step with distillers)."""
        return self._teacher

    def teacher_model(self) -> nn.Module:
        """The frozen teacher on the student's device, built on first call."""
        if self._teacher is None:
            object.__setattr__(self, "_teacher", self._build_teacher())
        if self._teacher.pixel_mean.device != self.device:
            self._teacher.to(self.device)
        return self._teacher

    def _check_teacher_weights(self):
        path = self.teacher_weights
        if path is None or ("://" not in path and not os.path.isfile(path)):
            raise FileNotFoundError(
                f"{type(self).__name__}: teacher_weights {path!r} is not a file; the phase runner sets it to the final "
                "checkpoint of the phase named by train.teacher_from_phase (or set model.teacher_weights)"
            )

    def _build_teacher(self) -> nn.Module:
        """The teacher, loaded and frozen (a subclass may extend it)."""
        owner = type(self).__name__
        self._check_teacher_weights()
        path = self.teacher_weights
        if self._teacher_spec is None:
            raise ValueError(
                f"{owner}: model.teacher is None; set train.teacher_from_phase (the runner copies that "
                "phase's model config) or model.teacher"
            )
        spec = self._teacher_spec
        if isinstance(spec, nn.Module):
            teacher = spec
        else:
            with torch.random.fork_rng(devices=[]):  # the student's random draws do not depend on when it is built
                teacher = instantiate(spec)
        checkpointer = _TeacherCheckpointer(teacher)
        checkpointer.load(path)
        shapes = checkpointer.incorrect_shapes
        if shapes:
            listed = "; ".join(
                f"{key}: {tuple(saved)} in the checkpoint, {tuple(own)} in the teacher"
                for key, saved, own in shapes[:8]
            )
            raise ValueError(
                f"{owner}: teacher checkpoint {path} does not fit the teacher model (model.teacher): "
                f"{len(shapes)} entries have another shape ({listed}{' ...' if len(shapes) > 8 else ''}). It was saved "
                f"for another model (another class count: {self.teacher_class_count_key}?)"
            )
        if checkpointer.missing_keys:
            raise KeyError(
                f"{owner}: teacher checkpoint {path} lacks parameters {checkpointer.missing_keys[:10]}"
                f"{' ...' if len(checkpointer.missing_keys) > 10 else ''}"
            )
        teacher.to(self.device).eval().requires_grad_(False)
        logger.info(f"{owner}: teacher {type(teacher).__name__} built from {path}")
        return teacher

    def _add_distillation_losses(self, losses: dict, context) -> dict:
        """``losses`` with every distillation term's named losses on ``context`` added (a name twice is refused)."""
        for index, distiller in enumerate(self.distillers):
            for name, value in distiller(context).items():
                if name in losses:
                    raise KeyError(
                        f"{type(self).__name__}: distiller {index} ({type(distiller).__name__}) returns loss "
                        f"{name!r}, which another loss already has"
                    )
                losses[name] = value
        return losses
