# LST (Hu et al., CVPR 2020): class-incremental Mask R-CNN on LT-Shapes for a CPU. Classes sorted by training
# instance count: "base" trains on the top 30 (400 iterations, the LT-Shapes schedule), then "incremental_1..3"
# add 14 classes each (the last phase is 14 of the 18 rare classes), 100 iterations each at 0.2x the base lr
# (paper: 0.01 -> 0.002) with a step after 60%, on the new classes' images plus the balanced replay of the old
# ones; network expansion, ResNet frozen, L2 distillation of the old classes' cosine logits from the frozen
# previous phase. The class-agnostic mask MLP is a small two-layer one (64 hidden; the official single layer
# would be ~79M parameters here). Evaluation: the classes seen so far, with r/c/f and instance-count buckets.
# The settings: ltdet2/config/lst.py:lt_shapes_lst_phases (shared with projects/lst_ablation.py).
# LVIS: projects/lst_lvis_v0_5.py (the paper's settings), projects/lst_lvis_v1.py.
from ltdet2.config.lst import lt_shapes_lst_phases

from ..configs.lt_shapes_defaults import dataloader, lr_multiplier, optimizer, train
from ..configs.models.mask_rcnn_r18_fpn_small import model

train.output_dir = "output/lst"  # the phases train in output/lst/<phase>

phases = lt_shapes_lst_phases(model, dataloader, optimizer, lr_multiplier, train)
del model, dataloader, optimizer, lr_multiplier  # a project's root: `train` and `phases`
