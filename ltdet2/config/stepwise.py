"""The step-wise method's pieces (Dong et al., ICCV 2023, "step-wise learning on smooth-tail data"), mapped onto
ltdet2's R-CNN (the paper's detector is Deformable DETR; the mapping is ours, see the design notes' reference
``stepwise.md`` section 2).

Smooth-tail sets scored by the pretrained model, step-wise RFS inside each set, a head-class expert fine-tuned on
D_head, and knowledge transfer on D_tail with the frozen expert as teacher. Apply them to the phases of any R-CNN
project (see ``projects/stepwise.py``).
"""

import copy

from detectron2.config import LazyCall as L

from ltdet2.config.long_tail import use_long_tail_heads
from ltdet2.config.schedules import set_phase_length
from ltdet2.data import ExemplarSetBuilder
from ltdet2.data.samplers import STEPWISE_HEAD_GROUPS, STEPWISE_TAIL_GROUPS, stepwise_repeat_factor_sampler
from ltdet2.engine import make_phase
from ltdet2.modeling import TeacherStudentRCNN
from ltdet2.modeling.distillers import MaskedFeatureDistillation, SharedRoIKLDistillation

# The "class-specific" parts that train in both steps (reference §2.5, our R-CNN mapping): the classifier
# (the paper's class head) and the FPN (its class-specific input projections). Box regression, RPN, box head
# and ResNet stay frozen, as the official code freezes its box heads and transformer.
STEPWISE_TRAINABLE = ["roi_heads.box_predictor.cls_score.", "backbone.fpn_"]
HEAD_MIN_IMAGES = 30  # head classes: in at least 30 training images (paper Sec. 3.1, Tab. 5)
# quotas per class (paper Tab. 6 / 7): D_head 200 per head class + 30 per tail class; D_tail 50 per head class
# + every tail annotation
D_HEAD_QUOTAS = dict(head_quota=200, tail_quota=30)
D_TAIL_QUOTAS = dict(head_quota=50, tail_quota=None)
# The masked feature distillation's weight. The paper's (and the official code's) lambda_fm = 1 is for Deformable
# DETR's GroupNorm-ed input projections trained with AdamW at 2e-4. On an R-CNN's unnormalised FPN outputs with SGD
# at 0.02 it diverges within a few steps (measured on LT-Shapes: the loss grows 0.03 -> 6 -> 1000 -> NaN from the
# head expert's weights; 0.1 still creeps up; 0.01 stays flat), so ltdet2's R-CNN default is 0.01 (ours).
PAPER_FEATURE_WEIGHT = 1.0
FEATURE_WEIGHT = 0.01


def scaled_groups(groups, scale):
    """Repeat-factor groups with every threshold multiplied by ``scale``: the official thresholds (0.003,
    0.0015) are fractions of an LVIS-sized set; a set ``scale`` times smaller needs them ``scale`` times
    larger for the same class sizes (in images) to be oversampled."""
    return [dict(g, threshold=g["threshold"] * scale) if "threshold" in g else dict(g) for g in groups]


def smooth_tail_sets(source, *, prefix, quota_scale=1.0, threshold_scale=1.0):
    """The options of :func:`use_smooth_tail_set` for D_head and D_tail (a pair of dicts), both drawn from ``source``
    and scored by phase ``pretrain``, named ``<prefix>_d_head`` / ``<prefix>_d_tail``: the paper's quotas times
    ``quota_scale`` (D_tail keeps every tail annotation) and the official RFS groups with thresholds times
    ``threshold_scale``."""
    common = dict(source=source, scores_from_phase="pretrain")
    d_head = dict(
        common,
        name=f"{prefix}_d_head",
        head_quota=round(D_HEAD_QUOTAS["head_quota"] * quota_scale),
        tail_quota=round(D_HEAD_QUOTAS["tail_quota"] * quota_scale),
        groups=scaled_groups(STEPWISE_HEAD_GROUPS, threshold_scale),
    )
    d_tail = dict(
        common,
        name=f"{prefix}_d_tail",
        head_quota=round(D_TAIL_QUOTAS["head_quota"] * quota_scale),
        tail_quota=None,
        groups=scaled_groups(STEPWISE_TAIL_GROUPS, threshold_scale),
    )
    return d_head, d_tail


def use_smooth_tail_set(
    phase,
    *,
    name,
    source,
    scores_from_phase,
    head_quota,
    tail_quota,
    groups,
    step_rfs=True,
    min_images=HEAD_MIN_IMAGES,
    **builder_options,
):
    """Trains ``phase`` on a smooth-tail set: the set ``name`` drawn from ``source`` with ``head_quota`` /
    ``tail_quota`` annotations per head / tail class, scored by phase ``scores_from_phase``'s final model,
    built (once) in the phase's folder before it trains; with ``step_rfs``, the step-wise repeat-factor
    sampler (``groups``) over the set, the groups chosen by ``source``'s image counts."""
    builder = L(ExemplarSetBuilder)(
        name=name,
        source=source,
        scores_from_phase=scores_from_phase,
        head_quota=head_quota,
        tail_quota=tail_quota,
        min_images=min_images,
        **builder_options,
    )
    phase["train"].derived_datasets = list(phase["train"].get("derived_datasets") or []) + [builder]
    phase["dataloader"].train.dataset.names = name
    if step_rfs:
        phase["dataloader"].train.sampler = L(stepwise_repeat_factor_sampler)(
            dataset_dicts="${..dataset}", groups=copy.deepcopy(list(groups)), image_count_from=source
        )
    else:  # Detectron2's default TrainingSampler
        phase["dataloader"].train.pop("sampler", None)
    return phase


def add_head_expert(phase, **set_options):
    """Step 1: fine-tune the class-specific parts on D_head (head-class expert); ``set_options``: those of
    :func:`use_smooth_tail_set` (default groups: the official D_head sampler's)."""
    set_options.setdefault("groups", STEPWISE_HEAD_GROUPS)
    use_smooth_tail_set(phase, **{**D_HEAD_QUOTAS, **set_options})
    phase["train"].trainable = STEPWISE_TRAINABLE
    return phase


def add_knowledge_transfer(
    phase,
    *,
    teacher_from_phase,
    classes_from_dataset,
    feature_weight=FEATURE_WEIGHT,
    kl_weight=0.1,
    temperature=1.0,
    min_images=HEAD_MIN_IMAGES,
    **set_options,
):
    """Step 2: the unified model (initialised from the phase before it, the head expert) trains on D_tail with
    the frozen model of ``teacher_from_phase`` as teacher: detection loss + masked feature distillation on
    p2-p5 inside head-class boxes (``feature_weight``: 0.01, ours, see ``FEATURE_WEIGHT``; paper and official
    code 1) + KL on the head-class columns of the student's classifier applied to the teacher's box features of
    the student's RoIs (``kl_weight``, official 0.1, T = ``temperature``). Head classes:
    ``classes_from_dataset``'s (the full training set's)."""
    set_options.setdefault("groups", STEPWISE_TAIL_GROUPS)
    use_smooth_tail_set(phase, **{**D_TAIL_QUOTAS, **set_options})
    model = phase["model"]
    use_long_tail_heads(model)  # keeps the sampled RoIs the KL term reads
    model._target_ = TeacherStudentRCNN
    model.teacher = None  # filled by the phase runner from train.teacher_from_phase
    model.teacher_weights = None
    model.distillers = [
        L(MaskedFeatureDistillation)(
            classes_from_dataset=classes_from_dataset, min_images=min_images, weight=feature_weight
        ),
        L(SharedRoIKLDistillation)(
            classes_from_dataset=classes_from_dataset,
            min_images=min_images,
            weight=kl_weight,
            temperature=temperature,
        ),
    ]
    phase["train"].teacher_from_phase = teacher_from_phase
    phase["train"].trainable = STEPWISE_TRAINABLE
    return phase


def stepwise_phases(
    model,
    dataloader,
    optimizer,
    lr_multiplier,
    train,
    *,
    source,
    head_iters=None,
    transfer_iters=None,
    warmup_iters,
    checkpoint_period,
    head_epochs=None,
    transfer_epochs=None,
    quota_scale=1.0,
    threshold_scale=1.0,
):
    """The step-wise phases: ``pretrain`` (``model`` ... ``train`` as given, on ``source``); ``head_expert``, from
    it, ``head_iters`` on D_head at 0.1x the base lr (paper: 1 epoch at 0.1x); ``transfer`` ``transfer_iters`` on
    D_tail at the base lr, x0.1 halfway (paper: 2 epochs, x0.1 after the first), teacher = the head expert. Either
    length may be given instead in epochs of the phase's set (``head_epochs`` / ``transfer_epochs``), counted when
    the set is built (:func:`~ltdet2.config.schedules.set_phase_length`). The paper's quotas and the official RFS
    thresholds, times ``quota_scale`` / ``threshold_scale`` for a set of another size. Returns the ``phases``
    mapping."""
    pretrain = make_phase(
        model=model, dataloader=dataloader, optimizer=optimizer, lr_multiplier=lr_multiplier, train=train
    )

    d_head, d_tail = smooth_tail_sets(
        source, prefix=f"{source}_stepwise", quota_scale=quota_scale, threshold_scale=threshold_scale
    )
    head_expert = make_phase(pretrain)
    add_head_expert(head_expert, **d_head)
    head_expert["train"].init_from_phase = "pretrain"  # explicit: an ablation may insert phases before it
    head_expert["optimizer"].lr = optimizer.lr * 0.1
    set_phase_length(head_expert, iters=head_iters, epochs=head_epochs, warmup_iters=warmup_iters, where="head_expert")

    transfer = make_phase(pretrain)
    add_knowledge_transfer(transfer, teacher_from_phase="head_expert", classes_from_dataset=source, **d_tail)
    set_phase_length(
        transfer,
        iters=transfer_iters,
        epochs=transfer_epochs,
        step_fractions=(0.5,),
        warmup_iters=warmup_iters,
        where="transfer",
    )
    for phase in (head_expert, transfer):
        phase["train"].init_checkpoint = ""  # from the phase before it (the runner gives it), not ImageNet
        phase["train"].checkpointer.period = checkpoint_period
    return dict(pretrain=pretrain, head_expert=head_expert, transfer=transfer)


def lvis_phases(model, dataloader, optimizer, lr_multiplier, train, *, source):
    """The step-wise phases on LVIS with the R-CNN schedule we propose (reference §3; the paper's is Deformable
    DETR's, no R-CNN schedule is published): ``pretrain`` the shared baseline schedule as given; ``head_expert``
    1 epoch of D_head at 0.1x the base lr (paper: 1 epoch at 0.1x); ``transfer`` 2 epochs of D_tail at the base
    lr, x0.1 after the first (paper). Each length is counted in epochs of the set the phase builds, when it is
    built (logged; the official code's epoch is the set's size even with its RFS). The paper's quotas (200 / 30,
    50 / all) and the official step-wise RFS."""
    return stepwise_phases(
        model,
        dataloader,
        optimizer,
        lr_multiplier,
        train,
        source=source,
        head_epochs=1,
        transfer_epochs=2,
        warmup_iters=100,
        checkpoint_period=1000,
    )
