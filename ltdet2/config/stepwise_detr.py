"""The step-wise method (Dong et al., ICCV 2023) on its own detector, two-stage Deformable DETR with box refinement
(:class:`~ltdet2.modeling.meta_arch.DeformableDETR`; reference ``stepwise.md`` §2.5-2.6, issue #31).

Smooth-tail sets scored by the pretrained DETR (its Hungarian-matched queries,
:meth:`~ltdet2.modeling.meta_arch.DeformableDETR.annotation_scores`), step-wise RFS inside each set, a head-class
expert fine-tuned on D_head, and knowledge transfer on D_tail with the frozen expert as teacher
(:class:`~ltdet2.modeling.meta_arch.TeacherStudentDETR`: masked feature distillation on the input projections + KL
over shared object queries). The sets, quotas and RFS groups are those of :mod:`ltdet2.config.stepwise`. Apply them
to the phases of a DETR project (see ``projects/stepwise_detr.py``).
"""

from detectron2.config import LazyCall as L

from ltdet2.config.schedules import set_phase_length
from ltdet2.config.stepwise import (
    D_HEAD_QUOTAS,
    D_TAIL_QUOTAS,
    HEAD_MIN_IMAGES,
    smooth_tail_sets,
    use_smooth_tail_set,
)
from ltdet2.data.samplers import STEPWISE_HEAD_GROUPS, STEPWISE_TAIL_GROUPS
from ltdet2.engine import make_phase
from ltdet2.modeling.distillers import MaskedFeatureDistillation, SharedQueryKLDistillation
from ltdet2.modeling.meta_arch import TeacherStudentDETR
from ltdet2.modeling.meta_arch.teacher_student_detr import input_proj_names

__all__ = [
    "STEPWISE_DETR_TRAINABLE",
    "STEPWISE_DETR_LOSS_WEIGHTS",
    "HEAD_EXPERT_LR_FACTOR",
    "add_detr_head_expert",
    "add_detr_knowledge_transfer",
    "stepwise_detr_phases",
    "lvis_detr_phases",
]

# The official trainable set of both steps (``main.py:173-191``: a name containing ``class_embed`` or
# ``input_proj``): every class head (one per decoder layer and the two-stage encoder's proposal head, which
# ``named_parameters`` names ``detr.model.decoder.class_embed.{0..L}``: shared with ``detr.class_embed``) and the 4
# input projections (1x1 conv + GroupNorm per backbone level, the 3x3 stride-2 conv of the extra level). Box heads,
# transformer and backbone stay frozen.
STEPWISE_DETR_TRAINABLE = [r"detr\.model\.decoder\.class_embed\.", r"detr\.model\.input_proj\."]
# The step-wise code's loss weights (focal classification 3, L1 5, GIoU 2; Deformable DETR's default is 2, 5, 2), in
# every phase, the pretrain included (its ``main_base.py``).
STEPWISE_DETR_LOSS_WEIGHTS = dict(cls=3.0, bbox=5.0, giou=2.0)
HEAD_EXPERT_LR_FACTOR = 0.1  # FT at 0.1x the base lr (paper: 2e-5 against 2e-4)
FEATURE_WEIGHT = 1.0  # lambda_fm (paper and official code)
KL_WEIGHT = 0.1  # lambda_cls per decoder layer (official main.py:111)


def add_detr_head_expert(phase, *, iters=None, epochs=None, lr=None, **set_options):
    """Step 1 on Deformable DETR: fine-tune the class heads and input projections (:data:`STEPWISE_DETR_TRAINABLE`)
    on D_head for ``iters`` (or ``epochs`` of D_head, counted when it is built; paper: 1 epoch) at ``lr`` (None:
    :data:`HEAD_EXPERT_LR_FACTOR` x the phase's optimizer lr, the paper's 2e-5 from 2e-4), constant (no warm-up, as
    DETR); ``set_options``: those of
    :func:`~ltdet2.config.stepwise.use_smooth_tail_set` (default quotas 200 / 30 and the official D_head RFS)."""
    set_options.setdefault("groups", STEPWISE_HEAD_GROUPS)
    use_smooth_tail_set(phase, **{**D_HEAD_QUOTAS, **set_options})
    phase["train"].trainable = list(STEPWISE_DETR_TRAINABLE)
    phase["optimizer"].lr = lr if lr is not None else phase["optimizer"].lr * HEAD_EXPERT_LR_FACTOR
    return set_phase_length(phase, iters=iters, epochs=epochs, where="add_detr_head_expert")


def add_detr_knowledge_transfer(
    phase,
    *,
    teacher_from_phase,
    iters=None,
    epochs=None,
    classes_from_dataset,
    feature_weight=FEATURE_WEIGHT,
    kl_weight=KL_WEIGHT,
    temperature=1.0,
    min_images=HEAD_MIN_IMAGES,
    **set_options,
):
    """Step 2 on Deformable DETR: the unified model (initialised from the phase before it, the head expert) trains
    the same parts on D_tail for ``iters`` (or ``epochs`` of D_tail, counted when it is built; paper: 2 epochs, lr
    x0.1 after the first: here x0.1 halfway) at the phase's lr, with the
    frozen model of ``teacher_from_phase`` as teacher (:class:`TeacherStudentDETR`): its detection loss + masked
    feature distillation on the ``input_proj`` outputs inside head-class boxes (``feature_weight``, paper 1) + KL
    over the shared object queries on the head-class columns of every decoder layer (``kl_weight`` each, official
    0.1; T = ``temperature``). Head classes: ``classes_from_dataset``'s (the full training set's);
    ``set_options``: those of :func:`~ltdet2.config.stepwise.use_smooth_tail_set` (default quotas 50 / all and the
    official D_tail RFS)."""
    set_options.setdefault("groups", STEPWISE_TAIL_GROUPS)
    use_smooth_tail_set(phase, **{**D_TAIL_QUOTAS, **set_options})
    model = phase["model"]
    model._target_ = TeacherStudentDETR
    model.teacher = None  # filled by the phase runner from train.teacher_from_phase
    model.teacher_weights = None
    model.distillers = [
        L(MaskedFeatureDistillation)(
            in_features=input_proj_names(model.get("num_feature_levels", 4)),
            classes_from_dataset=classes_from_dataset,
            min_images=min_images,
            weight=feature_weight,
        ),
        L(SharedQueryKLDistillation)(
            classes_from_dataset=classes_from_dataset, min_images=min_images, weight=kl_weight, temperature=temperature
        ),
    ]
    phase["train"].teacher_from_phase = teacher_from_phase
    phase["train"].trainable = list(STEPWISE_DETR_TRAINABLE)
    return set_phase_length(
        phase, iters=iters, epochs=epochs, step_fractions=(0.5,), where="add_detr_knowledge_transfer"
    )


def stepwise_detr_phases(
    model,
    dataloader,
    optimizer,
    lr_multiplier,
    train,
    *,
    source,
    checkpoint_period,
    head_iters=None,
    transfer_iters=None,
    head_epochs=None,
    transfer_epochs=None,
    quota_scale=1.0,
    threshold_scale=1.0,
    loss_weights=STEPWISE_DETR_LOSS_WEIGHTS,
    control=False,
):
    """The step-wise phases on Deformable DETR: ``pretrain`` (``model`` ... ``train`` as given, on ``source``);
    ``head_expert``, from it, ``head_iters`` on D_head (:func:`add_detr_head_expert`); ``transfer``
    ``transfer_iters`` on D_tail (:func:`add_detr_knowledge_transfer`), teacher = the head expert; either length
    may be given instead in epochs of the phase's set (``head_epochs`` / ``transfer_epochs``, counted when it is
    built). Both sets are scored by the pretrained DETR. The paper's quotas and the official RFS thresholds, times
    ``quota_scale`` / ``threshold_scale`` for a set of another size; ``loss_weights`` in every phase (the step-wise
    code's).

    ``control`` adds, after the pretrain, the ablation's control: the pretrain continued on all of ``source`` with
    its own loss, the same trainable set and ``head_iters + transfer_iters`` iterations at the base lr (x0.1
    halfway, as the transfer; the lengths in iterations). Returns the ``phases`` mapping."""
    if control and (head_iters is None or transfer_iters is None):
        raise ValueError(
            "stepwise_detr_phases: the control trains head_iters + transfer_iters iterations; give both in "
            f"iterations (got head_iters={head_iters!r}, transfer_iters={transfer_iters!r})"
        )
    model.loss_weights = dict(loss_weights)
    pretrain = make_phase(
        model=model, dataloader=dataloader, optimizer=optimizer, lr_multiplier=lr_multiplier, train=train
    )

    d_head, d_tail = smooth_tail_sets(
        source, prefix=f"{source}_stepwise_detr", quota_scale=quota_scale, threshold_scale=threshold_scale
    )
    head_expert = make_phase(pretrain)
    add_detr_head_expert(head_expert, iters=head_iters, epochs=head_epochs, **d_head)
    head_expert["train"].init_from_phase = "pretrain"  # explicit: the control may come before it

    transfer = make_phase(pretrain)
    add_detr_knowledge_transfer(
        transfer,
        iters=transfer_iters,
        epochs=transfer_epochs,
        teacher_from_phase="head_expert",
        classes_from_dataset=source,
        **d_tail,
    )
    transfer["train"].init_from_phase = "head_expert"
    phases = dict(pretrain=pretrain)
    if control:
        total = head_iters + transfer_iters
        control_phase = make_phase(pretrain)
        control_phase["train"].init_from_phase = "pretrain"
        control_phase["train"].trainable = list(STEPWISE_DETR_TRAINABLE)
        set_phase_length(control_phase, iters=total, step_fractions=(0.5,), where="control")
        phases["control"] = control_phase
    phases.update(head_expert=head_expert, transfer=transfer)
    for name, phase in phases.items():
        if name != "pretrain":
            phase["train"].init_checkpoint = ""  # from the phase the runner gives, not ImageNet
            phase["train"].checkpointer.period = checkpoint_period
    return phases


def lvis_detr_phases(model, dataloader, optimizer, lr_multiplier, train, *, source, checkpoint_period=1000):
    """The step-wise phases on LVIS with the paper's schedule (reference §3): ``pretrain`` as given; ``head_expert``
    1 epoch of D_head at 0.1x the base lr (2e-5); ``transfer`` 2 epochs of D_tail at the base lr (2e-4), x0.1 after
    the first. Each length is counted in epochs of the set the phase builds, when it is built (logged; the official
    code's epoch is the set's size even with its RFS). The paper's quotas (200 / 30, 50 / all) and the official
    step-wise RFS."""
    return stepwise_detr_phases(
        model,
        dataloader,
        optimizer,
        lr_multiplier,
        train,
        source=source,
        head_epochs=1,
        transfer_epochs=2,
        checkpoint_period=checkpoint_period,
    )
