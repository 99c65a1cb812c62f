# LST on LVIS v0.5 with the paper's settings (Sec. 4.1; Tab. 1: 22.8 mask AP without the generator): Mask R-CNN
# R-50-FPN with LST's cosine box branch and MaskX-style mask head (the official single-layer class-agnostic MLP),
# classes sorted by training instance count, base 270 then 6 phases of 160; batch 8, base lr 0.01 for 10 epochs,
# incremental lr 0.002 for 10 epochs with a step after 6, 100 RoIs per image (configs/lst.py:lvis_lst_phases).
# The paper initialises from a COCO Mask R-CNN; here the base phase starts from ImageNet (lvis_v1_defaults).
from ..configs.lst import lvis_lst_phases
from ..configs.lvis_v0_5_defaults import NUM_CLASSES, NUM_TRAIN_IMAGES, dataloader, model, optimizer, train

train.output_dir = "output/lst_lvis_v0_5"
phases = lvis_lst_phases(
    model,
    dataloader,
    optimizer,
    train,
    num_classes=NUM_CLASSES,
    num_train_images=NUM_TRAIN_IMAGES,
    source="lvis_v0.5_train",
    source_val="lvis_v0.5_val",
    phase_images=20000,  # estimated entries of a phase (new classes' images + balanced replay)
)
del model, dataloader, optimizer  # a project's root: `train` and `phases`
