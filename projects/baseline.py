# Baseline: plain softmax cross-entropy Faster R-CNN on LT-Shapes on a CPU. One phase, so a plain
# single-phase config: it trains in train.output_dir, with ltdet2's script or Detectron2's own
# tools/lazyconfig_train_net.py. For LVIS v1: projects/baseline_lvis_v1.py.
from ..configs.lt_shapes_defaults import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.output_dir = "output/baseline"
