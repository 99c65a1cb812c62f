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
from ltdet2.config.leaderboard import (
    LST_INCREMENTAL_PHASES,
    decoupled,
    fine_tune,
    from_scratch,
    method_chains,
    with_object_replay,
)
from ltdet2.config.loce import add_ebl, add_mfs
from ltdet2.config.rio import add_cosine_classifier, add_rfs
from ltdet2.data.lt_shapes import NUM_CLASSES
from ltdet2.engine.leaderboard import evaluate_entries_only

from ..configs.lt_shapes_defaults import dataloader, optimizer, train
from ..configs.models.mask_rcnn_r18_fpn_small import model

PRETRAIN_ITERS = 300  # every entry's first phase (the shared pretrain, BACL's stage 1, LST's base)
FINETUNE_ITERS = 150  # the rest of every entry (divisible by 2 and 3: step-wise's and LST's own phases)
TOTAL_ITERS = PRETRAIN_ITERS + FINETUNE_ITERS


def leaderboard_phases(model, dataloader, optimizer, train, *, pretrain_iters, finetune_iters, checkpoint_period=50):
    """The leaderboard's ``phases`` (see the file's header) with first phases of ``pretrain_iters`` and entries'
    own phases of ``finetune_iters`` in all; only the entries' last phases keep ``dataloader.evaluator``."""
    if finetune_iters % 6:
        raise ValueError(f"finetune_iters={finetune_iters}: step-wise (2 phases) and LST (3) need a multiple of 6")
    model.roi_heads.num_classes = NUM_CLASSES
    first = dict(iters=pretrain_iters, checkpoint_period=checkpoint_period)
    phases = {}
    pretrain = phases["pretrain"] = from_scratch(model, dataloader, optimizer, train, **first)
    ce = phases["ce"] = fine_tune(pretrain, "pretrain", iters=finetune_iters)
    phases["rfs"] = rfs = fine_tune(ce, "pretrain", iters=finetune_iters)
    add_rfs(rfs["dataloader"])
    phases["rio"] = rio = with_object_replay(fine_tune(rfs, "pretrain", iters=finetune_iters))
    add_cosine_classifier(rio["model"])
    phases["loce"] = loce = decoupled(fine_tune(ce, "pretrain", iters=finetune_iters))
    add_ebl(loce["model"])
    add_mfs(loce["model"])
    phases["loce_rfs"] = loce_rfs = fine_tune(loce, "pretrain", iters=finetune_iters)
    add_rfs(loce_rfs["dataloader"])
    phases["replay_ebl"] = replay_ebl = decoupled(fine_tune(ce, "pretrain", iters=finetune_iters))
    add_ebl(replay_ebl["model"])
    with_object_replay(replay_ebl)
    phases.update(
        method_chains(
            model,
            dataloader,
            optimizer,
            train,
            pretrain_iters=pretrain_iters,
            finetune_iters=finetune_iters,
            checkpoint_period=checkpoint_period,
        )
    )
    assert LST_INCREMENTAL_PHASES == 3  # the header's table
    return evaluate_entries_only(phases)


train.output_dir = "output/leaderboard"
phases = leaderboard_phases(
    model, dataloader, optimizer, train, pretrain_iters=PRETRAIN_ITERS, finetune_iters=FINETUNE_ITERS
)
del model, dataloader, optimizer  # a project's root: `train` and `phases`
