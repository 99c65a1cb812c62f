# LST on LVIS v0.5 with the paper's settings (Sec. 4.1; Tab. 1: 22.8 mask AP without the generator): Mask R-CNN
# R-50-FPN with LST's cosine box branch and MaskX-style mask head (the official single-layer class-agnostic MLP),
# classes sorted by training instance count, base 270 then 6 phases of 160; batch 8 at the single scale 800, base
# lr 0.01 and incremental lr 0.002, every phase 10 epochs of the set it builds (steps after 6 (and 8) epochs; the
# iterations are logged when the set is built), 100 RoIs per image in the incremental phases
# (ltdet2/config/lst.py:lvis_lst_phases). Initialised from Detectron2's COCO Mask R-CNN R-50-FPN 1x as the paper,
# its box predictor re-initialised; ImageNet instead: lvis_lst_phases(..., init="imagenet"), or the overrides
# phases.base.train.init_checkpoint=detectron2://ImageNetPretrained/MSRA/R-50.pkl
# "phases.base.train.init_reinitialize=[]".
from ltdet2.config.lst import lvis_lst_phases

from ..configs.lvis_v0_5_defaults import NUM_CLASSES, dataloader, model, optimizer, train

train.output_dir = "output/lst_lvis_v0_5"
phases = lvis_lst_phases(
    model,
    dataloader,
    optimizer,
    train,
    num_classes=NUM_CLASSES,
    source="lvis_v0.5_train",
    source_val="lvis_v0.5_val",
    init="coco",  # the paper's
)
del model, dataloader, optimizer  # a project's root: `train` and `phases`
