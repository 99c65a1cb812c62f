# RIO on LVIS v1 with the paper's settings (sec. 4.3) on configs/lvis_v1_defaults.py (Mask R-CNN
# R-50-FPN, batch 16, lr 0.02, 180k iterations with steps at 120k / 160k, 300 detections): RFS
# (t=0.001), object replay (classes in <= 30 training images, 60 stored / 20 replayed per class),
# cosine classifier (scale 48). One phase.
from ltdet2.config.rio import add_rio

from ..configs.lvis_v1_defaults import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

add_rio(model, dataloader)
train.output_dir = "output/rio_lvis_v1"
