# Baseline on LVIS v1 with the papers' settings: Mask R-CNN R-50-FPN from ImageNet weights,
# batch 16, lr 0.02, 24 epochs (2x: 180k iterations, steps at 120k / 160k), 300 detections per image.
from ltdet2.engine import make_phase

from ..configs.common.optim import SGD as optimizer
from ..configs.common.schedules import multi_step
from ..configs.common.train import train
from ..configs.data.lvis_v1 import NUM_CLASSES, dataloader
from ..configs.models.mask_rcnn_r50_fpn import model

model.roi_heads.num_classes = NUM_CLASSES
lr_multiplier = multi_step(180000, steps=(120000, 160000), warmup_iters=1000)
train.max_iter = 180000
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.checkpointer.period = 10000
train.output_dir = "output/baseline_lvis_v1"

phases = dict(
    baseline=make_phase(
        model=model, dataloader=dataloader, optimizer=optimizer, lr_multiplier=lr_multiplier, train=train
    ),
)
