"""Shared by the method helpers (:mod:`ltdet2.config.loce`, :mod:`ltdet2.config.rio`, ...): switch a Detectron2
R-CNN model config to ltdet2's heads, and read the sizes a method piece is built with from the model config.

The pieces copy these sizes when they are added (no interpolation reaches outside the piece), so set the class count
and head sizes before adding them.
"""

from ltdet2.modeling import LongTailOutputLayers, LongTailROIHeads


def use_long_tail_heads(model):
    """Switches ``model``'s ROI heads and box predictor to ltdet2's (:class:`LongTailROIHeads`,
    :class:`LongTailOutputLayers`), keeping their arguments; with no long-tail option set they give Detectron2's
    losses and outputs. Returns ``model``."""
    model.roi_heads._target_ = LongTailROIHeads
    model.roi_heads.box_predictor._target_ = LongTailOutputLayers
    return model


def _target_name(target):
    return target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"


def add_feature_source(model, source):
    """Appends ``source`` (a LazyConfig of a feature source) to the ROI heads' ``feature_sources``: every method
    helper adds its source this way, so helpers compose in any order (RIO's replay with LOCE's MFS, FHM with
    replay, ...). A second source of the same type is refused: two would fill the same rows twice."""
    use_long_tail_heads(model)
    sources = list(model.roi_heads.get("feature_sources", None) or [])
    kind = _target_name(source._target_)
    if any(_target_name(other._target_) == kind for other in sources):
        raise ValueError(
            f"model.roi_heads.feature_sources already holds a {kind.rpartition('.')[2]}; a model takes one source "
            f"of each type (sources there: {[_target_name(o._target_).rpartition('.')[2] for o in sources]})"
        )
    model.roi_heads.feature_sources = [*sources, source]
    return model


def roi_heads_num_classes(model):
    """C, the model config's ``roi_heads.num_classes`` (an int: set it before adding method pieces)."""
    num_classes = model.roi_heads.num_classes
    if not isinstance(num_classes, int) or isinstance(num_classes, bool):
        raise ValueError(
            f"model.roi_heads.num_classes must be an int before method pieces are added, got {num_classes!r}"
        )
    return num_classes


def box_feature_dim(model):
    """D, the channels of the box head's output (the box predictor's input), e.g. 1024 for R-50-FPN."""
    return model.roi_heads.box_predictor.input_shape.channels


def pooled_feature_shape(model):
    """(channels, height, width) of the pooled RoI features the box head takes, e.g. (256, 7, 7)."""
    shape = model.roi_heads.box_head.input_shape
    return (shape.channels, shape.height, shape.width)
