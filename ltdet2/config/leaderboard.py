"""Phase builders shared by the LT-Shapes leaderboards (v1: ``projects/leaderboard.py``, v2: ``leaderboard_v2.py``).

Every builder returns a new phase (:func:`ltdet2.engine.make_phase`) and leaves its input untouched. Schedules:
a phase trained from scratch has LT-Shapes' shape (x0.1 at 3/4 and 37/40 of its length, warm-up ``min(100, n/2)``);
a fine-tune LOCE's (x0.1 at 1/2 and 5/6, warm-up ``min(10, n/2)``), both over the phase's own length.
"""

from ltdet2.config.bacl import add_classifier_learning, add_representation_learning
from ltdet2.config.loce import LOCE_TRAINABLE, add_memory_warmup
from ltdet2.config.lst import lt_shapes_lst_phases
from ltdet2.config.rio import add_object_replay
from ltdet2.config.schedules import multi_step
from ltdet2.config.stepwise import stepwise_phases
from ltdet2.engine import make_phase

IMAGE_SIZE = 128  # LT-Shapes' images (BACL's copy-paste size)
LST_INCREMENTAL_PHASES = 3

__all__ = [
    "IMAGE_SIZE",
    "LST_INCREMENTAL_PHASES",
    "from_scratch_schedule",
    "fine_tune_warmup",
    "fine_tune_schedule",
    "from_scratch",
    "fine_tune",
    "decoupled",
    "with_object_replay",
    "stepwise_chain",
    "bacl_chain",
    "lst_chain",
    "method_chains",
]


def from_scratch_schedule(iters):
    """LT-Shapes' schedule over ``iters``: x0.1 at 3/4 and 37/40, warm-up ``min(100, iters // 2)``."""
    return multi_step(iters, steps=(iters * 3 // 4, iters * 37 // 40), warmup_iters=min(100, iters // 2))


def fine_tune_warmup(iters):
    """A fine-tune's warm-up: 10 iterations, at most half of a short (--quick) phase."""
    return min(10, iters // 2)


def fine_tune_schedule(iters):
    """LOCE's fine-tune schedule over ``iters``: x0.1 at 1/2 and 5/6."""
    return multi_step(iters, steps=(iters // 2, iters * 5 // 6), warmup_iters=fine_tune_warmup(iters))


def from_scratch(model, dataloader, optimizer, train, *, iters, checkpoint_period, **keys):
    """A first phase: ``iters`` iterations from scratch at LT-Shapes' schedule (:func:`from_scratch_schedule`)."""
    phase = make_phase(model=model, dataloader=dataloader, optimizer=optimizer, train=train, **keys)
    phase["lr_multiplier"] = from_scratch_schedule(iters)
    phase["train"].update(max_iter=iters, init_from_phase="")
    phase["train"].checkpointer.period = checkpoint_period
    return phase


def fine_tune(base, source, *, iters, **keys):
    """``base`` as a fine-tune of ``iters`` iterations from phase ``source`` (:func:`fine_tune_schedule`)."""
    phase = make_phase(base, lr_multiplier=fine_tune_schedule(iters), **keys)
    phase["train"].update(max_iter=iters, init_from_phase=source)
    return phase


def decoupled(phase, *, images_per_class=5):
    """LOCE's decoupled fine-tune, in place: only the classifier and regressor, the RPN and the mask head train
    (``LOCE_TRAINABLE``); memories and indicators are warmed up on ``images_per_class`` images per class first
    (forward passes, no gradient: not counted in ``max_iter``). Returns ``phase``."""
    phase["train"].update(trainable=LOCE_TRAINABLE)
    add_memory_warmup(phase["train"], images_per_class=images_per_class)
    return phase


def with_object_replay(phase):
    """RIO's object replay on ``phase``'s model, fed from its training set, in place. Returns ``phase``."""
    add_object_replay(phase["model"], dataset_name=phase["dataloader"].train.dataset.names)
    return phase


def stepwise_chain(model, dataloader, optimizer, train, *, iters, checkpoint_period, name="stepwise"):
    """Step-wise learning after the project's phase ``pretrain`` (its init, and the model its exemplars are scored
    with): ``<name>_head_expert`` (``iters // 2`` on D_head at 0.1x the lr) then ``name`` (the transfer: ``iters //
    2`` on D_tail, distilled from the head expert), with projects/stepwise.py's scaling of the paper's quotas and
    thresholds to LT-Shapes. Returns the two phases by those names, in that order."""
    stepwise = stepwise_phases(
        model,
        dataloader,
        optimizer,
        from_scratch_schedule(iters),  # its pretrain's, unused: the project has its own
        train,
        source="lt_shapes_train",
        head_iters=iters // 2,
        transfer_iters=iters // 2,
        warmup_iters=fine_tune_warmup(iters // 2),
        checkpoint_period=checkpoint_period,
        quota_scale=0.3,
        threshold_scale=30,
    )
    head_expert_name = f"{name}_head_expert"
    stepwise["transfer"]["train"].update(init_from_phase=head_expert_name, teacher_from_phase=head_expert_name)
    return {head_expert_name: stepwise["head_expert"], name: stepwise["transfer"]}


def bacl_chain(
    model, dataloader, optimizer, train, *, representation_iters, classifier_iters, checkpoint_period, name="bacl"
):
    """BACL on LT-Shapes (projects/bacl.py's settings): ``<name>_representation`` (stage 1 from scratch), then from
    it ``name`` (stage 2: FCBL + FHM, feature extractor frozen) and ``fcbl_replay`` (FCBL with RIO's object replay
    instead of FHM: a composition no paper ran). Returns the three phases by those names, in that order."""
    representation_name = f"{name}_representation"
    representation = from_scratch(
        model, dataloader, optimizer, train, iters=representation_iters, checkpoint_period=checkpoint_period
    )
    add_representation_learning(
        representation, image_size=IMAGE_SIZE, train_proposals=1000, box_shift_threshold=1, mask_area_threshold=3
    )
    # stage 2: the stage-1 data pipeline and weight decay undone (projects/bacl.py)
    stage2 = fine_tune(
        representation, representation_name, iters=classifier_iters, dataloader=dataloader, optimizer=optimizer
    )
    classifier = add_classifier_learning(make_phase(stage2))
    fcbl_replay = with_object_replay(add_classifier_learning(make_phase(stage2), fhm=False))
    return {representation_name: representation, name: classifier, "fcbl_replay": fcbl_replay}


def lst_chain(model, dataloader, optimizer, train, *, base_iters, incremental_iters, checkpoint_period, name="lst"):
    """LST on LT-Shapes: ``<name>_base`` (the 30 most frequent classes, ``base_iters`` from scratch) and
    ``LST_INCREMENTAL_PHASES`` incremental phases of ``incremental_iters // LST_INCREMENTAL_PHASES`` each, each
    from (and distilled from) the one before; the last is named ``name`` (the entry), the others
    ``<name>_1``, ``<name>_2``. Returns the ordered phases."""
    base_name = f"{name}_base"
    base = lt_shapes_lst_phases(model, dataloader, optimizer, from_scratch_schedule(base_iters), train)["base"]
    base["train"].update(max_iter=base_iters, init_from_phase="")
    base["train"].checkpointer.period = checkpoint_period
    chain = lt_shapes_lst_phases(
        model,
        dataloader,
        optimizer,
        from_scratch_schedule(base_iters),
        train,
        chain_name=name,
        from_phase=base_name,
        incremental_iters=incremental_iters // LST_INCREMENTAL_PHASES,
        # ltdet2/config/lst.py's LT-Shapes schedule (x0.1 after 60%) with the warm-up fitted to short phases
        incremental_schedule=lambda iters: multi_step(
            iters, steps=(iters * 6 // 10,), warmup_iters=fine_tune_warmup(iters)
        ),
    )
    last = f"{name}_{LST_INCREMENTAL_PHASES}"
    phases = {base_name: base}
    phases.update({phase_name: phase for phase_name, phase in chain.items() if phase_name != last})
    phases[name] = chain[last]
    return phases


def method_chains(model, dataloader, optimizer, train, *, pretrain_iters, finetune_iters, checkpoint_period):
    """The three chains both leaderboards hold, in this order: step-wise after the project's ``pretrain``
    (:func:`stepwise_chain`, ``finetune_iters``), BACL (:func:`bacl_chain`, its stage 1 ``pretrain_iters`` from
    scratch) and LST (:func:`lst_chain`, its base phase ``pretrain_iters``, the incremental phases
    ``finetune_iters`` in all). Returns their ordered phases."""
    phases = stepwise_chain(
        model, dataloader, optimizer, train, iters=finetune_iters, checkpoint_period=checkpoint_period
    )
    phases.update(
        bacl_chain(
            model,
            dataloader,
            optimizer,
            train,
            representation_iters=pretrain_iters,
            classifier_iters=finetune_iters,
            checkpoint_period=checkpoint_period,
        )
    )
    phases.update(
        lst_chain(
            model,
            dataloader,
            optimizer,
            train,
            base_iters=pretrain_iters,
            incremental_iters=finetune_iters,
            checkpoint_period=checkpoint_period,
        )
    )
    return phases
