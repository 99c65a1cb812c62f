# Two-stage Deformable DETR with iterative box refinement on LT-Shapes on a CPU (the step-wise paper's detector;
# ltdet2.modeling.DeformableDETR, configs/models/deformable_detr_r18_small.py): the small ResNet-18 from scratch, 2/2
# transformer layers at width 128, 100 queries; batch 8 and the LT-Shapes data of the R-CNN projects (without masks).
# The paper's optimisation: AdamW lr 2e-4 (backbone, sampling offsets and reference points x0.1), weight decay 1e-4
# on every parameter, gradient norm clipped to 0.1, no warm-up, lr x0.1 at 80% of training (the paper: epoch 40 of
# 50). One phase: a plain single-phase config. For LVIS v1: projects/deformable_detr_lvis_v1.py.
from detectron2.config import LazyCall as L

from ltdet2.config.schedules import multi_step
from ltdet2.data.lt_shapes import LTShapesSpec

from ..configs.common.optim import DeformableDETRAdamW
from ..configs.lt_shapes_defaults import dataloader, train
from ..configs.models.deformable_detr_r18_small import model

model.num_classes = LTShapesSpec().num_classes
dataloader.train.mapper.use_instance_mask = False  # boxes only

optimizer = DeformableDETRAdamW

MAX_ITER = 2000
lr_multiplier = multi_step(MAX_ITER, steps=(int(0.8 * MAX_ITER),), warmup_iters=0)
train.max_iter = MAX_ITER
train.checkpointer.period = 500
train.output_dir = "output/deformable_detr"
