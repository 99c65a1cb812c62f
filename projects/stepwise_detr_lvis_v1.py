# The step-wise method on LVIS v1 with its own detector and the paper's settings (Dong et al., ICCV 2023, Tab. 1:
# 28.7 AP / 21.8 APr with Deformable DETR R-50, against the baseline's 25.1 / 11.9): pretrain =
# projects/deformable_detr_lvis_v1.py (50 epochs, AdamW 2e-4, x0.1 after 40) with the step-wise code's loss weights
# (cls 3, L1 5, GIoU 2); then FT: the class heads and input projections on D_head (200 per head class, 30 per tail
# class), 1 epoch at 2e-5; KT: the same parts on D_tail (50 per head class, every tail annotation), 2 epochs at
# 2e-4, x0.1 after the first, with the frozen head expert as teacher (feature distillation 1, KL 0.1 per decoder
# layer); the official step-wise RFS in each set (ltdet2/config/stepwise_detr.py:lvis_detr_phases).
from ltdet2.config.stepwise_detr import lvis_detr_phases

from .deformable_detr_lvis_v1 import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "output/stepwise_detr_lvis_v1"
# FT 1 epoch, KT 2 epochs of the sets they build (their lengths are logged when the sets are built)
phases = lvis_detr_phases(model, dataloader, optimizer, lr_multiplier, train, source="lvis_v1_train")
del model, dataloader, optimizer, lr_multiplier  # a project's root: `train` and `phases`
