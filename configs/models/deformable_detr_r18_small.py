# A two-stage Deformable DETR with iterative box refinement (ltdet2.modeling.DeformableDETR: transformers' model on a
# Detectron2 backbone) small enough to train from scratch on a 2-core CPU on LT-Shapes (128x128 images): the small
# R-CNN's ResNet-18 with BatchNorm (no pretrained weights) at strides 8/16/32 plus the stride-64 level, 2 encoder and
# 2 decoder layers at width 128 (8 heads, FFN 512), 100 queries (an LT-Shapes image holds a few objects; a 128x128
# image gives the encoder 340 positions, of which two-stage mode keeps num_queries). The paper's sizes (R-50, 6/6
# layers, width 256, FFN 1024, 300 queries) are DeformableDETR's defaults (projects/deformable_detr_lvis_v1.py).
# Focal loss and matcher at the official weights (cls 2, L1 5, GIoU 2; alpha 0.25), losses on every decoder layer
# and on the encoder's proposals; up to 300 detections per image (LVIS evaluation). The class count is the data's:
# the project sets it.
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet

from ltdet2.modeling.meta_arch.deformable_detr import DeformableDETR

model = L(DeformableDETR)(
    backbone=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="BN"),
        stages=L(ResNet.make_default_stages)(depth=18, norm="BN"),
        out_features=["res3", "res4", "res5"],
    ),
    num_classes=80,  # the data's: set by the project
    d_model=128,
    encoder_layers=2,
    decoder_layers=2,
    num_heads=8,
    ffn_dim=512,
    n_points=4,
    dropout=0.1,
    num_feature_levels=4,
    num_queries=100,
    two_stage=True,
    with_box_refine=True,
    aux_loss=True,
    encoder_loss=True,
    matcher_costs=dict(cls=2, bbox=5, giou=2),
    loss_weights=dict(cls=2.0, bbox=5.0, giou=2.0),
    focal_alpha=0.25,
    num_detections=300,
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
)
