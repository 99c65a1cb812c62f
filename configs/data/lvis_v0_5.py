# LVIS v0.5: the v1 data settings on Detectron2's v0.5 registrations (1230 classes), under
# $DETECTRON2_DATASETS/lvis and coco as v1's (see configs/data/lvis_v1.py).
from .lvis_v1 import dataloader

dataloader.train.dataset.names = "lvis_v0.5_train"
dataloader.test.dataset.names = "lvis_v0.5_val"

NUM_CLASSES = 1230
NUM_TRAIN_IMAGES = 57263
