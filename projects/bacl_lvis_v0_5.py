# BACL on LVIS v0.5 with the paper's settings (Sec. IV-B, Tab. III / XIII: 27.8 AP, 20.1 APr): Faster
# R-CNN R-50-FPN, the stages of projects/bacl_lvis_v1.py on the v0.5 data (1230 classes, 57k images).
from ltdet2.config.bacl import lvis_phases

from ..configs.lvis_v0_5_defaults import BATCH_SIZE, NUM_CLASSES, NUM_TRAIN_IMAGES, dataloader, optimizer, train
from ..configs.models.faster_rcnn_r50_fpn import model

model.roi_heads.num_classes = NUM_CLASSES
train.output_dir = "output/bacl_lvis_v0_5"
phases = lvis_phases(model, dataloader, optimizer, train, num_train_images=NUM_TRAIN_IMAGES, batch_size=BATCH_SIZE)
del model, dataloader, optimizer  # a project's root: `train` and `phases`
