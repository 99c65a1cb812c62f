# Step-wise learning on smooth-tail data (Dong et al., ICCV 2023) on LT-Shapes for a CPU, with the small
# Faster R-CNN (the paper's detector is Deformable DETR; the R-CNN mapping and schedule are ours):
#   "pretrain":    the baseline on all of lt_shapes_train (400 iterations).
#   "head_expert": scores every training annotation with the pretrained model, builds D_head (per head class
#       the best-scored annotations, one per image first; per tail class a few) and fine-tunes the
#       class-specific parts (classifier + FPN) on it with step-wise RFS, at 0.1x the base lr.
#   "transfer":    builds D_tail (a few per head class, every tail annotation) and trains the unified model,
#       initialised from the head expert, with the frozen head expert as teacher: masked feature distillation
#       inside head-class boxes on p2-p5 + KL on the head-class columns over the shared RoIs.
# Sets: LT-Shapes has 2,500 training images (LVIS v0.5: 57k), so the paper's quotas (200 / 30 / 50 per class)
# are scaled by 0.3 and the official RFS thresholds by 30 (reference §2.3-2.4; our choice).
# Ablation with the control: projects/stepwise_ablation.py. LVIS: projects/stepwise_lvis_v0_5.py, _v1.py.
from ltdet2.data.samplers import STEPWISE_HEAD_GROUPS, STEPWISE_TAIL_GROUPS
from ltdet2.engine import make_phase

from ..configs.common.schedules import multi_step
from ..configs.lt_shapes_defaults import dataloader, lr_multiplier, model, optimizer, train
from ..configs.stepwise import add_head_expert, add_knowledge_transfer, scaled_groups

SOURCE = "lt_shapes_train"
QUOTA_SCALE = 0.3  # LT-Shapes' head classes hold 32-434 images: 200 per class would take most of them
THRESHOLD_SCALE = 30  # the sets hold ~1,000-2,000 images against LVIS' ~30,000-50,000
HEAD_EXPERT_ITERS = 200  # ~1 epoch of D_head at batch 8 (paper: 1 epoch)
TRANSFER_ITERS = 200  # ~2 epochs of D_tail (paper: 2 epochs, lr x0.1 after the first)
train.output_dir = "output/stepwise"  # the phases train in output/stepwise/<phase>

pretrain = make_phase(model=model, dataloader=dataloader, optimizer=optimizer, lr_multiplier=lr_multiplier, train=train)

head_expert = make_phase(pretrain)
add_head_expert(
    head_expert,
    name="lt_shapes_train_stepwise_d_head",
    source=SOURCE,
    scores_from_phase="pretrain",
    head_quota=round(200 * QUOTA_SCALE),
    tail_quota=round(30 * QUOTA_SCALE),
    groups=scaled_groups(STEPWISE_HEAD_GROUPS, THRESHOLD_SCALE),
)
head_expert["train"].init_from_phase = "pretrain"  # explicit: the ablation inserts phases before it
head_expert["train"].max_iter = HEAD_EXPERT_ITERS
head_expert["train"].checkpointer.period = 50
head_expert["optimizer"].lr = optimizer.lr * 0.1  # paper: 2e-5 = 0.1x the pretraining lr
head_expert["lr_multiplier"] = multi_step(HEAD_EXPERT_ITERS, steps=(), warmup_iters=10)

transfer = make_phase(pretrain)
add_knowledge_transfer(
    transfer,
    teacher_from_phase="head_expert",
    classes_from_dataset=SOURCE,
    name="lt_shapes_train_stepwise_d_tail",
    source=SOURCE,
    scores_from_phase="pretrain",
    head_quota=round(50 * QUOTA_SCALE),
    tail_quota=None,
    groups=scaled_groups(STEPWISE_TAIL_GROUPS, THRESHOLD_SCALE),
)
transfer["train"].max_iter = TRANSFER_ITERS
transfer["train"].checkpointer.period = 50
transfer["lr_multiplier"] = multi_step(TRANSFER_ITERS, steps=(TRANSFER_ITERS // 2,), warmup_iters=10)

phases = dict(pretrain=pretrain, head_expert=head_expert, transfer=transfer)
del model, dataloader, optimizer, lr_multiplier, pretrain, head_expert, transfer  # a project's root: train, phases
