# LST ablation on LT-Shapes (issue #13's evidence), every model with the same 700 training iterations:
#   joint                  Mask R-CNN (standard softmax heads) on all 72 classes at once, 700 iterations: the LST
#                          chain's total (base 400 + 3 x 100), as the control of the step-wise ablation has the
#                          step-wise chain's
#   joint_rfs              the same with repeat-factor sampling (threshold 0.001, as RIO / LVIS)
#   base, incremental_1..3 LST without the meta weight generator (exactly projects/lst.py's phases)
#   mwg_1..3               LST with the generator (trained with each phase, its rows written at the phase's end),
#                          from the same base
#   no_distill_1..3        LST without the logit distillation (no teacher), from the same base: the forgetting
#                          distillation prevents
# Each chain's last phase (incremental_3, mwg_3, no_distill_3) is evaluated on all 72 classes, like joint and
# joint_rfs: box and mask AP with r/c/f and the training instance-count buckets.
# Run: python scripts/ablation_table.py --config-file projects/lst_ablation.py --seeds 0 1 2 \
#          --output-dir output/lst_ablation --task segm    (and --task bbox: box AP)
from ltdet2.config.lst import LT_SHAPES_INCREMENTAL_ITERS, LT_SHAPES_NUM_CLASSES, lt_shapes_lst_phases
from ltdet2.config.rio import add_rfs
from ltdet2.config.schedules import multi_step
from ltdet2.engine import make_phase

from ..configs.lt_shapes_defaults import MAX_ITER, dataloader, lr_multiplier, optimizer, train
from ..configs.models.mask_rcnn_r18_fpn_small import model

train.output_dir = "output/lst_ablation"
JOINT_ITERS = MAX_ITER + 3 * LT_SHAPES_INCREMENTAL_ITERS  # the LST chain's iterations

joint = make_phase(
    model=model,
    dataloader=dataloader,
    optimizer=optimizer,
    train=train,
    # the LT-Shapes schedule (steps at 3/4 and 37/40, 100 warm-up iterations) stretched to JOINT_ITERS
    lr_multiplier=multi_step(JOINT_ITERS, steps=(JOINT_ITERS * 3 // 4, JOINT_ITERS * 37 // 40), warmup_iters=100),
)
joint["model"].roi_heads.num_classes = LT_SHAPES_NUM_CLASSES
joint["train"].update(max_iter=JOINT_ITERS, init_from_phase="")  # independent: from scratch, like base
joint["dataloader"].evaluator.instance_buckets = True  # as LST's phases report

joint_rfs = make_phase(joint)
add_rfs(joint_rfs["dataloader"])

# projects/lst.py's chain, then the two variants from its base
pieces = (model, dataloader, optimizer, lr_multiplier, train)
lst = lt_shapes_lst_phases(*pieces)
lst["base"]["train"].init_from_phase = ""  # not from joint_rfs, the phase before it here
mwg = lt_shapes_lst_phases(*pieces, chain_name="mwg", from_phase="base", weight_generator=dict(row_norm="keep"))
no_distill = lt_shapes_lst_phases(*pieces, chain_name="no_distill", from_phase="base", distill=False)

phases = dict(joint=joint, joint_rfs=joint_rfs, **lst, **mwg, **no_distill)
del model, dataloader, optimizer, lr_multiplier, pieces, joint, joint_rfs, lst, mwg, no_distill
