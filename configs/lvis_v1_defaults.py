# Shared defaults for LVIS v1 with the papers' settings: Mask R-CNN R-50-FPN from ImageNet weights,
# batch 16, lr 0.02, 2x schedule (180k iterations, steps at 120k / 160k), 300 detections per image.
# Needs the data under $DETECTRON2_DATASETS (Detectron2's LVIS registrations) and a GPU.
from .common.optim import SGD as optimizer
from .common.schedules import multi_step
from .common.train import train
from .data.lvis_v1 import NUM_CLASSES, NUM_TRAIN_IMAGES, dataloader  # noqa: F401
from .models.mask_rcnn_r50_fpn import model

model.roi_heads.num_classes = NUM_CLASSES
BATCH_SIZE = 16
MAX_ITER = 180000
lr_multiplier = multi_step(MAX_ITER, steps=(120000, 160000), warmup_iters=1000)
train.max_iter = MAX_ITER
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.checkpointer.period = 10000
