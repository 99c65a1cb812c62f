"""A teacher that reuses the student's frozen ResNet stages instead of running its own copies (ours: a speed-up,
not part of any paper). In step-wise knowledge transfer the student's whole ResNet is frozen and is the head
expert's (the teacher's); in LST's incremental phases it is frozen and is the previous phase's. Running those
stages a second time for the teacher only repeats the student's work."""

import torch
from torch import nn

from detectron2.modeling.backbone import ResNet

__all__ = [
    "StageOutputs",
    "SharedStagesBottomUp",
    "frozen_module",
    "same_frozen_weights",
    "same_preprocessing",
    "shared_frozen_stages",
]

_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def _stages(resnet: ResNet) -> list[tuple[str, nn.Module]]:
    return [("stem", resnet.stem), *zip(resnet.stage_names, resnet.stages)]


def _bottom_up(model: nn.Module) -> ResNet | None:
    bottom_up = getattr(model.backbone, "bottom_up", None)
    return bottom_up if isinstance(bottom_up, ResNet) else None


def frozen_module(stage: nn.Module) -> bool:
    """No parameter trains and the output does not depend on train/eval mode (FrozenBatchNorm2d, not BatchNorm)."""
    return not any(p.requires_grad for p in stage.parameters()) and not any(
        isinstance(m, _MODE_DEPENDENT) for m in stage.modules()
    )


def same_frozen_weights(student_stage: nn.Module, teacher_stage: nn.Module) -> bool:
    """Same parameters and normalisation statistics (BatchNorm's ``num_batches_tracked`` aside: a teacher in eval
    mode with BatchNorm computes what the student's FrozenBatchNorm2d with the same statistics computes)."""
    student = {k: v for k, v in student_stage.state_dict().items() if not k.endswith("num_batches_tracked")}
    teacher = {k: v for k, v in teacher_stage.state_dict().items() if not k.endswith("num_batches_tracked")}
    return student.keys() == teacher.keys() and all(
        student[k].shape == teacher[k].shape and torch.equal(student[k], teacher[k].to(student[k].device))
        for k in student
    )


def same_preprocessing(student: nn.Module, teacher: nn.Module) -> bool:
    """The two models normalise the same images alike (``input_format``, ``pixel_mean``, ``pixel_std``), so the
    student's backbone sees what the teacher's would."""
    return (
        student.input_format == teacher.input_format
        and torch.equal(student.pixel_mean, teacher.pixel_mean.to(student.pixel_mean.device))
        and torch.equal(student.pixel_std, teacher.pixel_std.to(student.pixel_std.device))
    )


def shared_frozen_stages(student: nn.Module, teacher: nn.Module) -> list[str]:
    """The longest prefix of the ResNet stages (``stem``, ``res2``, ...) that the teacher can take from the
    student: frozen in the student and with the teacher's weights, on the same preprocessed images. Empty when a
    backbone has no ResNet ``bottom_up`` (e.g. not an FPN over a ResNet) or the inputs are normalised apart."""
    student_resnet, teacher_resnet = _bottom_up(student), _bottom_up(teacher)
    if student_resnet is None or teacher_resnet is None:
        return []
    if not same_preprocessing(student, teacher):
        return []
    shared = []
    for (name, student_stage), (teacher_name, teacher_stage) in zip(_stages(student_resnet), _stages(teacher_resnet)):
        if name != teacher_name or not frozen_module(student_stage):
            break
        if not same_frozen_weights(student_stage, teacher_stage):
            break
        shared.append(name)
    return shared


class StageOutputs:
    """Records the outputs of the ResNet stages ``names`` (forward hooks) from :meth:`start` to :meth:`take`;
    nothing is kept outside that window."""

    def __init__(self, resnet: ResNet, names: list[str]):
        self.outputs: dict[str, torch.Tensor] | None = None
        for name, stage in _stages(resnet):
            if name in names:
                stage.register_forward_hook(self._hook(name))

    def _hook(self, name):
        def record(module, inputs, output):
            if self.outputs is not None:
                self.outputs[name] = output

        return record

    def start(self):
        self.outputs = {}

    def take(self) -> dict[str, torch.Tensor]:
        outputs, self.outputs = self.outputs, None
        return outputs or {}


class SharedStagesBottomUp(nn.Module):
    """The teacher's ResNet with its first stages (``shared``) replaced by the student's recorded outputs; the
    remaining stages run on the last of them. Returns what :meth:`ResNet.forward` returns (its ``out_features``)."""

    def __init__(self, resnet: ResNet, shared: list[str], recorded: StageOutputs):
        super().__init__()
        self.resnet = resnet
        self.shared = list(shared)
        object.__setattr__(self, "recorded", recorded)  # not a submodule

    def forward(self, x):
        recorded = self.recorded.outputs or {}
        missing = [name for name in self.shared if name not in recorded]
        if missing:
            raise RuntimeError(
                f"SharedStagesBottomUp: the student's outputs of {missing} were not recorded in this step; the teacher "
                "must run right after the student's backbone in the same training step"
            )
        outputs = {}
        for name, stage in _stages(self.resnet):
            x = recorded[name] if name in self.shared else stage(x)
            if name in self.resnet._out_features:
                outputs[name] = x
        return outputs
