# LVIS v0.5 with the papers' settings: the v1 defaults on the v0.5 data (1230 classes) with the
# 1x schedule (90k iterations, steps at 60k / 80k).
from .common.schedules import multi_step
from .data.lvis_v0_5 import NUM_CLASSES, NUM_TRAIN_IMAGES, dataloader  # noqa: F401
from .lvis_v1_defaults import BATCH_SIZE, model, optimizer, train  # noqa: F401

model.roi_heads.num_classes = NUM_CLASSES
MAX_ITER = 90000
lr_multiplier = multi_step(MAX_ITER, steps=(60000, 80000), warmup_iters=1000)
train.max_iter = MAX_ITER
