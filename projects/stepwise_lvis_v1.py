# The step-wise method on LVIS v1 (paper Tab. 1: 28.7 AP / 21.8 APr with Deformable DETR R-50; no R-CNN
# figure exists) with Mask R-CNN R-50-FPN: pretrain on the shared 2x schedule (configs/lvis_v1_defaults.py),
# then the head expert on D_head and knowledge transfer on D_tail with the R-CNN schedule we propose
# (ltdet2/config/stepwise.py:lvis_phases; the paper's quotas and the official step-wise RFS).
from ltdet2.config.stepwise import lvis_phases

from ..configs.lvis_v1_defaults import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "output/stepwise_lvis_v1"
# FT 1 epoch, KT 2 epochs of the sets they build (their lengths are logged when the sets are built)
phases = lvis_phases(model, dataloader, optimizer, lr_multiplier, train, source="lvis_v1_train")
del model, dataloader, optimizer, lr_multiplier  # a project's root: `train` and `phases`
