"""Seesaw loss (Wang et al., CVPR 2021, arXiv 2008.10032) as ltdet2 pieces, to apply to any R-CNN phase config
(``projects/seesaw.py``, ``projects/seesaw_lvis_v1.py``).

The loss (:class:`ltdet2.modeling.losses.SeesawLoss`), the objectness-aware scoring of its K+2 logits
(:class:`ltdet2.modeling.box_predictors.scoring.ObjectnessSoftmaxScoring`), the cumulative class count it reads
(:class:`ltdet2.memory.indicators.CumulativeCount`, updated before the loss) and the normalised linear classifier of
the official configs (:class:`ltdet2.modeling.losses.SeesawNormalizedLinear`). The pieces copy the class count and the
box feature size from the model config when they are added.
"""

from detectron2.config import LazyCall as L

from ltdet2.config.long_tail import box_feature_dim, roi_heads_num_classes, use_long_tail_heads
from ltdet2.memory.indicators import CumulativeCount
from ltdet2.modeling.box_predictors.scoring import ObjectnessSoftmaxScoring
from ltdet2.modeling.losses.seesaw import SeesawLoss, SeesawNormalizedLinear

# the official values (MMDetection's SeesawLoss and the configs/seesaw_loss/*.py that use it)
SEESAW_P = 0.8
SEESAW_Q = 2.0
SEESAW_EPS = 1e-2
TEMPERATURE = 20.0  # NormedLinear(tempearture=20)
COUNT_INDICATOR = "seesaw_count"


def add_seesaw(
    model,
    *,
    p=SEESAW_P,
    q=SEESAW_Q,
    eps=SEESAW_EPS,
    sync="local",
    normalized_linear=True,
    temperature=TEMPERATURE,
    indicator=COUNT_INDICATOR,
):
    """Seesaw loss with the official code's objectness branch on the box predictor of ``model``.

    Adds the cumulative class count N as the ROI heads' indicator ``indicator`` (updated before the loss; per
    process, ``sync="local"``, as the official buffer; ``"global"`` sums the ranks'), the loss reading it (``p``,
    ``q``, ``eps``: official 0.8, 2, 1e-2; ``eps=0`` is the paper's equation without the clamp), the objectness-aware
    scoring (``K+2`` logits; test-time scores ``softmax(classes) * p_fg``, background ``p_bg``) and, with
    ``normalized_linear`` (every official config), the normalised linear classifier at ``temperature`` (else the
    linear ``cls_score``, sized ``K+2`` by the predictor).

    Refused on a predictor that already has a classification loss, a classifier module or Detectron2's sigmoid
    classifier: Seesaw replaces the classification, it does not compose with another one.
    """
    use_long_tail_heads(model)
    predictor = model.roi_heads.box_predictor
    for key, what in (("cls_loss", "a classification loss"), ("classifier", "a classifier module")):
        if predictor.get(key, None) is not None:
            raise ValueError(
                f"add_seesaw: model.roi_heads.box_predictor already has {what} ({key}); Seesaw brings its own "
                "(and a classifier of K+2 outputs): add it to a model without one"
            )
    if predictor.get("use_sigmoid_ce", False) or predictor.get("use_fed_loss", False):
        raise ValueError("add_seesaw: Seesaw is a softmax loss; the box predictor has use_sigmoid_ce / use_fed_loss")
    num_classes = roi_heads_num_classes(model)
    indicators = dict(model.roi_heads.get("indicators") or {})
    indicators[indicator] = L(CumulativeCount)(num_classes=num_classes, update_timing="before_loss", sync=sync)
    model.roi_heads.indicators = indicators
    predictor.pop("class_scoring", None)  # the scoring's name, in configs written before scorings were objects
    predictor.scoring = L(ObjectnessSoftmaxScoring)()
    predictor.cls_loss = L(SeesawLoss)(indicator=indicator, p=p, q=q, eps=eps, num_classes=num_classes)
    if normalized_linear:
        predictor.classifier = L(SeesawNormalizedLinear)(
            input_dim=box_feature_dim(model), num_classes=num_classes, temperature=temperature
        )
    return model
