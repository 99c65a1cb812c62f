"""Optimizer options as config pieces."""

from detectron2.solver.build import GradientClipType

from ltdet2.config.long_tail import _target_name
from ltdet2.solver import gradient_clipping_optimizer


def add_gradient_clipping(optimizer, *, clip_type="value", clip_value=1.0, norm_type=2.0):
    """Turns the LazyConfig ``optimizer`` (``L(torch.optim.SGD)(...)`` and the like) into one that clips each
    parameter's gradient before every step, as Detectron2's ``SOLVER.CLIP_GRADIENTS`` does
    (:func:`ltdet2.solver.gradient_clipping_optimizer`; defaults: Detectron2's, by value at 1.0). Its other arguments
    stay as they are. Refused for an unknown ``clip_type``, a ``clip_value`` that is not positive, and an optimizer
    that clips already. Returns ``optimizer``."""
    try:
        GradientClipType(clip_type)
    except ValueError:
        choices = ", ".join(repr(t.value) for t in GradientClipType)
        raise ValueError(f"add_gradient_clipping: clip_type must be one of {choices}, got {clip_type!r}") from None
    if not clip_value > 0:
        raise ValueError(f"add_gradient_clipping: clip_value must be positive, got {clip_value}")
    clips = _target_name(optimizer._target_) == _target_name(gradient_clipping_optimizer)
    if clips or optimizer.get("clip_max_norm", None) is not None:
        raise ValueError(f"add_gradient_clipping: the optimizer clips its gradients already ({optimizer._target_})")
    optimizer.optimizer_class = _target_name(optimizer._target_)
    optimizer._target_ = gradient_clipping_optimizer
    optimizer.clip_type = clip_type
    optimizer.clip_value = clip_value
    optimizer.norm_type = norm_type
    return optimizer
