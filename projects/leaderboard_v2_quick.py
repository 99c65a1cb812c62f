# scripts/leaderboard.py --protocol v2 --quick: projects/leaderboard_v2.py's entries and chains at a demo length,
# for a user who wants to try the v2 leaderboard or a change to it (seed 0; its numbers are no result). The first
# phases train QUICK_PRETRAIN_ITERS, the fine-tunes QUICK_FINETUNE_ITERS (the end-to-end entries both, from scratch;
# at half the lr: a from-scratch model diverges at lr 0.02 after so short a warm-up); the shared pretrain is
# evaluated twice (its learning curve) and every evaluation uses COCO's test settings (score > 0.05, 100 detections
# per image) instead of LVIS' (1e-4, 300), as projects/leaderboard_quick.py. Empty evaluations are accepted.
from ..configs.lt_shapes_defaults import dataloader, optimizer, train
from ..configs.models.mask_rcnn_r18_fpn_small import model
from .leaderboard_quick import QUICK_FINETUNE_ITERS, QUICK_PRETRAIN_ITERS, quick_settings
from .leaderboard_v2 import leaderboard_v2_phases

QUICK_CURVE_POINTS = 2

quick_settings(model, dataloader, optimizer, train)
train.log_period = QUICK_PRETRAIN_ITERS // QUICK_CURVE_POINTS // 2  # divides the curve's period (metrics.json)
train.output_dir = "output/leaderboard_v2_quick"
phases = leaderboard_v2_phases(
    model,
    dataloader,
    optimizer,
    train,
    pretrain_iters=QUICK_PRETRAIN_ITERS,
    finetune_iters=QUICK_FINETUNE_ITERS,
    curve_points=QUICK_CURVE_POINTS,
    checkpoint_period=QUICK_FINETUNE_ITERS,
)
# the federated loss (sigmoid CE from Detectron2's zero biases) diverged at 0.01 right after its 36-iteration warm-up
# (iteration 39, seed 0); in the full project, with its 100-iteration warm-up to 0.02, it trains (checked to 200)
phases["federated"]["optimizer"].lr = optimizer.lr / 2
del model, dataloader, optimizer  # a project's root: `train` and `phases`
