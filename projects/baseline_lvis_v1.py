# Baseline on LVIS v1 with the papers' settings (configs/lvis_v1_defaults.py): Mask R-CNN R-50-FPN,
# softmax cross-entropy, 2x schedule at batch 16, 300 detections per image. One phase: a plain
# single-phase config.
from ..configs.lvis_v1_defaults import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.output_dir = "output/baseline_lvis_v1"
