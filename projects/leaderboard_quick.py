# scripts/leaderboard.py --quick: projects/leaderboard.py's entries and chains at a demo length, for a user who wants
# to try the leaderboard (seed 0; its numbers are no result). Every entry trains
# QUICK_PRETRAIN_ITERS + QUICK_FINETUNE_ITERS iterations (the first phases at half the lr: a from-scratch model
# diverges at lr 0.02 after so short a warm-up), and is evaluated with COCO's test settings (score > 0.05, 100
# detections per image) instead of LVIS' (1e-4, 300): at 1e-4 a barely trained Mask R-CNN keeps 300 detections per
# image and pastes their masks (400 val images per entry). Empty evaluations are accepted.
from ..configs.lt_shapes_defaults import dataloader, optimizer, train
from ..configs.models.mask_rcnn_r18_fpn_small import model
from .leaderboard import leaderboard_phases

QUICK_PRETRAIN_ITERS = 48
QUICK_FINETUNE_ITERS = 24
QUICK_DETECTIONS = 100
QUICK_SCORE_THRESHOLD = 0.05


def quick_settings(model, dataloader, optimizer, train):
    """The demo length's settings, in place: half the lr, COCO's test settings, empty evaluations accepted."""
    optimizer.lr = 0.01
    model.roi_heads.box_predictor.test_topk_per_image = QUICK_DETECTIONS
    model.roi_heads.box_predictor.test_score_thresh = QUICK_SCORE_THRESHOLD
    dataloader.evaluator.max_dets_per_image = QUICK_DETECTIONS
    train.allow_empty_eval = True
    train.log_period = 10


quick_settings(model, dataloader, optimizer, train)
train.output_dir = "output/leaderboard_quick"
phases = leaderboard_phases(
    model,
    dataloader,
    optimizer,
    train,
    pretrain_iters=QUICK_PRETRAIN_ITERS,
    finetune_iters=QUICK_FINETUNE_ITERS,
    checkpoint_period=QUICK_FINETUNE_ITERS,
)
del model, dataloader, optimizer  # a project's root: `train` and `phases`
