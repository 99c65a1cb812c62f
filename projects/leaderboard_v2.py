# The LT-Shapes leaderboard, v2 (issue #30; the protocol: docs/leaderboard/protocol.md). Same data (LT-Shapes, 72
# classes), model (the small Mask R-CNN from scratch) and evaluation (LVIS-style box and mask AP, 300 detections) as
# v1 (projects/leaderboard.py), with a converged start, equal budgets, matched controls and the baselines users
# compare against. Every entry trains TOTAL_ITERS = PRETRAIN_ITERS + FINETUNE_ITERS iterations, every phase of its
# chain counted (LOCE's memory warm-up is forward passes only, not counted: protocol.md gives its size).
#
#   regime      entry            its phases (iterations)                                            control
#   end to end  ce               softmax CE from scratch (P + F): the end-to-end control               -
#               rfs              + repeat-factor sampling (t = 0.001), from scratch (P + F)            ce
#               rio_replay       RFS + RIO's object replay, linear classifier (P + F)                 ce, rfs
#               rio              RFS + object replay + RIO's cosine classifier (P + F)                ce, rio_replay
#               seesaw           Seesaw loss, objectness branch, normalised classifier (P + F)        ce
#               eqlv2            EQLv2: sigmoid classifier, gradient-guided reweighting (P + F)       ce
#               federated        Detectron2's federated sigmoid loss (P + F)                          ce
#               lst              lst_base (top 30 classes, P) -> 3 incremental phases (F/3 each)      ce
#   decoupled   crt              pretrain (P) -> plain CE, LOCE's trainable set and schedule (F):      ce
#                                the decoupled control (cRT's re-training, instance sampling; no memory
#                                warm-up: it has no memory)
#               loce             pretrain -> EBL + MFS, memory warm-up (F)                            crt
#               loce_rfs         pretrain -> LOCE with RFS (F; composition)                           crt, loce
#               replay_ebl       pretrain -> object replay + EBL (F; composition)                     crt, loce
#               bacl             bacl_representation (stage 1, P) -> FCBL + FHM (F)                   crt
#               fcbl_replay      bacl_representation -> FCBL with object replay (F; composition)      crt, bacl
#   step-wise   stepwise_control pretrain -> CE on all data, step-wise's trainable set and lr (F)       ce
#               stepwise         pretrain -> head expert (F/2, D_head) -> transfer (F/2, D_tail)      stepwise_control
#
# `pretrain` is the shared softmax-CE first phase of the decoupled and step-wise entries (trained once per seed);
# it keeps its evaluator and evaluates every PRETRAIN_ITERS // CURVE_POINTS iterations: its learning curve, recorded
# in the results file of every entry that starts from it, and checked against the protocol's convergence rule
# (the last quarter gains under 1 box AP). The controls a pair is formed with are scripts/leaderboard.py's
# V2_FAMILIES. Run: python scripts/leaderboard.py --protocol v2 [--entries ...] [--seeds 0 1 2 3 4] [--jobs 2]
from ltdet2.config.eqlv2 import add_eqlv2
from ltdet2.config.federated import add_federated_loss
from ltdet2.config.leaderboard import (
    decoupled,
    fine_tune,
    fine_tune_warmup,
    from_scratch,
    method_chains,
    with_object_replay,
)
from ltdet2.config.loce import LOCE_TRAINABLE, add_ebl, add_mfs
from ltdet2.config.long_tail import use_long_tail_heads
from ltdet2.config.rio import add_cosine_classifier, add_rfs
from ltdet2.config.schedules import set_phase_length
from ltdet2.config.seesaw import add_seesaw
from ltdet2.config.stepwise import STEPWISE_TRAINABLE
from ltdet2.data.lt_shapes import NUM_CLASSES
from ltdet2.engine import make_phase
from ltdet2.engine.leaderboard import evaluate_entries_only

from ..configs.lt_shapes_defaults import dataloader, optimizer, train
from ..configs.models.mask_rcnn_r18_fpn_small import model

# P: the converged start (docs/leaderboard/protocol.md: its learning curve). 2400 failed the convergence rule on
# seed 0 (box AP +10.5 over its last quarter: docs/leaderboard/v2/curves/pretrain_P2400_seed0.json), so P was doubled
PRETRAIN_ITERS = 4800
FINETUNE_ITERS = 600  # F: a decoupled entry's fine-tune (divisible by 2 and 3: step-wise's and LST's phases)
TOTAL_ITERS = PRETRAIN_ITERS + FINETUNE_ITERS
# the mask head's at inference (LongTailROIHeads), Detectron2's: the same numbers on every machine. bfloat16 is 2.4x
# faster per evaluation on CPUs with bf16 instructions but 7x slower without them (AVX2), and its masks move mask AP
# by up to 0.07: entries evaluated on different machines would not compare exactly (docs/leaderboard/protocol.md)
MASK_INFERENCE_DTYPE = "float32"
CURVE_POINTS = 8  # evaluations of the shared pretrain (its learning curve), the last at its end


def leaderboard_v2_phases(
    model, dataloader, optimizer, train, *, pretrain_iters, finetune_iters, curve_points, checkpoint_period=200
):
    """The v2 leaderboard's ``phases`` (the file's header): first phases of ``pretrain_iters``, the entries' own
    phases of ``finetune_iters`` in all, end-to-end entries of both from scratch; the shared ``pretrain`` evaluated
    ``curve_points`` times; otherwise only the entries' last phases keep ``dataloader.evaluator``."""
    if finetune_iters % 6:
        raise ValueError(f"finetune_iters={finetune_iters}: step-wise (2 phases) and LST (3) need a multiple of 6")
    if pretrain_iters % curve_points:
        raise ValueError(f"pretrain_iters={pretrain_iters}: not a multiple of curve_points={curve_points}")
    model.roi_heads.num_classes = NUM_CLASSES
    # every entry evaluated alike (MASK_INFERENCE_DTYPE), by ltdet2's heads with no long-tail option: the control's
    # training and inference are Detectron2's
    use_long_tail_heads(model)
    model.roi_heads.mask_inference_dtype = MASK_INFERENCE_DTYPE
    total_iters = pretrain_iters + finetune_iters
    phases = {}

    def end_to_end(**keys):  # the whole budget from scratch, at LT-Shapes' schedule stretched over it
        return from_scratch(
            model, dataloader, optimizer, train, iters=total_iters, checkpoint_period=checkpoint_period, **keys
        )

    pretrain = phases["pretrain"] = from_scratch(
        model, dataloader, optimizer, train, iters=pretrain_iters, checkpoint_period=checkpoint_period
    )
    ce = phases["ce"] = end_to_end()
    phases["rfs"] = rfs = make_phase(ce)
    add_rfs(rfs["dataloader"])
    phases["rio_replay"] = rio_replay = with_object_replay(make_phase(rfs))
    phases["rio"] = rio = make_phase(rio_replay)
    add_cosine_classifier(rio["model"])
    phases["seesaw"] = seesaw = make_phase(ce)
    add_seesaw(seesaw["model"])
    phases["eqlv2"] = eqlv2 = make_phase(ce)
    add_eqlv2(eqlv2["model"])
    phases["federated"] = federated = make_phase(ce)
    add_federated_loss(federated["model"], federated["dataloader"].train.dataset.names)

    # the decoupled control: LOCE's trainable set and schedule, plain CE, no memory to warm up
    crt = phases["crt"] = fine_tune(pretrain, "pretrain", iters=finetune_iters)
    crt["train"].trainable = LOCE_TRAINABLE
    phases["loce"] = loce = decoupled(make_phase(crt))
    add_ebl(loce["model"])
    add_mfs(loce["model"])
    phases["loce_rfs"] = loce_rfs = make_phase(loce)
    add_rfs(loce_rfs["dataloader"])
    phases["replay_ebl"] = replay_ebl = decoupled(make_phase(crt))
    add_ebl(replay_ebl["model"])
    with_object_replay(replay_ebl)

    # the step-wise control: the pretrain trained on, all data and its own loss, with step-wise's trainable set and
    # the transfer's schedule shape over the same F iterations (projects/stepwise_ablation.py's `control`)
    control = phases["stepwise_control"] = fine_tune(pretrain, "pretrain", iters=finetune_iters)
    control["train"].trainable = STEPWISE_TRAINABLE
    set_phase_length(
        control, iters=finetune_iters, step_fractions=(0.5,), warmup_iters=fine_tune_warmup(finetune_iters)
    )
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
    # set last, so that the phases made from the pretrain do not inherit them: the learning curve (its last point:
    # the final evaluation), and the checkpoint before its first lr step kept (a pretrain of 2P, if P fails the
    # convergence rule, has the same learning rates up to there and continues exactly from it)
    first_step = pretrain_iters * 3 // 4  # ltdet2.config.leaderboard.from_scratch_schedule's
    if first_step % checkpoint_period == 0:
        pretrain["train"].checkpointer.keep = [first_step - 1]
    pretrain["train"].eval_period = pretrain_iters // curve_points
    if pretrain["train"].eval_period % pretrain["train"].log_period:  # metrics.json would lose curve points
        raise ValueError(f"curve period {pretrain_iters // curve_points}: not a multiple of train.log_period")
    return evaluate_entries_only(phases, keep=("pretrain",))


train.output_dir = "output/leaderboard_v2"
phases = leaderboard_v2_phases(
    model,
    dataloader,
    optimizer,
    train,
    pretrain_iters=PRETRAIN_ITERS,
    finetune_iters=FINETUNE_ITERS,
    curve_points=CURVE_POINTS,
)
del model, dataloader, optimizer  # a project's root: `train` and `phases`
