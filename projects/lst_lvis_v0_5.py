# LST on LVIS v0.5 with the paper's settings (Sec. 4.1; Tab. 1: 22.8 mask AP without the generator): Mask R-CNN
# R-50-FPN with LST's cosine box branch and MaskX-style mask head (the official single-layer class-agnostic MLP),
# classes sorted by training instance count, base 270 then 6 phases of 160. Base: lr 0.01 at batch 8 for 10
# epochs, steps at 6 and 8; incremental: lr 0.002 for 10 epochs with a step after 6, 100 sampled RoIs per image,
# the ResNet frozen, L2 distillation of the old classes' logits. The paper initialises from a COCO Mask R-CNN;
# here the base phase starts from ImageNet (configs/lvis_v1_defaults.py). Epoch lengths use estimated set sizes
# (the builders log the real ones).
from ..configs.common.schedules import epochs_to_iters, multi_step
from ..configs.lst import lst_phases
from ..configs.lvis_v0_5_defaults import NUM_CLASSES, NUM_TRAIN_IMAGES, dataloader, model, optimizer, train

BATCH_SIZE = 8  # the paper's
PHASE_IMAGES = 20000  # estimated entries of an incremental phase (new classes' images + balanced replay)


def iters(epochs, num_images):
    return epochs_to_iters(epochs, num_images, BATCH_SIZE)


train.output_dir = "output/lst_lvis_v0_5"
dataloader.train.total_batch_size = BATCH_SIZE
optimizer.lr = 0.01
base_iters = iters(10, NUM_TRAIN_IMAGES)  # the base classes are in nearly every image
train.max_iter = base_iters
model.roi_heads.batch_size_per_image = 512  # paper: 512 RoIs at 1:3 in the base phase
phases = lst_phases(
    model,
    dataloader,
    optimizer,
    multi_step(base_iters, steps=(iters(6, NUM_TRAIN_IMAGES), iters(8, NUM_TRAIN_IMAGES)), warmup_iters=1000),
    train,
    num_classes=NUM_CLASSES,
    source="lvis_v0.5_train",
    source_val="lvis_v0.5_val",
    base=270,
    num_phases=6,
    incremental_iters=iters(10, PHASE_IMAGES),
    incremental_schedule=lambda n: multi_step(n, steps=(n * 6 // 10,), warmup_iters=0),
    incremental_lr=0.002,
    incremental_rois=100,
)
del model, dataloader, optimizer  # a project's root: `train` and `phases`
