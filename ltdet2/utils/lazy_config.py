"""LazyConfig nodes read without instantiating them."""

from omegaconf import DictConfig

from detectron2.config.instantiate import locate

__all__ = ["lazy_target"]


def lazy_target(node):
    """The ``_target_`` of a LazyCall node as an object (a dotted name located, as ``instantiate`` does); None for a
    node without one, or that is not a mapping."""
    target = node.get("_target_", None) if isinstance(node, (dict, DictConfig)) else None
    return locate(target) if isinstance(target, str) else target
