"""Detectron2's federated loss (FastRCNNOutputLayers' ``use_fed_loss``; Zhou et al. 2021, CenterNet2's LVIS loss) as
a config piece, to apply to any R-CNN phase config (``projects/federated_loss.py``).

Sigmoid cross-entropy over the classes of the batch and negative classes drawn with p ∝ image_count ** 0.5 until 50
classes. Nothing of ltdet2's heads is needed: the box predictor stays Detectron2's own (or ltdet2's
LongTailOutputLayers, which computes the same loss with Detectron2's method). The piece copies the class count and
the training dataset's name when it is added.
"""

import math

from detectron2.config import LazyCall as L
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.utils.registry import locate

from ltdet2.config.long_tail import roi_heads_num_classes
from ltdet2.modeling import LongTailOutputLayers
from ltdet2.modeling.losses.federated import FederatedClassWeights

# Detectron2's defaults (MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES, FED_LOSS_FREQ_WEIGHT_POWER)
FED_LOSS_NUM_CLASSES = 50
FED_LOSS_FREQ_WEIGHT_POWER = 0.5


def add_federated_loss(
    model,
    dataset_name,
    *,
    num_classes=FED_LOSS_NUM_CLASSES,
    freq_weight_power=FED_LOSS_FREQ_WEIGHT_POWER,
    prior_prob=None,
):
    """Detectron2's federated loss on the box predictor of ``model``: ``use_sigmoid_ce`` and ``use_fed_loss``, the
    class weights ``image_count ** freq_weight_power`` of ``dataset_name`` (the training dataset,
    ``dataloader.train.dataset.names``; :class:`~ltdet2.modeling.losses.federated.FederatedClassWeights`, read when
    the model is built), and ``num_classes`` classes per iteration (``fed_loss_num_classes``: the batch's classes,
    then negatives drawn by weight). Test-time scores are the sigmoid of each class logit (Detectron2's
    ``use_sigmoid_ce``).

    ``prior_prob``: the classifier's initial probability of every class, its biases at ``-ln((1 - p) / p)``. None
    (default): Detectron2's zero biases (p = 0.5: an initial loss of about ``num_classes * ln 2`` per RoI).
    CenterNet2, the paper's official code, starts at 0.01 (``custom_fast_rcnn.py``, ``MODEL.ROI_BOX_HEAD.PRIOR_PROB``);
    Detectron2's port of the loss does not. Given, Detectron2's predictor becomes ltdet2's
    :class:`~ltdet2.modeling.LongTailOutputLayers` (the same losses and outputs) for its ``cls_bias_init``.

    Refused on a predictor with a classification loss (it would replace the federated loss) or another scoring than
    Detectron2's, for ``num_classes`` above the model's class count (Detectron2 would fail drawing negatives at the
    first iteration), and for a ``prior_prob`` outside (0, 1) or on a predictor that cannot take it.
    """
    predictor = model.roi_heads.box_predictor
    if predictor.get("cls_loss", None) is not None:
        raise ValueError("add_federated_loss: the box predictor has a cls_loss, which would replace the federated loss")
    scoring = predictor.get("scoring", None)
    if scoring is not None or predictor.get("class_scoring", "softmax") not in (None, "softmax"):
        raise ValueError(
            "add_federated_loss: the box predictor has its own scoring; the federated loss is Detectron2's sigmoid "
            "classifier (use_sigmoid_ce)"
        )
    classes = roi_heads_num_classes(model)
    if not 0 < num_classes <= classes:
        raise ValueError(
            f"add_federated_loss: num_classes={num_classes} classes per iteration must be in [1, {classes}] "
            f"(model.roi_heads.num_classes)"
        )
    if prior_prob is not None:
        _set_prior_bias(predictor, prior_prob)
    predictor.use_sigmoid_ce = True
    predictor.use_fed_loss = True
    predictor.fed_loss_num_classes = num_classes
    predictor.get_fed_loss_cls_weights = L(FederatedClassWeights)(
        dataset_name=dataset_name, freq_weight_power=freq_weight_power, num_classes=classes
    )
    return model


def _set_prior_bias(predictor, prior_prob):
    """Sets the box predictor config's ``cls_bias_init`` to the bias of sigmoid probability ``prior_prob``, switching
    Detectron2's ``FastRCNNOutputLayers`` to :class:`LongTailOutputLayers` (which has the option)."""
    if not 0.0 < prior_prob < 1.0:
        raise ValueError(f"add_federated_loss: prior_prob must be in (0, 1) or None, got {prior_prob}")
    if predictor.get("classifier", None) is not None:
        raise ValueError(
            "add_federated_loss: prior_prob initialises the linear cls_score; the box predictor has a "
            "classifier module, which initialises itself"
        )
    if predictor.get("cls_bias_init", None) is not None:
        raise ValueError(f"add_federated_loss: the box predictor already has cls_bias_init={predictor.cls_bias_init}")
    target = locate(predictor._target_) if isinstance(predictor._target_, str) else predictor._target_
    if target is FastRCNNOutputLayers:
        predictor._target_ = LongTailOutputLayers
    elif not (isinstance(target, type) and issubclass(target, LongTailOutputLayers)):
        raise ValueError(
            f"add_federated_loss: prior_prob needs Detectron2's FastRCNNOutputLayers or ltdet2's "
            f"LongTailOutputLayers as the box predictor, got {getattr(target, '__qualname__', target)}"
        )
    predictor.cls_bias_init = -math.log((1 - prior_prob) / prior_prob)
