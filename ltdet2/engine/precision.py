"""Reduced-precision training on a CPU: bfloat16 autocast scoped to the compute-heavy modules.

Detectron2's ``AMPTrainer`` needs CUDA and autocasts the whole forward. On a CPU, ltdet2 autocasts only the parts
whose convolutions and matrix products dominate a training step (``train.amp.enabled=True``, ``precision``
``"bfloat16"``): the backbone, the RPN head, the box head and the mask head's layers (:data:`AUTOCAST_METHODS`).
Their outputs come back as float32, so everything between and after them runs in float32:

- the RoI poolers (Detectron2's ``ROIAlign`` casts the RoI coordinates to the features' dtype; in bfloat16 a
  coordinate of a 128 px image rounds to half a pixel);
- the box predictor (small);
- every loss and distillation term, and the memories and indicators.

Only in training mode: a model in eval mode (evaluation, a frozen teacher) runs in float32 throughout. The wrapping
replaces no module and adds no parameter, so checkpoints are the same as float32 training's. The gradients are not
the float32 ones: whether training in bfloat16 keeps the numbers is a question for seeds, not a test.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ltdet2.utils.cpu import cpu_capability, has_native_cpu_bfloat16

__all__ = ["AUTOCAST_METHODS", "autocast_training_modules", "training_precision"]

logger = logging.getLogger("detectron2")

# (module name suffix, method): every submodule whose dotted name is the suffix or ends with "." + suffix (so a
# teacher-student model's student and teacher both match) has the method run under autocast in training mode. The
# mask head's ``layers`` (its convolutions and predictor), not its ``forward``, which also computes the mask loss.
AUTOCAST_METHODS = (
    ("backbone", "forward"),
    ("rpn_head", "forward"),
    ("box_head", "forward"),
    ("mask_head", "layers"),
)
PRECISIONS = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def training_precision(amp_cfg, device: str) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` (``enabled``, ``precision``; None or missing: off) on ``device``; None
    when it is off. The default precision is float16 on CUDA (Detectron2's ``AMPTrainer``) and bfloat16 on a CPU,
    the only one a CPU takes."""
    if amp_cfg is None or not amp_cfg.get("enabled", False):
        return None
    device_type = torch.device(device).type
    name = amp_cfg.get("precision", None) or ("bfloat16" if device_type == "cpu" else "float16")
    if name not in PRECISIONS:
        raise ValueError(f"train.amp.precision={name!r}: expected one of {sorted(PRECISIONS)}")
    if device_type == "cpu" and name != "bfloat16":
        raise ValueError(
            f"train.amp.precision={name!r} on a CPU: only bfloat16 is supported there (float16 autocast on a CPU "
            "is slow and needs a gradient scaler); set train.amp.precision=bfloat16 or train.amp.enabled=False"
        )
    return PRECISIONS[name]


def _to_float32(value, dtype):
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype == dtype else value
    if isinstance(value, dict):
        return {key: _to_float32(item, dtype) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        converted = [_to_float32(item, dtype) for item in value]
        return type(value)(converted) if isinstance(value, list) else tuple(converted)
    return value


class _TrainingAutocast:
    """A module's method run under ``torch.autocast`` while the module trains; floating outputs of ``dtype`` are
    returned as float32. Set as an instance attribute, it shadows the class's method."""

    def __init__(self, module: nn.Module, method, dtype: torch.dtype):
        self.module, self.method, self.dtype = module, method, dtype

    def __call__(self, *args, **kwargs):
        if not self.module.training:
            return self.method(*args, **kwargs)
        device_type = next(self.module.parameters()).device.type
        with torch.autocast(device_type, dtype=self.dtype):
            output = self.method(*args, **kwargs)
        return _to_float32(output, self.dtype)


def autocast_training_modules(model: nn.Module, dtype: torch.dtype, methods=AUTOCAST_METHODS) -> list[str]:
    """Runs, in place, the ``methods`` ((module name suffix, method name), :data:`AUTOCAST_METHODS`) of ``model``'s
    submodules under ``dtype`` autocast while they train (see the module docstring). Returns the ``"<module>.<method>"``
    names it wrapped (none for a model wrapped already); a ValueError when no submodule matches any suffix."""
    wrapped, matched = [], False
    for name, module in model.named_modules():
        for suffix, method in methods:
            if name != suffix and not name.endswith("." + suffix):
                continue
            matched = True
            current = getattr(module, method, None)
            if current is None:
                raise ValueError(f"autocast_training_modules: {name} ({type(module).__name__}) has no {method}()")
            if isinstance(current, _TrainingAutocast):
                continue  # wrapped already
            if next(module.parameters(), None) is None:
                continue  # nothing to compute in reduced precision
            setattr(module, method, _TrainingAutocast(module, current, dtype))
            wrapped.append(f"{name}.{method}")
    if not matched:
        suffixes = [suffix for suffix, _ in methods]
        raise ValueError(
            f"autocast_training_modules: no submodule of the {type(model).__name__} is named {suffixes} (or ends "
            "with one): nothing would train in reduced precision"
        )
    if wrapped:
        logger.info(
            f"Training precision {str(dtype).replace('torch.', '')} (autocast, training mode only) in {wrapped}; the "
            "poolers, the box predictor and the losses in float32"
        )
        on_cpu = next(model.parameters()).device.type == "cpu"
        if dtype == torch.bfloat16 and on_cpu and not has_native_cpu_bfloat16():
            logger.warning(
                f"bfloat16 training on a CPU without bf16 instructions ({cpu_capability()}): oneDNN emulates bf16, "
                "and a Mask R-CNN step was 11.9x slower than float32 on such a CPU "
                "(docs/results/speed/step_mask_rcnn_bf16_training_avx2.json); train.amp.enabled=False trains in float32"
            )
    return wrapped
