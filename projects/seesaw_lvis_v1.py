# Seesaw loss on LVIS v1 with the paper's Mask R-CNN R-50-FPN 2x setting, as MMDetection's
# configs/seesaw_loss/mask-rcnn_r50_fpn_seesaw-loss_random-ms-2x_lvis-v1.py (the official configs): the loss
# (p 0.8, q 2) with the objectness branch, the normalised linear classifier (temperature 20), multi-scale training
# at short edge 640-800 (step 32, long edge <= 1333) with flips, the random sampler, 24 epochs at batch 16 with SGD
# lr 0.02 (steps at epochs 16 and 22, 500 linear warm-up iterations), score threshold 1e-4 and 300 detections per
# image. The rest is configs/lvis_v1_defaults.py (Detectron2's Mask R-CNN R-50-FPN from ImageNet weights).
#
# The length is counted in iterations here (24 epochs of the 100170 training images at batch 16: 150255, steps at
# 100170 and 137734), so the file also runs with Detectron2's own script; MMDetection counts epochs.
#
# RFS variant (MMDetection's "sample1e-3" configs: repeat-factor sampling at threshold 1e-3): set SAMPLER below to
# "sample1e-3". ltdet2 then keeps the iteration count above (Detectron2's convention for RFS); MMDetection's 24
# epochs of its ClassBalancedDataset are longer, by the mean repeat factor.
from ltdet2.config.rio import add_rfs
from ltdet2.config.schedules import epochs_to_iters, multi_step
from ltdet2.config.seesaw import add_seesaw

from ..configs.lvis_v1_defaults import BATCH_SIZE, NUM_TRAIN_IMAGES, dataloader, model, optimizer, train

SAMPLER = "random"  # or "sample1e-3"


def iters(epochs):
    return epochs_to_iters(epochs, NUM_TRAIN_IMAGES, BATCH_SIZE)


add_seesaw(model)
if SAMPLER == "sample1e-3":
    add_rfs(dataloader, threshold=1e-3)
elif SAMPLER != "random":
    raise ValueError(f"projects/seesaw_lvis_v1.py: SAMPLER must be 'random' or 'sample1e-3', got {SAMPLER!r}")
train.max_iter = iters(24)
lr_multiplier = multi_step(iters(24), steps=(iters(16), iters(22)), warmup_iters=500)
train.output_dir = "output/seesaw_lvis_v1"
