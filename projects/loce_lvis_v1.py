# LOCE on LVIS v1 with the paper's settings (sec. 4.1) on configs/lvis_v1_defaults.py: Mask R-CNN
# R-50-FPN, batch 16, lr 0.02; "pretrain" 24 epochs (steps at 16 / 22) with softmax CE; "finetune"
# 6 epochs (steps at 3 / 5) with EBL (alpha 0.9, background score 0.01) + MFS (M 80 per class in
# float16, k 8 classes x m 4 features); 300 detections, score threshold 1e-4.

from ltdet2.config.loce import LOCE_TRAINABLE, add_ebl, add_memory_warmup, add_mfs
from ltdet2.config.schedules import epochs_to_iters, multi_step
from ltdet2.engine import make_phase
from ltdet2.modeling import NormalizedMaskRCNNConvUpsampleHead

from ..configs.lvis_v1_defaults import (
    BATCH_SIZE,
    NUM_TRAIN_IMAGES,
    dataloader,
    model,
    optimizer,
    train,
)


def iters(epochs):
    return epochs_to_iters(epochs, NUM_TRAIN_IMAGES, BATCH_SIZE)


train.output_dir = "output/loce_lvis_v1"
model.roi_heads.mask_head._target_ = NormalizedMaskRCNNConvUpsampleHead  # official LOCE configs, both stages
train.max_iter = iters(24)
pretrain = make_phase(
    model=model,
    dataloader=dataloader,
    optimizer=optimizer,
    train=train,
    lr_multiplier=multi_step(iters(24), steps=(iters(16), iters(22)), warmup_iters=1000),
)

finetune = make_phase(pretrain)
add_ebl(finetune["model"])
add_mfs(finetune["model"], storage_dtype="float16")  # 1203x80x256x7x7: 2.4 GB
finetune["train"].trainable = LOCE_TRAINABLE
add_memory_warmup(finetune["train"], images_per_class=5)  # official: memory and mean scores filled first
finetune["train"].max_iter = iters(6)
finetune["lr_multiplier"] = multi_step(iters(6), steps=(iters(3), iters(5)), warmup_iters=500)

phases = dict(pretrain=pretrain, finetune=finetune)
del model, dataloader, optimizer, pretrain, finetune  # a project's root: `train` and `phases`
