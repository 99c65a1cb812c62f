# Shared defaults for every project on LT-Shapes on a CPU: the small Faster R-CNN trained from
# scratch, batch 8, lr 0.02 with 100 warm-up iterations, 400 iterations (times: docs/benchmarks.md).
# A single-phase config: projects use it as is, or copy it into their phases (ltdet2.engine.make_phase).
from ltdet2.data.lt_shapes import LTShapesSpec

from .common.optim import SGD as optimizer
from .common.schedules import multi_step
from .common.train import train
from .data.lt_shapes import dataloader
from .models.faster_rcnn_r18_fpn_small import model

model.roi_heads.num_classes = LTShapesSpec().num_classes  # the one place that sets LT-Shapes' class count

MAX_ITER = 400
lr_multiplier = multi_step(MAX_ITER, steps=(300, 370), warmup_iters=100)
train.max_iter = MAX_ITER
train.checkpointer.period = 100  # an interrupted demo resumes with --resume
train.log_period = 20
train.output_dir = "output/lt_shapes"
