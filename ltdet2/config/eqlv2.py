"""EQLv2 (Tan et al., CVPR 2021, arXiv 2012.08548) as ltdet2 pieces, to apply to any R-CNN phase config
(``projects/eqlv2.py``, ``projects/eqlv2_lvis_v1.py``).

The loss (:class:`ltdet2.modeling.losses.EQLv2Loss`), the sigmoid classifier with a background column it trains
(:class:`ltdet2.modeling.box_predictors.scoring.SigmoidBackgroundScoring` with zero biases; test-time scores the class
sigmoids times the objectness ``1 - sigmoid(z_K)``) and the accumulated positive and negative gradients it reads
(:class:`ltdet2.memory.GradientRatio`, updated after the loss, holding gamma, mu and alpha). The pieces copy the class
count from the model config when they are added.
"""

from detectron2.config import LazyCall as L

from ltdet2.config.long_tail import roi_heads_num_classes, use_long_tail_heads
from ltdet2.memory.indicators import EQLV2_ALPHA, EQLV2_GAMMA, EQLV2_MU, GradientRatio
from ltdet2.modeling.box_predictors.scoring import SigmoidBackgroundScoring
from ltdet2.modeling.losses.eqlv2 import EQLv2Loss

__all__ = ["EQLV2_ALPHA", "EQLV2_GAMMA", "EQLV2_MU", "GRADIENT_INDICATOR", "add_eqlv2"]

# the official values (tztztztztz/eqlv2, mmdet/models/losses/eqlv2.py, EQLv2.__init__) are EQLV2_GAMMA = 12,
# EQLV2_MU = 0.8, EQLV2_ALPHA = 4 (ltdet2.memory.indicators)
GRADIENT_INDICATOR = "eqlv2_gradients"


def add_eqlv2(
    model,
    *,
    gamma=EQLV2_GAMMA,
    mu=EQLV2_MU,
    alpha=EQLV2_ALPHA,
    sync="global",
    test_with_objectness=True,
    indicator=GRADIENT_INDICATOR,
):
    """EQLv2 on the box predictor of ``model``.

    Adds the accumulated gradients as the ROI heads' indicator ``indicator`` (a :class:`GradientRatio` with
    ``gamma``, ``mu``, ``alpha``: official 12, 0.8, 4; summed over the ranks, ``sync="global"``, as the official
    ``dist.all_reduce``; ``"local"``: per rank), the loss reading it and the sigmoid scoring with a background column
    (zero biases, as the official ``BBoxHead``; ``test_with_objectness``: official ``test_with_obj``, True).

    Refused on a predictor that already has a classification loss, a scoring of its own (another than Detectron2's
    softmax) or Detectron2's sigmoid classifier / federated loss, and when the ROI heads already have an indicator
    named ``indicator``: EQLv2 replaces the classification loss and scoring, it does not compose with another one. A
    classifier module of ``K+1`` outputs is kept (the official code uses the linear one).
    """
    use_long_tail_heads(model)
    predictor = model.roi_heads.box_predictor
    if predictor.get("cls_loss", None) is not None:
        raise ValueError(
            "add_eqlv2: model.roi_heads.box_predictor already has a classification loss (cls_loss); EQLv2 brings "
            "its own: add it to a model without one"
        )
    scoring, class_scoring = predictor.get("scoring", None), predictor.get("class_scoring", None)
    if scoring is not None or class_scoring not in (None, "softmax"):
        raise ValueError(
            "add_eqlv2: model.roi_heads.box_predictor already has a scoring of its own (scoring / class_scoring); "
            "EQLv2 brings its sigmoid scoring with a background column"
        )
    if predictor.get("use_sigmoid_ce", False) or predictor.get("use_fed_loss", False):
        raise ValueError(
            "add_eqlv2: the box predictor has use_sigmoid_ce / use_fed_loss (Detectron2's sigmoid classifier, whose "
            "background column is never trained); EQLv2 trains its own sigmoid classifier with a background column"
        )
    indicators = dict(model.roi_heads.get("indicators") or {})
    if indicator in indicators:
        raise ValueError(
            f"add_eqlv2: model.roi_heads.indicators already has an indicator named {indicator!r}; give another name "
            "(indicator=...)"
        )
    num_classes = roi_heads_num_classes(model)
    indicators[indicator] = L(GradientRatio)(num_classes=num_classes, gamma=gamma, mu=mu, alpha=alpha, sync=sync)
    model.roi_heads.indicators = indicators
    predictor.pop("class_scoring", None)  # "softmax", the default, in configs written before scorings were objects
    predictor.scoring = L(SigmoidBackgroundScoring)(prior_prob=None, test_with_objectness=test_with_objectness)
    predictor.cls_loss = L(EQLv2Loss)(indicator=indicator, num_classes=num_classes)
    return model
