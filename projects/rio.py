# RIO (Chang et al., ICML 2021): end-to-end training with image-level repeat-factor sampling (RFS,
# threshold 0.001), object-centric memory replay of the classes in at most 30 training images
# (60 stored post-FC features per class, 20 replayed per class present) and a cosine classifier
# (scale 48, learnable). One phase: a plain single-phase config (also runs with Detectron2's script).
# Defaults: LT-Shapes on a CPU with the baseline's schedule. LVIS with the paper's settings:
# projects/rio_lvis_v0_5.py, projects/rio_lvis_v1.py; ablation: projects/rio_ablation.py.
from ltdet2.config.rio import add_rio

from ..configs.lt_shapes_defaults import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.output_dir = "output/rio"
add_rio(model, dataloader)
