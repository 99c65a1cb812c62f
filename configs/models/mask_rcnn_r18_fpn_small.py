# A Mask R-CNN small enough to train from scratch on a 2-core CPU on LT-Shapes (128x128 images):
# ResNet-18 with BatchNorm (no pretrained weights), FPN and heads at 128 channels, anchors 16-256,
# 128 RoIs per image, LVIS-style test settings (300 detections, score threshold 1e-4). The class
# count is the data's: the *_defaults.py configs set it.
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet

from ltdet2.layers import FastCPUROIPooler

from .mask_rcnn_r50_fpn import model

FPN_CHANNELS = 128

model.backbone.bottom_up = L(ResNet)(
    stem=L(BasicStem)(in_channels=3, out_channels=64, norm="BN"),
    stages=L(ResNet.make_default_stages)(depth=18, norm="BN"),
    out_features=["res2", "res3", "res4", "res5"],
)
model.backbone.out_channels = FPN_CHANNELS

model.proposal_generator.head.in_channels = FPN_CHANNELS
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.pre_nms_topk = (1000, 500)  # small images: fewer proposals
model.proposal_generator.post_nms_topk = (500, 300)

model.roi_heads.batch_size_per_image = 128
model.roi_heads.box_head.input_shape = ShapeSpec(channels=FPN_CHANNELS, height=7, width=7)
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=FPN_CHANNELS, width=14, height=14)
model.roi_heads.mask_head.conv_dims = [FPN_CHANNELS] * 3

# CPU speed (issue 29; docs/benchmarks.md): the poolers' RoIAlign backward runs as matmuls on CPU (torchvision's
# one-thread kernel was half of a training step), and the mask head's convolutions in channels-last layout. Same
# values up to float rounding; on CUDA, and in inference, the poolers are Detectron2's. fast_backward=False and
# channels_last=False give Detectron2's poolers exactly (the A/B switch of scripts/benchmark_step_time.py).
model.roi_heads.box_pooler._target_ = FastCPUROIPooler
model.roi_heads.box_pooler.fast_backward = True
model.roi_heads.mask_pooler._target_ = FastCPUROIPooler
model.roi_heads.mask_pooler.fast_backward = True
model.roi_heads.mask_pooler.channels_last = True
