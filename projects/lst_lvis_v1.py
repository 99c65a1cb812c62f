# LST on LVIS v1 (no paper or official setting exists; ours): projects/lst_lvis_v0_5.py's settings on the v1 data,
# base 270 classes then the remaining 933 in 6 near-equal phases (156, 156, 156, 155, 155, 155).
from ..configs.common.schedules import epochs_to_iters, multi_step
from ..configs.lst import lst_phases
from ..configs.lvis_v1_defaults import NUM_CLASSES, NUM_TRAIN_IMAGES, dataloader, model, optimizer, train

BATCH_SIZE = 8
PHASE_IMAGES = 30000  # estimated entries of an incremental phase; the builders log the real ones


def iters(epochs, num_images):
    return epochs_to_iters(epochs, num_images, BATCH_SIZE)


train.output_dir = "output/lst_lvis_v1"
dataloader.train.total_batch_size = BATCH_SIZE
optimizer.lr = 0.01
base_iters = iters(10, NUM_TRAIN_IMAGES)
train.max_iter = base_iters
model.roi_heads.batch_size_per_image = 512
phases = lst_phases(
    model,
    dataloader,
    optimizer,
    multi_step(base_iters, steps=(iters(6, NUM_TRAIN_IMAGES), iters(8, NUM_TRAIN_IMAGES)), warmup_iters=1000),
    train,
    num_classes=NUM_CLASSES,
    source="lvis_v1_train",
    source_val="lvis_v1_val",
    base=270,
    num_phases=6,
    incremental_iters=iters(10, PHASE_IMAGES),
    incremental_schedule=lambda n: multi_step(n, steps=(n * 6 // 10,), warmup_iters=0),
    incremental_lr=0.002,
    incremental_rois=100,
)
del model, dataloader, optimizer  # a project's root: `train` and `phases`
