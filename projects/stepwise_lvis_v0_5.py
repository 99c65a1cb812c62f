# The step-wise method on LVIS v0.5 (paper Tab. 1: 30.3 AP / 24.9 APr with Deformable DETR R-50; no R-CNN
# figure exists) with Mask R-CNN R-50-FPN: pretrain on the 1x schedule (configs/lvis_v0_5_defaults.py), then
# the head expert on D_head and knowledge transfer on D_tail with the R-CNN schedule we propose
# (ltdet2/config/stepwise.py:lvis_phases; the paper's quotas and the official step-wise RFS).
from ltdet2.config.stepwise import lvis_phases

from ..configs.lvis_v0_5_defaults import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "output/stepwise_lvis_v0_5"
# FT 1 epoch, KT 2 epochs of the sets they build (their lengths are logged when the sets are built)
phases = lvis_phases(model, dataloader, optimizer, lr_multiplier, train, source="lvis_v0.5_train")
del model, dataloader, optimizer, lr_multiplier  # a project's root: `train` and `phases`
