# cRT (classifier re-training; Kang et al., ICLR 2020, "Decoupling representation and classifier for long-tailed
# recognition") on LVIS v1, as the long-tail detection papers' cRT baseline: the one EQLv2 (Tan et al., CVPR 2021)
# compares with on LVIS v1, whose official code has its config (tztztztztz/eqlv2; its README's LVIS table: cRT 22.1
# AP). The papers' text was not available to check; the values are the code's. Where each comes from:
# - "pretrain" (stage 1): Mask R-CNN R-50-FPN with softmax CE and instance (random) sampling, 12 epochs at batch 16,
#   SGD lr 0.02, steps at epochs 8 and 11, 500 linear warm-up iterations from 0.001: configs/end2end/
#   mask_rcnn_r50_8x2_1x.py line 3 (oversample_thr 0.0: no repeat-factor sampling) on
#   configs/_base_/schedules/schedule_1x.py lines 2 and 5-11; the README's step 2 (line 136) re-trains from its
#   epoch_12.pth. PRETRAIN = "2x" below: 24 epochs, steps at 16 and 22 (schedule_2x.py), the length of the other
#   LVIS projects' first phases here (LOCE's pretrain, Seesaw, EQLv2);
# - "crt" (stage 2), configs/decouple/crt_r50_8x2_1x.py: class-aware sampling (line 3: CASDataset;
#   ltdet2.data.samplers.ClassAwareSampler) for 75000 iterations at batch 16 (line 3: max_iter=75000 * 16 images,
#   line 33: one pass), steps at 50000 and 70000 with 500 linear warm-up iterations from 0.001 (lines 24-31), lr
#   0.02 (schedule_1x.py line 2); only the classifier trains (lines 9-16 and 21: backbone, FPN, RPN and mask head
#   frozen, bbox head "feat": mmdet/models/roi_heads/bbox_heads/convfc_bbox_head.py freeze() leaves fc_cls alone
#   trainable), re-initialised (line 37 loads model_reset_remove.pth: tools/ckpt_surgery.py --method remove drops
#   fc_cls from the stage-1 checkpoint). Kang et al.'s cRT likewise re-initialises the classifier and re-trains it
#   alone, for a few epochs, with class-balanced sampling, on the representation kept fixed;
# - multi-scale training at short edge 640-800 with flips, score threshold 1e-4 and 300 detections per image:
#   configs/lvis/mask_rcnn_r50_fpn_sample1e-3_mstrain_1x_lvis_v1.py (lines 9-30; the base of
#   configs/end2end/mask_rcnn_r50_8x2_1x.py, which turns its repeat-factor sampling off at line 3), which
#   configs/lvis_v1_defaults.py already has (Detectron2's Mask R-CNN R-50-FPN from ImageNet weights).
#
# Lengths are counted in iterations (12 epochs of the 100170 training images at batch 16: 75128, steps at 50085 and
# 68867); MMDetection counts stage 1 in epochs. Not the LT-Shapes leaderboard's `crt` (projects/leaderboard_v2.py): that
# one is a matched control for LOCE (LOCE's trainable set and schedule, instance sampling); see docs/methods/crt.md.
from ltdet2.config.crt import add_crt
from ltdet2.config.schedules import epochs_to_iters, multi_step
from ltdet2.engine import make_phase

from ..configs.lvis_v1_defaults import BATCH_SIZE, NUM_TRAIN_IMAGES, dataloader, model, optimizer, train

PRETRAIN = "1x"  # the EQLv2 code's stage 1; "2x": 24 epochs, steps at 16 and 22
_PRETRAIN_SCHEDULES = {"1x": (12, (8, 11)), "2x": (24, (16, 22))}  # epochs, LR steps (epochs)
if PRETRAIN not in _PRETRAIN_SCHEDULES:
    raise ValueError(f"projects/crt_lvis_v1.py: PRETRAIN must be '1x' or '2x', got {PRETRAIN!r}")
_EPOCHS, _STEPS = _PRETRAIN_SCHEDULES[PRETRAIN]
CRT_ITERS = 75000  # stage 2 at batch 16 (configs/decouple/crt_r50_8x2_1x.py line 3)
CRT_STEPS = (50000, 70000)  # (lines 24-31)


def iters(epochs):
    return epochs_to_iters(epochs, NUM_TRAIN_IMAGES, BATCH_SIZE)


train.output_dir = "output/crt_lvis_v1"
train.max_iter = iters(_EPOCHS)
pretrain = make_phase(
    model=model,
    dataloader=dataloader,
    optimizer=optimizer,
    train=train,
    lr_multiplier=multi_step(iters(_EPOCHS), steps=tuple(iters(e) for e in _STEPS), warmup_iters=500),
)

crt = add_crt(make_phase(pretrain))  # classifier only, re-initialised, class-aware sampling
crt["train"].max_iter = CRT_ITERS
crt["lr_multiplier"] = multi_step(CRT_ITERS, steps=CRT_STEPS, warmup_iters=500)

phases = dict(pretrain=pretrain, crt=crt)
del model, dataloader, optimizer, pretrain, crt  # a project's root: `train` and `phases`
