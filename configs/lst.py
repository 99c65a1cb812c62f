# LST's pieces (Hu et al., CVPR 2020, "Learning to Segment the Tail"), to build the class-incremental phases of
# any Mask R-CNN project (see projects/lst.py): classes sorted by training instance count, a base phase on the top
# `base` classes, then `num_phases` phases that add the next bins, each trained on its new classes' images plus an
# instance-level balanced replay of the old classes (ltdet2.data.IncrementalPhaseBuilder), with the network
# expanded (old rows copied), the ResNet frozen, and the old classes' cosine logits distilled from the frozen
# previous phase on the new classes' boxes. The box branch is LST's: the cosine classifier (scale 10, learnable)
# on the last FC without its ReLU, the regressor on ReLU of it; the mask head is MaskX-style.
import copy

import numpy as np

from detectron2.config import LazyCall as L

from ltdet2.data import IncrementalPhaseBuilder, ValidityDatasetMapper
from ltdet2.engine import make_phase
from ltdet2.modeling import (
    CosineClassifier,
    LinearOutputConvFCHead,
    OldClassLogitDistillation,
    TeacherStudentRCNN,
    TransferMaskHead,
)

from .long_tail import box_feature_dim, use_long_tail_heads

# incremental phases: the whole ResNet frozen (official FREEZE_CONV_BODY_AT 5; the paper's "top three layers"
# is the option LST_TOP3_FROZEN_TRAINABLE); FPN, RPN, box and mask heads train
LST_INCREMENTAL_TRAINABLE = ["backbone.fpn_", "proposal_generator.", "roi_heads."]
LST_TOP3_FROZEN_TRAINABLE = [r"backbone\.bottom_up\.(stem|res2)\.", *LST_INCREMENTAL_TRAINABLE]


def phase_class_counts(num_classes, *, base, num_phases):
    """K_t, the classes seen after each phase: ``base``, then the bins of ``np.array_split`` over the rest
    (the split :func:`ltdet2.data.incremental_class_phases` makes)."""
    sizes = [len(b) for b in np.array_split(np.arange(num_classes - base), num_phases)] if num_phases else []
    return [base + sum(sizes[:t]) for t in range(num_phases + 1)]


def use_lst_model(model, *, num_classes, agnostic_mlp_dim=None, cosine_scale=10.0):
    """LST's Mask R-CNN with ``num_classes`` classes: the box head without the last ReLU, the cosine classifier
    (learnable scale, init ``cosine_scale``), the regressor on ReLU(fc7), and the MaskX-style mask head whose
    class-agnostic branch is ``agnostic_mlp_dim`` (None: the official single layer, ~157M parameters at
    LVIS size; an int: a smaller two-layer MLP, ours)."""
    use_long_tail_heads(model)
    roi_heads = model.roi_heads
    roi_heads.num_classes = num_classes
    roi_heads.box_head._target_ = LinearOutputConvFCHead
    roi_heads.box_predictor.classifier = L(CosineClassifier)(
        input_dim=box_feature_dim(model), num_classes=num_classes, scale=cosine_scale, learnable_scale=True
    )
    roi_heads.box_predictor.regressor_input_relu = True
    roi_heads.mask_head._target_ = TransferMaskHead
    roi_heads.mask_head.num_classes = num_classes
    roi_heads.mask_head.classifier_dim = box_feature_dim(model)
    roi_heads.mask_head.agnostic_mlp_dim = agnostic_mlp_dim
    return model


def use_phase_datasets(dataloader, *, name, source, source_val, base, num_phases, phase, **builder_options):
    """Trains on phase ``phase``'s entries and evaluates on its val set (classes seen so far), both built by an
    :class:`~ltdet2.data.IncrementalPhaseBuilder` that the returned list holds (for ``train.derived_datasets``)."""
    builder = L(IncrementalPhaseBuilder)(
        name=name,
        source=source,
        source_val=source_val,
        base=base,
        num_phases=num_phases,
        phase=phase,
        **builder_options,
    )
    dataloader.train.dataset.names = name
    dataloader.train.mapper._target_ = ValidityDatasetMapper  # replayed images: only their class is valid
    dataloader.test.dataset.names = f"{name}_val"
    dataloader.evaluator.instance_buckets = True  # LST reports AP by training instance-count buckets
    return [builder]


def lst_phases(
    model,
    dataloader,
    optimizer,
    lr_multiplier,
    train,
    *,
    num_classes,
    source,
    source_val,
    base,
    num_phases,
    incremental_iters,
    incremental_schedule,
    incremental_lr,
    incremental_rois=None,
    distill=True,
    distill_mode="l2",
    trainable=LST_INCREMENTAL_TRAINABLE,
    agnostic_mlp_dim=None,
    name_prefix=None,
    **builder_options,
):
    """The ``phases`` of LST: ``base`` (``model`` / ``optimizer`` / ``lr_multiplier`` / ``train`` as given, on
    the top ``base`` classes), then ``incremental_1`` ... ``incremental_T``, each ``incremental_iters`` long
    with ``incremental_schedule(iters)`` at ``incremental_lr``, ``incremental_rois`` sampled RoIs per image
    (None: as given), started from the previous phase's model with its classes expanded, the ResNet frozen
    (``trainable``), and (``distill``) the previous phase as the teacher of the old classes' logits.
    ``builder_options``: those of :class:`~ltdet2.data.IncrementalPhaseBuilder` (replay, new_images, seed)."""
    name_prefix = name_prefix or f"{source}_lst"
    counts = phase_class_counts(num_classes, base=base, num_phases=num_phases)
    phases = {}
    for t, classes_seen in enumerate(counts):
        phase_model = use_lst_model(copy.deepcopy(model), num_classes=classes_seen, agnostic_mlp_dim=agnostic_mlp_dim)
        phase = make_phase(model=phase_model, dataloader=dataloader, optimizer=optimizer, train=train)
        phase_model = phase["model"]  # make_phase copies
        phase["lr_multiplier"] = copy.deepcopy(lr_multiplier)
        phase["train"].derived_datasets = use_phase_datasets(
            phase["dataloader"],
            name=f"{name_prefix}_phase{t}",
            source=source,
            source_val=source_val,
            base=base,
            num_phases=num_phases,
            phase=t,
            **builder_options,
        )
        if t > 0:
            phase["train"].init_checkpoint = ""  # the runner gives the previous phase's final model
            phase["train"].max_iter = incremental_iters
            phase["train"].expand_classes = dict(old_num_classes=counts[t - 1])
            phase["train"].trainable = list(trainable)
            phase["optimizer"].lr = incremental_lr
            phase["lr_multiplier"] = incremental_schedule(incremental_iters)
            if incremental_rois is not None:
                phase_model.roi_heads.batch_size_per_image = incremental_rois
            if distill:
                phase_model._target_ = TeacherStudentRCNN
                phase_model.teacher = None  # the previous phase's model, filled by the runner
                phase_model.teacher_weights = None
                phase_model.distillers = [
                    L(OldClassLogitDistillation)(num_old_classes=counts[t - 1], mode=distill_mode, weight=1.0)
                ]
                phase["train"].teacher_from_phase = list(phases)[-1]
        phases["base" if t == 0 else f"incremental_{t}"] = phase
    return phases


def lvis_lst_phases(
    model, dataloader, optimizer, train, *, num_classes, num_train_images, source, source_val, phase_images
):
    """LST's phases with the paper's LVIS settings (Sec. 4.1): batch 8; base on the top 270 classes at lr 0.01
    for 10 epochs of ``num_train_images`` (steps at 6 and 8, 512 RoIs per image); then 6 phases at lr 0.002 for
    10 epochs of ``phase_images`` (an estimate of a phase's entries; the builders log the real ones) with a step
    after 6, 100 RoIs per image. The paper starts from a COCO Mask R-CNN; ``train.init_checkpoint`` decides."""
    from .common.schedules import epochs_to_iters, multi_step

    batch_size = 8  # the paper's

    def iters(epochs, num_images):
        return epochs_to_iters(epochs, num_images, batch_size)

    dataloader.train.total_batch_size = batch_size
    optimizer.lr = 0.01
    base_iters = iters(10, num_train_images)  # the base classes are in nearly every image
    train.max_iter = base_iters
    model.roi_heads.batch_size_per_image = 512  # paper: 512 RoIs at 1:3 in the base phase
    base_schedule = multi_step(
        base_iters, steps=(iters(6, num_train_images), iters(8, num_train_images)), warmup_iters=1000
    )
    return lst_phases(
        model,
        dataloader,
        optimizer,
        base_schedule,
        train,
        num_classes=num_classes,
        source=source,
        source_val=source_val,
        base=270,
        num_phases=6,
        incremental_iters=iters(10, phase_images),
        incremental_schedule=lambda n: multi_step(n, steps=(n * 6 // 10,), warmup_iters=0),
        incremental_lr=0.002,
        incremental_rois=100,
    )
