# The LT-Shapes leaderboard (issue #15): every method of ltdet2 and three compositions no paper ran, side by side
# on one stock Detectron2 with the same data (LT-Shapes, 72 classes), the same model (the small Mask R-CNN,
# configs/models/mask_rcnn_r18_fpn_small.py, from scratch), the same metric (box and mask AP, LVIS-style) and the
# same number of training iterations per entry: TOTAL_ITERS = PRETRAIN_ITERS + FINETUNE_ITERS, every phase of the
# entry counted. An entry is a phase that has an evaluator (its last one); the phases it starts from (init, teacher,
# scores) are its chain, trained once per seed and shared between entries (ltdet2.engine.leaderboard). Only the
# entries' last phases are evaluated: an evaluation (400 val images, score 1e-4, 300 detections, masks) is the
# costliest step on a CPU, and the leaderboard reports nothing of the intermediate phases.
#
#   shared chain                         entry          its own phase(s) (FINETUNE_ITERS in all)
#   pretrain (softmax CE, P iters)   ->  ce             CE continued, whole model (the control)
#                                    ->  rfs            + repeat-factor sampling (t = 0.001), whole model
#                                    ->  rio            RFS + object replay + RIO's cosine classifier, whole model
#                                    ->  loce           EBL + MFS, LOCE's decoupled fine-tune (memory warm-up)
#                                    ->  loce_rfs       LOCE with RFS (composition)
#                                    ->  replay_ebl     RIO's object replay with LOCE's EBL, LOCE's decoupled
#                                                       fine-tune (composition)
#                                    ->  stepwise_head_expert (F/2, D_head) -> stepwise (F/2, D_tail + distillation)
#   bacl_representation (BACL stage 1 from scratch, P iters)
#                                    ->  bacl           FCBL + FHM, feature extractor frozen
#                                    ->  fcbl_replay    FCBL with RIO's object replay instead of FHM (composition)
#   lst_base (top 30 classes from scratch, P iters) -> lst_1 -> lst_2 -> lst (14 classes each, F/3 each)
#
# BACL and LST cannot share the CE pretrain: BACL's first stage is its own representation learning (sigmoid
# classifier with a background channel, copy-paste), LST's base phase sees only the 30 most frequent classes.
# Each trains its own first phase of PRETRAIN_ITERS, so every entry still has TOTAL_ITERS.
# Schedules: a first phase has LT-Shapes' (lr 0.02, x0.1 at 3/4 and 37/40, warm-up min(100, P/2)); a fine-tune LOCE's
# (warm-up 10, x0.1 at 1/2 and 5/6) over its length; step-wise and LST keep their methods' own lr (0.1x / 0.2x).
# Budget: P = 300, F = 150, 2,400 iterations and 10 evaluations per seed (times: docs/leaderboard.md,
# docs/benchmarks.md).
# Run: python scripts/leaderboard.py [--entries ce loce] [--seeds 0 1 2] [--jobs 2] [--quick] [--dry-run]
from ltdet2.config.bacl import add_classifier_learning, add_representation_learning
from ltdet2.config.loce import LOCE_TRAINABLE, add_ebl, add_memory_warmup, add_mfs
from ltdet2.config.lst import lt_shapes_lst_phases
from ltdet2.config.rio import add_cosine_classifier, add_object_replay, add_rfs
from ltdet2.config.schedules import multi_step
from ltdet2.config.stepwise import stepwise_phases
from ltdet2.data.lt_shapes import NUM_CLASSES
from ltdet2.engine import make_phase
from ltdet2.engine.leaderboard import evaluate_entries_only

from ..configs.lt_shapes_defaults import dataloader, optimizer, train
from ..configs.models.mask_rcnn_r18_fpn_small import model

PRETRAIN_ITERS = 300  # every entry's first phase (the shared pretrain, BACL's stage 1, LST's base)
FINETUNE_ITERS = 150  # the rest of every entry (divisible by 2 and 3: step-wise's and LST's own phases)
TOTAL_ITERS = PRETRAIN_ITERS + FINETUNE_ITERS
IMAGE_SIZE = 128  # LT-Shapes' images (BACL's copy-paste size)
LST_INCREMENTAL_PHASES = 3


def leaderboard_phases(model, dataloader, optimizer, train, *, pretrain_iters, finetune_iters, checkpoint_period=50):
    """The leaderboard's ``phases`` (see the file's header) with first phases of ``pretrain_iters`` and entries'
    own phases of ``finetune_iters`` in all; only the entries' last phases keep ``dataloader.evaluator``."""
    if finetune_iters % 6:
        raise ValueError(f"finetune_iters={finetune_iters}: step-wise (2 phases) and LST (3) need a multiple of 6")
    model.roi_heads.num_classes = NUM_CLASSES
    first_schedule = multi_step(
        pretrain_iters,
        steps=(pretrain_iters * 3 // 4, pretrain_iters * 37 // 40),
        warmup_iters=min(100, pretrain_iters // 2),
    )

    def warmup(iters):  # a fine-tune's: 10 iterations, at most half of a short (--quick) phase
        return min(10, iters // 2)

    def fine_tune_schedule(iters):
        return multi_step(iters, steps=(iters // 2, iters * 5 // 6), warmup_iters=warmup(iters))

    def first_phase(**keys):
        phase = make_phase(model=model, dataloader=dataloader, optimizer=optimizer, train=train, **keys)
        phase["lr_multiplier"] = first_schedule
        phase["train"].update(max_iter=pretrain_iters, init_from_phase="")  # from scratch
        phase["train"].checkpointer.period = checkpoint_period
        return phase

    def fine_tune(base, source, **keys):
        phase = make_phase(base, lr_multiplier=fine_tune_schedule(finetune_iters), **keys)
        phase["train"].update(max_iter=finetune_iters, init_from_phase=source)
        return phase

    def replay(phase):
        return add_object_replay(phase["model"], dataset_name=phase["dataloader"].train.dataset.names)

    def decoupled(phase):  # LOCE's fine-tune: classifier, regressor, RPN and mask head train; memories warmed up
        phase["train"].update(trainable=LOCE_TRAINABLE)
        add_memory_warmup(phase["train"], images_per_class=5)
        return phase

    phases = {}
    pretrain = phases["pretrain"] = first_phase()
    ce = phases["ce"] = fine_tune(pretrain, "pretrain")
    phases["rfs"] = rfs = fine_tune(ce, "pretrain")
    add_rfs(rfs["dataloader"])
    phases["rio"] = rio = fine_tune(rfs, "pretrain")
    add_cosine_classifier(rio["model"])
    replay(rio)
    phases["loce"] = loce = decoupled(fine_tune(ce, "pretrain"))
    add_ebl(loce["model"])
    add_mfs(loce["model"])
    phases["loce_rfs"] = loce_rfs = fine_tune(loce, "pretrain")
    add_rfs(loce_rfs["dataloader"])
    phases["replay_ebl"] = replay_ebl = decoupled(fine_tune(ce, "pretrain"))
    add_ebl(replay_ebl["model"])
    replay(replay_ebl)

    stepwise = stepwise_phases(
        model,
        dataloader,
        optimizer,
        first_schedule,
        train,
        source="lt_shapes_train",
        head_iters=finetune_iters // 2,
        transfer_iters=finetune_iters // 2,
        warmup_iters=warmup(finetune_iters // 2),
        checkpoint_period=checkpoint_period,
        quota_scale=0.3,  # projects/stepwise.py's scaling of the paper's quotas and thresholds to LT-Shapes
        threshold_scale=30,
    )
    phases["stepwise_head_expert"] = stepwise["head_expert"]  # init_from_phase="pretrain" (its own)
    phases["stepwise"] = stepwise["transfer"]
    phases["stepwise"]["train"].update(
        init_from_phase="stepwise_head_expert", teacher_from_phase="stepwise_head_expert"
    )

    representation = phases["bacl_representation"] = first_phase()
    add_representation_learning(
        representation, image_size=IMAGE_SIZE, train_proposals=1000, box_shift_threshold=1, mask_area_threshold=3
    )  # projects/bacl.py's LT-Shapes settings
    # stage 2: the stage-1 data pipeline and weight decay undone (projects/bacl.py)
    classifier = fine_tune(representation, "bacl_representation", dataloader=dataloader, optimizer=optimizer)
    phases["bacl"] = add_classifier_learning(make_phase(classifier))
    phases["fcbl_replay"] = fcbl_replay = add_classifier_learning(make_phase(classifier), fhm=False)
    replay(fcbl_replay)

    phases["lst_base"] = lt_shapes_lst_phases(model, dataloader, optimizer, first_schedule, train)["base"]
    phases["lst_base"]["train"].update(max_iter=pretrain_iters, init_from_phase="")
    phases["lst_base"]["train"].checkpointer.period = checkpoint_period
    # the chain from lst_base, each phase from (and distilled from) the one before it
    chain = lt_shapes_lst_phases(
        model,
        dataloader,
        optimizer,
        first_schedule,
        train,
        chain_name="lst",
        from_phase="lst_base",
        incremental_iters=finetune_iters // LST_INCREMENTAL_PHASES,
        # ltdet2/config/lst.py's LT-Shapes schedule (x0.1 after 60%) with the warm-up fitted to short phases
        incremental_schedule=lambda iters: multi_step(iters, steps=(iters * 6 // 10,), warmup_iters=warmup(iters)),
    )
    last = f"lst_{LST_INCREMENTAL_PHASES}"
    phases.update({name: phase for name, phase in chain.items() if name != last})
    phases["lst"] = chain[last]  # the entry's name

    return evaluate_entries_only(phases)


train.output_dir = "output/leaderboard"
phases = leaderboard_phases(
    model, dataloader, optimizer, train, pretrain_iters=PRETRAIN_ITERS, finetune_iters=FINETUNE_ITERS
)
del model, dataloader, optimizer  # a project's root: `train` and `phases`
