# BACL on LVIS v1 with the paper's settings (Sec. IV-B, Tab. XII): Faster R-CNN R-50-FPN from ImageNet
# weights, 12 + 12 epochs at batch 16, lr 0.02 with x0.1 at epochs 8 and 11 (500-iteration warm-up);
# "representation": sigmoid classifier with a background channel, copy-paste at 1280 px (LSJ-lite
# 0.8-1.25, flip), 2000 proposals kept in training, weight decay 5e-5; "classifier": backbone, FPN and
# box-head FCs frozen, FCBL (alpha 0.85, p_t 0.7, global confusion matrix) + FHM (c=8 x m=12 per process,
# beta 0.9), multi-scale 640-800 + flip, weight decay 1e-4. Test: 1333x800, 300 detections, score 1e-4.
# FHM's c and m are per process: the official runs use 8 GPUs x 2 images (`--num-gpus 8`).
from ltdet2.config.bacl import lvis_phases

from ..configs.lvis_v1_defaults import BATCH_SIZE, NUM_CLASSES, NUM_TRAIN_IMAGES, dataloader, optimizer, train
from ..configs.models.faster_rcnn_r50_fpn import model

model.roi_heads.num_classes = NUM_CLASSES
train.output_dir = "output/bacl_lvis_v1"
phases = lvis_phases(model, dataloader, optimizer, train, num_train_images=NUM_TRAIN_IMAGES, batch_size=BATCH_SIZE)
del model, dataloader, optimizer  # a project's root: `train` and `phases`
