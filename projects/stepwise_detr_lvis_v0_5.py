# The step-wise method on LVIS v0.5 with its own detector and the paper's settings (Dong et al., ICCV 2023, Tab. 1:
# 30.3 AP / 24.9 APr with Deformable DETR R-50, against the baseline's 27.0 / 15.5): projects/stepwise_detr_lvis_v1.py
# on the v0.5 data (1230 classes, 57k training images): pretrain 50 epochs (x0.1 after 40), FT 1 epoch of D_head at
# 2e-5, KT 2 epochs of D_tail at 2e-4, x0.1 after the first (ltdet2/config/stepwise_detr.py:lvis_detr_phases).
from ltdet2.config.schedules import epochs_to_iters, multi_step
from ltdet2.config.stepwise_detr import lvis_detr_phases

from ..configs.data.lvis_v0_5 import NUM_CLASSES, NUM_TRAIN_IMAGES
from ..configs.lvis_v1_defaults import BATCH_SIZE
from .deformable_detr_lvis_v1 import dataloader, model, optimizer, train

dataloader.train.dataset.names = "lvis_v0.5_train"  # DETR's augmentation of the v1 project, on the v0.5 data
dataloader.test.dataset.names = "lvis_v0.5_val"
model.num_classes = NUM_CLASSES
PRETRAIN_ITERS = epochs_to_iters(50, NUM_TRAIN_IMAGES, BATCH_SIZE)
train.max_iter = PRETRAIN_ITERS
lr_multiplier = multi_step(PRETRAIN_ITERS, steps=(epochs_to_iters(40, NUM_TRAIN_IMAGES, BATCH_SIZE),), warmup_iters=0)
train.output_dir = "output/stepwise_detr_lvis_v0_5"
# FT 1 epoch, KT 2 epochs of the sets they build (their lengths are logged when the sets are built)
phases = lvis_detr_phases(model, dataloader, optimizer, lr_multiplier, train, source="lvis_v0.5_train")
del model, dataloader, optimizer, lr_multiplier  # a project's root: `train` and `phases`
