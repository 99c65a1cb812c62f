"""Optimizers built from LazyConfig with Detectron2's gradient clipping (``SOLVER.CLIP_GRADIENTS`` of its yacs
configs, which its LazyConfig optimizers have no option for)."""

from detectron2.config import CfgNode
from detectron2.solver.build import GradientClipType, maybe_add_gradient_clipping
from detectron2.utils.registry import locate


def gradient_clipping_optimizer(
    *, optimizer_class: str, clip_type: str = "value", clip_value: float = 1.0, norm_type: float = 2.0, **kwargs
):
    """``optimizer_class(**kwargs)`` (a dotted name, e.g. ``"torch.optim.SGD"``: the saved config stays plain YAML)
    as Detectron2's ``maybe_add_gradient_clipping`` makes it: before each ``step``, each parameter's gradient is
    clipped on its own, by value to ``[-clip_value, clip_value]`` (``clip_type="value"``) or to norm ``clip_value``
    in ``norm_type`` (``"norm"``). Its state dict is ``optimizer_class``'s, so checkpoints load either way. Under
    AMP the trainer's grad scaler unscales the gradients before ``step``: the clipping sees the true gradients."""
    solver = CfgNode(
        {
            "CLIP_GRADIENTS": {
                "ENABLED": True,
                "CLIP_TYPE": GradientClipType(clip_type).value,
                "CLIP_VALUE": float(clip_value),
                "NORM_TYPE": float(norm_type),
            }
        }
    )
    return maybe_add_gradient_clipping(CfgNode({"SOLVER": solver}), locate(optimizer_class))(**kwargs)
