"""LST's pieces (Hu et al., CVPR 2020, "Learning to Segment the Tail"), to build the class-incremental phases of any
Mask R-CNN project (see ``projects/lst.py``).

Classes sorted by training instance count, a base phase on the top ``base`` classes, then ``num_phases`` phases that
add the next bins, each trained on its new classes' images plus an instance-level balanced replay of the old classes
(:class:`ltdet2.data.IncrementalPhaseBuilder`), with the network expanded (old rows copied), the ResNet frozen, and
the old classes' cosine logits distilled from the frozen previous phase on the new classes' boxes. The box branch is
LST's: the cosine classifier (scale 10, learnable) on the last FC without its ReLU, the regressor on ReLU of it; the
mask head is MaskX-style. Optionally (off by default) the meta weight generator trains with each incremental phase
and writes the new classes' rows at its end. The replay is fixed for each phase (paper) unless ``replay_resampling``
asks for a new draw each epoch (official code).
"""

import copy
import math

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from ltdet2.config.long_tail import box_feature_dim, use_long_tail_heads
from ltdet2.config.schedules import multi_step
from ltdet2.data import IncrementalPhaseBuilder, ValidityDatasetMapper
from ltdet2.data.incremental import ClassIncrementalSplit
from ltdet2.data.lt_shapes import NUM_CLASSES as LT_SHAPES_NUM_CLASSES
from ltdet2.data.samplers import replay_draw_sampler
from ltdet2.engine import make_phase
from ltdet2.engine.epochs import warmup_multi_step
from ltdet2.hooks import ClassExpansion, WriteGeneratedWeights
from ltdet2.hooks.weight_generation import WEIGHT_GENERATION_OPTIONS
from ltdet2.modeling import (
    CosineClassifier,
    LinearOutputConvFCHead,
    MetaWeightGeneratorTerm,
    OldClassLogitDistillation,
    TeacherStudentRCNN,
    TransferMaskHead,
)

# incremental phases: the whole ResNet frozen (official FREEZE_CONV_BODY_AT 5; the paper's "top three layers"
# is the option LST_TOP3_FROZEN_TRAINABLE); FPN, RPN, box and mask heads train
LST_INCREMENTAL_TRAINABLE = ["backbone.fpn_", "proposal_generator.", "roi_heads."]
LST_TOP3_FROZEN_TRAINABLE = [r"backbone\.bottom_up\.(stem|res2)\.", *LST_INCREMENTAL_TRAINABLE]
LT_SHAPES_INCREMENTAL_ITERS = 100
# lst_phases(weight_generator=...): MetaWeightGeneratorTerm's options (the class sizes come from the split)
GENERATOR_TERM_OPTIONS = ("weight", "ema_momentum", "attention_scale")


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


def replay_draw_options(replay_resampling, epochs=None):
    """``lst_phases``' ``replay_resampling`` as :class:`~ltdet2.data.IncrementalPhaseBuilder` options of an
    incremental phase ({} when the replay is fixed). The schedule is read from the phase itself (interpolations
    from ``train.derived_datasets[i]``: ``train.max_iter`` and ``dataloader.train.total_batch_size``), so an
    override of either reaches the number of draws; a phase whose length is ``epochs`` epochs of its set gets one
    draw per epoch."""
    if replay_resampling is False:
        return {}
    if replay_resampling is True and epochs is not None:
        draws = int(math.ceil(epochs))
        return dict(replay_draws=draws) if draws >= 2 else {}
    if replay_resampling is True:
        return dict(
            replay_draws="epochs",
            schedule_iters="${...max_iter}",
            schedule_batch_size="${....dataloader.train.total_batch_size}",
        )
    if isinstance(replay_resampling, int) and replay_resampling >= 2:
        return dict(replay_draws=int(replay_resampling))
    raise ValueError(
        "lst_phases: replay_resampling must be False (the replay fixed for the phase), True (a new draw each epoch "
        f"of the phase's schedule) or an int >= 2 (that many draws, cycled), got {replay_resampling!r}"
    )


def split_generator_options(options):
    """``lst_phases``' ``weight_generator`` dict as (the term's options, the phase-end write's)."""
    options = dict(options)
    unknown = sorted(set(options) - set(GENERATOR_TERM_OPTIONS) - set(WEIGHT_GENERATION_OPTIONS))
    if unknown:
        raise ValueError(
            f"lst_phases: weight_generator has unknown options {unknown}; known: the term's "
            f"{list(GENERATOR_TERM_OPTIONS)} and the phase-end write's {list(WEIGHT_GENERATION_OPTIONS)}"
        )
    term = {k: v for k, v in options.items() if k in GENERATOR_TERM_OPTIONS}
    return term, {k: v for k, v in options.items() if k in WEIGHT_GENERATION_OPTIONS}


def add_weight_generator(phase, *, base, num_old_classes, num_classes, options):
    """LST's meta weight generator in an incremental phase with a teacher-student model: its episodic term in
    ``model.distillers`` (added to ``train.trainable``, so the generator trains) and the phase-end write of the
    new classes' rows (:class:`~ltdet2.hooks.WriteGeneratedWeights` in ``train.hooks``)."""
    term, write = split_generator_options(options)
    model = phase["model"]
    # the generator trains with the phase: its term's parameters must match train.trainable
    phase["train"].trainable = [*phase["train"].trainable, rf"distillers\.{len(model.distillers)}\."]
    model.distillers.append(
        L(MetaWeightGeneratorTerm)(
            num_base_classes=base,
            num_old_classes=num_old_classes,
            num_classes=num_classes,
            feature_dim=box_feature_dim(model),
            **term,
        )
    )
    add_hook(phase["train"], L(WriteGeneratedWeights)(**write))
    return phase


def add_hook(train, hook):
    """Appends ``hook`` (a LazyCall node) to ``train.hooks``."""
    train["hooks"] = [*(train.get("hooks", None) or []), hook]
    return train


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
    incremental_epochs=None,
    incremental_rois=None,
    distill=True,
    distill_mode="l2",
    trainable=LST_INCREMENTAL_TRAINABLE,
    agnostic_mlp_dim=None,
    name_prefix=None,
    weight_generator=None,
    chain_name="incremental",
    from_phase=None,
    replay_resampling=False,
    **builder_options,
):
    """The ``phases`` of LST: ``base`` (``model`` / ``optimizer`` / ``lr_multiplier`` / ``train`` as given, on
    the top ``base`` classes), then ``incremental_1`` ... ``incremental_T``, each ``incremental_iters`` long
    (or, with ``incremental_iters=None``, ``incremental_epochs`` epochs of its phase set, counted when the set
    is built: ``train.epochs``) with ``incremental_schedule(iters)`` (its argument is then
    ``"${..train.max_iter}"``) at ``incremental_lr``, ``incremental_rois`` sampled RoIs per image
    (None: as given), started from the previous phase's model with its classes expanded, the ResNet frozen
    (``trainable``), and (``distill``) the previous phase as the teacher of the old classes' logits.

    ``weight_generator``: None (off, the default), or a dict of
    :class:`~ltdet2.modeling.MetaWeightGeneratorTerm` options (``weight``, ``ema_momentum``,
    ``attention_scale``) and of the phase-end write (``row_norm``, ``batch_size``, ``num_workers``;
    :class:`ltdet2.hooks.WriteGeneratedWeights`): every incremental phase then trains the generator and writes its
    new classes' rows at its end. It needs ``distill`` (the term runs in :class:`TeacherStudentRCNN`, which
    always builds its teacher when it has terms).

    ``chain_name`` / ``from_phase``, for ablations of several chains in one project: with ``from_phase`` (an
    earlier phase of the project with the base classes, e.g. ``"base"``) only ``<chain_name>_1..T`` are
    returned, the first started from (and distilled from) ``from_phase``, each later one from its predecessor
    in the chain (named explicitly: other chains may lie between them); their datasets are registered as
    ``<name_prefix>_<chain_name>_phase<t>`` (every phase builds its own in its folder).
    ``replay_resampling``: False (default, paper: each incremental phase's balanced replay is one draw, fixed for
    the phase), True (official code: a new draw each epoch, an epoch being the new-class entries + one draw; the
    phase set holds one draw per epoch of ``train.max_iter x dataloader.train.total_batch_size``) or an int E >= 2
    (E draws, cycled). When on, the incremental phases train with
    :class:`~ltdet2.data.samplers.ReplayDrawSampler` (``dataloader.train.sampler``; on resume its stream restarts
    from the seed, as Detectron2's samplers, and ``train.resume_data`` decides whether the trained batches are
    skipped).

    ``builder_options``: those of :class:`~ltdet2.data.IncrementalPhaseBuilder` (replay, new_images, seed)."""
    if "replay_draws" in builder_options:
        raise ValueError(
            "lst_phases: set replay_resampling, not replay_draws: the phase set's draws and the phase's sampler go "
            "together"
        )
    if (incremental_iters is None) == (incremental_epochs is None):
        raise ValueError(
            "lst_phases: give the incremental phases' length either in iterations (incremental_iters) or in epochs "
            f"of their phase sets (incremental_epochs), not both or neither: got {incremental_iters!r}, "
            f"{incremental_epochs!r}"
        )
    replay_options = replay_draw_options(replay_resampling, epochs=incremental_epochs)
    if weight_generator is not None:
        if not distill:
            raise ValueError(
                "lst_phases: weight_generator needs distill=True: its term runs in a TeacherStudentRCNN, which "
                "builds the previous phase as its teacher whenever it has terms (there is no teacher-less mode)"
            )
        split_generator_options(weight_generator)  # unknown keys: refused here, not when a phase is built
    name_prefix = name_prefix or f"{source}_lst"
    dataset_prefix = name_prefix if chain_name == "incremental" else f"{name_prefix}_{chain_name}"
    split = ClassIncrementalSplit(num_classes, base, num_phases)
    phases = {}
    previous = from_phase
    for t, classes_seen in enumerate(split.class_counts):
        if t == 0 and from_phase is not None:
            continue
        phase_model = use_lst_model(copy.deepcopy(model), num_classes=classes_seen, agnostic_mlp_dim=agnostic_mlp_dim)
        phase = make_phase(model=phase_model, dataloader=dataloader, optimizer=optimizer, train=train)
        phase_model = phase["model"]  # make_phase copies
        phase["lr_multiplier"] = copy.deepcopy(lr_multiplier)
        phase["train"].derived_datasets = use_phase_datasets(
            phase["dataloader"],
            name=f"{dataset_prefix}_phase{t}",
            source=source,
            source_val=source_val,
            base=base,
            num_phases=num_phases,
            phase=t,
            **builder_options,
            **(replay_options if t > 0 else {}),
        )
        if t > 0 and replay_options:
            phase["dataloader"].train.sampler = L(replay_draw_sampler)(dataset_dicts="${..dataset}")
        if t > 0:
            phase["train"].init_checkpoint = ""  # the runner gives the previous phase's final model
            if from_phase is not None:
                phase["train"].init_from_phase = previous
            phase["train"].max_iter = incremental_iters
            phase["train"].epochs = incremental_epochs
            # the previous phase's model, expanded to this phase's classes (seeded with this phase's train.seed)
            add_hook(phase["train"], L(ClassExpansion)(old_num_classes=split.old_num_classes(t), seed="${...seed}"))
            phase["train"].trainable = list(trainable)
            phase["train"].init_reinitialize = []  # the previous phase's model loads whole (expanded)
            phase["optimizer"].lr = incremental_lr
            phase["lr_multiplier"] = incremental_schedule(
                incremental_iters if incremental_iters is not None else "${..train.max_iter}"
            )
            if incremental_rois is not None:
                phase_model.roi_heads.batch_size_per_image = incremental_rois
            if distill:
                phase_model._target_ = TeacherStudentRCNN
                phase_model.teacher = None  # the previous phase's model, filled by the runner
                phase_model.teacher_weights = None
                phase_model.distillers = [
                    L(OldClassLogitDistillation)(
                        num_old_classes=split.old_num_classes(t), mode=distill_mode, weight=1.0
                    )
                ]
                phase["train"].teacher_from_phase = previous
                if weight_generator is not None:
                    add_weight_generator(
                        phase,
                        base=base,
                        num_old_classes=split.old_num_classes(t),
                        num_classes=classes_seen,
                        options=weight_generator,
                    )
        name = "base" if t == 0 else f"{chain_name}_{t}"
        phases[name] = phase
        previous = name
    return phases


# The paper's initialisation (Sec. 4.1): Mask R-CNN R-50-FPN trained on COCO, from Detectron2's model zoo; its
# class-specific box predictor (81 classes) is re-initialised for the base classes, the rest loads (the box head's
# FCs and the mask head's convolutions included; LST's cosine / MaskX-style parts that COCO lacks start fresh).
COCO_MASK_RCNN = "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x/137260431/model_final_a54504.pkl"
COCO_REINITIALIZE = [r"roi_heads\.box_predictor\."]
IMAGENET_R50 = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
LST_LVIS_INITS = ("coco", "imagenet")


def use_lst_lvis_init(train, init):
    """The base phase's initial weights: ``"coco"`` (the paper's: :data:`COCO_MASK_RCNN`, its box predictor
    re-initialised) or ``"imagenet"`` (the ResNet-50 alone, as the other LVIS projects)."""
    if init not in LST_LVIS_INITS:
        raise ValueError(f"lvis_lst_phases: init={init!r} must be one of {LST_LVIS_INITS}")
    train.init_checkpoint = COCO_MASK_RCNN if init == "coco" else IMAGENET_R50
    train.init_reinitialize = list(COCO_REINITIALIZE) if init == "coco" else []


def lvis_lst_phases(
    model,
    dataloader,
    optimizer,
    train,
    *,
    num_classes,
    source,
    source_val,
    init="coco",
    **options,
):
    """LST's phases with the paper's LVIS settings (Sec. 4.1): batch 8 at the single scale 800 (max 1333); the
    base phase on the top 270 classes at lr 0.01 for 10 epochs of its phase set (steps after 6 and 8 epochs,
    1,000 warm-up iterations, 512 RoIs per image), from a COCO Mask R-CNN (``init="coco"``, the paper's) or
    ImageNet (``init="imagenet"``); then 6 phases at lr 0.002 for 10 epochs of their phase sets (a step after 6),
    100 RoIs per image. Every phase's length is counted in epochs of the set it builds
    (``train.epochs``, :mod:`ltdet2.engine.epochs`): ``train.max_iter`` is logged when the set is built.
    ``options``: further :func:`lst_phases` arguments, or replacements of these settings (``weight_generator``,
    ``replay_resampling``, ``distill``, ``base``, ...)."""
    dataloader.train.total_batch_size = 8  # the paper's
    dataloader.train.mapper.augmentations = [  # the paper's single training scale
        L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333, sample_style="choice"),
        L(T.RandomFlip)(horizontal=True),
    ]
    optimizer.lr = 0.01
    use_lst_lvis_init(train, init)
    train.max_iter = None  # 10 epochs of the base phase set
    train.epochs = 10
    model.roi_heads.batch_size_per_image = 512  # paper: 512 RoIs at 1:3 in the base phase
    base_schedule = L(warmup_multi_step)(max_iter="${..train.max_iter}", step_fractions=(0.6, 0.8), warmup_iters=1000)
    return lst_phases(
        model,
        dataloader,
        optimizer,
        base_schedule,
        train,
        **{
            "num_classes": num_classes,
            "source": source,
            "source_val": source_val,
            "base": 270,
            "num_phases": 6,
            "incremental_iters": None,
            "incremental_epochs": 10,
            "incremental_schedule": lambda max_iter: L(warmup_multi_step)(
                max_iter=max_iter, step_fractions=(0.6,), warmup_iters=0
            ),
            "incremental_lr": 0.002,
            "incremental_rois": 100,
            **options,
        },
    )


def lt_shapes_lst_phases(model, dataloader, optimizer, lr_multiplier, train, **options):
    """LST's phases on LT-Shapes for a CPU (projects/lst.py, projects/lst_ablation.py): ``base`` on the top 30 of
    the 72 classes (``train`` / ``lr_multiplier`` as given: the LT-Shapes schedule), then 3 phases of 14 classes
    (the last one 14 of the 18 rare classes), :data:`LT_SHAPES_INCREMENTAL_ITERS` iterations each at 0.2x the
    base lr (paper: 0.01 -> 0.002) with a step after 60%; the class-agnostic mask MLP 64 wide (the official single
    layer would be ~79M parameters here). ``options``: further :func:`lst_phases` arguments (``weight_generator``,
    ``replay_resampling``, ``distill``, ``chain_name``, ``from_phase``, ...)."""
    return lst_phases(
        model,
        dataloader,
        optimizer,
        lr_multiplier,
        train,
        **{
            "num_classes": LT_SHAPES_NUM_CLASSES,
            "source": "lt_shapes_train",
            "source_val": "lt_shapes_val",
            "base": 30,
            "num_phases": 3,
            "incremental_iters": LT_SHAPES_INCREMENTAL_ITERS,
            "incremental_schedule": lambda iters: multi_step(iters, steps=(iters * 6 // 10,), warmup_iters=10),
            "incremental_lr": optimizer.lr * 0.2,
            "agnostic_mlp_dim": 64,
            **options,
        },
    )
