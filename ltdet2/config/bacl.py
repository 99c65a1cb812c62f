"""BACL's pieces (Qi et al., TMM 2023), to apply to the phases of any R-CNN project (see ``projects/bacl.py``).

Stage 1, representation learning: the sigmoid classifier with a background channel, more proposals kept in
training, a smaller weight decay, simple copy-paste. Stage 2, classifier learning: the feature extractor frozen, FCBL
guided by a long-term indicator (the soft confusion matrix), FHM's hallucinated rows. The pieces read the class count
and feature sizes from the model config when they are added.
"""

from detectron2.config import LazyCall as L

from ltdet2.config.copy_paste import LVIS_IMAGE_SIZE, add_copy_paste
from ltdet2.config.loce import LOCE_TRAINABLE
from ltdet2.config.long_tail import add_feature_source, box_feature_dim, roi_heads_num_classes, use_long_tail_heads
from ltdet2.config.schedules import epochs_to_iters, multi_step
from ltdet2.data.lvis_meta import lvis_meta_from_dataset
from ltdet2.engine import make_phase
from ltdet2.memory import (
    CumulativeCount,
    ImageFrequency,
    InstanceFrequency,
    MeanScore,
    SoftConfusionMatrix,
    TruePositiveRate,
)
from ltdet2.modeling.box_predictors import SigmoidBackgroundScoring
from ltdet2.modeling.feature_sources import FeatureHallucination
from ltdet2.modeling.losses import ForegroundBalanceLoss

# Stage 2 trains the classifier, box regressor, RPN and mask head (official `selectp=1`: parameters named
# fc_cls, fc_reg, rpn, mask_head); backbone, FPN and the box head's shared FCs are frozen. LOCE's list.
BACL_TRAINABLE = list(LOCE_TRAINABLE)
REPRESENTATION_WEIGHT_DECAY = 5e-5  # stage 1 (paper Sec. IV-B); stage 2 keeps the base 1e-4
# the long-term indicators of BACL Tab. II, by the name the loss and FHM read them under
INDICATOR_KINDS = ("confusion", "image_frequency", "instance_frequency", "cumulative_count", "mean_score", "tpr")


def use_sigmoid_background(model, cls_bias_init=None):
    """The sigmoid classifier with a background channel (test-time ``p_j = sigmoid(z_j)(1 - sigmoid(z_C))``,
    loss Eq. 2, biases at -ln 999 unless ``cls_bias_init``); used at test time in both stages."""
    use_long_tail_heads(model)
    predictor = model.roi_heads.box_predictor
    predictor.pop("class_scoring", None)  # the scoring's name, in configs written before scorings were objects
    predictor.scoring = L(SigmoidBackgroundScoring)()
    if cls_bias_init is not None:
        predictor.cls_bias_init = cls_bias_init
    return model


def keep_more_proposals(model, train_topk):
    """Keeps ``train_topk`` RPN proposals per image in training, before NMS (Detectron2: per FPN level) and
    after it (official: ``nms_pre = max_num = 2000``); the test setting is left as it is."""
    rpn = model.proposal_generator
    rpn.pre_nms_topk = (train_topk, rpn.pre_nms_topk[1])
    rpn.post_nms_topk = (train_topk, rpn.post_nms_topk[1])
    return model


def add_representation_learning(
    phase,
    *,
    image_size,
    train_proposals=2000,
    weight_decay=REPRESENTATION_WEIGHT_DECAY,
    copy_paste=True,
    **copy_paste_options,
):
    """BACL stage 1 on a phase (its model, optimizer and training data): the sigmoid classifier with a
    background channel, ``train_proposals`` proposals kept in training, ``weight_decay``, and simple
    copy-paste at ``image_size`` (LVIS: 1280; ``copy_paste_options``: those of ``add_copy_paste``)."""
    use_sigmoid_background(phase["model"])
    keep_more_proposals(phase["model"], train_proposals)
    phase["optimizer"].weight_decay = weight_decay
    if copy_paste:
        add_copy_paste(phase["dataloader"], image_size=image_size, **copy_paste_options)
    return phase


def add_indicator(model, kind="confusion", *, name=None, dataset_name=None, sync="global"):
    """Adds one of BACL's long-term indicators (Tab. II) to the ROI heads under ``name`` (default: ``kind``).

    ``"confusion"`` (the default and the official code's: cumulative from the stage's start, over all ranks
    with ``sync="global"``, hallucinated rows counted), ``"cumulative_count"``, ``"mean_score"``
    (LOCE's gamma 0.9 on the test-time scores), ``"tpr"``; ``"image_frequency"`` and
    ``"instance_frequency"`` read the counts of ``dataset_name`` (the training set)."""
    num_classes = roi_heads_num_classes(model)
    dynamic = {
        "confusion": SoftConfusionMatrix,
        "cumulative_count": CumulativeCount,
        "mean_score": MeanScore,
        "tpr": TruePositiveRate,
    }
    static = {"image_frequency": ImageFrequency, "instance_frequency": InstanceFrequency}
    if kind in dynamic:
        indicator = L(dynamic[kind])(num_classes=num_classes, sync=sync)
    elif kind in static:
        if dataset_name is None:
            raise ValueError(f"add_indicator: {kind!r} reads the counts of a dataset: give dataset_name")
        indicator = L(static[kind].from_lvis_meta)(meta=L(lvis_meta_from_dataset)(dataset_name=dataset_name))
    else:
        raise ValueError(f"add_indicator: kind must be one of {INDICATOR_KINDS}, got {kind!r}")
    use_long_tail_heads(model)
    indicators = dict(model.roi_heads.get("indicators") or {})
    indicators[name or kind] = indicator
    model.roi_heads.indicators = indicators
    return model


def _require_indicator(model, indicator, where):
    if indicator not in (model.roi_heads.get("indicators") or {}):
        if indicator != "confusion":
            raise ValueError(f"{where}: add the {indicator!r} indicator first (add_indicator(model, ...))")
        add_indicator(model, "confusion")


def add_fcbl(model, *, indicator="confusion", alpha=0.85, weight_threshold=0.7, weight_term=True, **options):
    """FCBL as the classification loss, guided by ``indicator`` (the confusion matrix is added if missing).
    ``weight_term=False``: the margin alone; ``alpha=0``: the weight term alone."""
    use_sigmoid_background(model)
    _require_indicator(model, indicator, "add_fcbl")
    model.roi_heads.box_predictor.cls_loss = L(ForegroundBalanceLoss)(
        indicator=indicator,
        num_classes=roi_heads_num_classes(model),
        alpha=alpha,
        weight_threshold=weight_threshold,
        weight_term=weight_term,
        **options,
    )
    return model


def add_fhm(model, *, indicator="confusion", num_sampled_classes=8, per_class=12, momentum=0.9, **options):
    """FHM as a feature source: c classes drawn with p ∝ 1 - l_i, m hallucinated box-head features each
    (per process: the official code draws c=8, m=12 on each of its 8 GPUs of 2 images)."""
    use_sigmoid_background(model)
    _require_indicator(model, indicator, "add_fhm")
    return add_feature_source(
        model,
        L(FeatureHallucination)(
            num_classes=roi_heads_num_classes(model),
            feature_dim=box_feature_dim(model),
            num_sampled_classes=num_sampled_classes,
            per_class=per_class,
            momentum=momentum,
            indicator=indicator,
            **options,
        ),
    )


def add_classifier_learning(phase, *, fcbl=True, fhm=True, **fcbl_options):
    """BACL stage 2 on a phase: the feature extractor frozen (``BACL_TRAINABLE``), the confusion matrix,
    FCBL (``fcbl_options``: those of :func:`add_fcbl`) and FHM; ``fcbl=False`` keeps the stage-1 loss
    and ``fhm=False`` leaves FHM out (the ablations)."""
    model = phase["model"]
    use_sigmoid_background(model)
    if fcbl:
        add_fcbl(model, **fcbl_options)
    if fhm:
        add_fhm(model)
    phase["train"].trainable = BACL_TRAINABLE
    return phase


def lvis_phases(model, dataloader, optimizer, train, *, num_train_images, batch_size=16, epochs=12, warmup_iters=500):
    """BACL's two stages with the paper's LVIS settings (Sec. IV-B and the official configs): ``epochs`` (12)
    each at ``batch_size`` 16, lr 0.02 (the optimizer's) with x0.1 at epochs 8 and 11 and a 500-iteration
    linear warm-up; stage 1 with copy-paste at 1280 px, 2000 training proposals and weight decay 5e-5;
    stage 2 on ``dataloader`` as given (multi-scale 640-800, flip) with weight decay 1e-4 (the optimizer's),
    frozen feature extractor, FCBL + FHM. Returns the ``phases`` mapping."""

    def iters(num_epochs):
        return epochs_to_iters(num_epochs, num_train_images, batch_size)

    train.max_iter = iters(epochs)
    schedule = multi_step(
        iters(epochs), steps=(iters(epochs * 8 / 12), iters(epochs * 11 / 12)), warmup_iters=warmup_iters
    )
    representation = make_phase(
        model=model, dataloader=dataloader, optimizer=optimizer, train=train, lr_multiplier=schedule
    )
    add_representation_learning(representation, image_size=LVIS_IMAGE_SIZE, train_proposals=2000)
    classifier = make_phase(representation, dataloader=dataloader, optimizer=optimizer)
    add_classifier_learning(classifier)
    return dict(representation=representation, classifier=classifier)
