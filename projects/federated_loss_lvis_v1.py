# Detectron2's federated loss on LVIS v1 with the setting of the paper that introduced it (Zhou, Koltun, Krähenbühl,
# "Probabilistic two-stage detection", arXiv 2103.07461: CenterNet2's LVIS loss, its appendix D as the official repo's
# docs/MODEL_ZOO.md line 63 says). The official repo (xingyizhou/CenterNet2) has one federated LVIS config,
# configs/LVIS_CenterNet2_R50_Fed_1x.yaml, on configs/Base-CenterNet2.yaml: CenterNet2 R-50 1x (a CenterNet proposal
# network and cascade heads on a P3-P7 FPN); no Mask R-CNN / Faster R-CNN R-50-FPN config of it exists there or in
# Detectron2's projects (whose federated LVIS configs, projects/ViTDet/configs/LVIS/*, are ViT / MViTv2 / Swin, 50-100
# epochs). This project therefore trains ltdet2's shared LVIS model (configs/lvis_v1_defaults.py: Mask R-CNN R-50-FPN
# from ImageNet weights, as the other LVIS projects here) with that config's loss, sampling, schedule and test settings.
# Where each value comes from:
# - sigmoid cross-entropy and the federated loss: LVIS_CenterNet2_R50_Fed_1x.yaml lines 10-11 (ROI_BOX_HEAD
#   USE_SIGMOID_CE, USE_FED_LOSS); 50 classes per iteration and weights image_count ** 0.5: centernet/config.py lines
#   53-54 (FED_LOSS_NUM_CAT, FED_LOSS_FREQ_WEIGHT; also Detectron2's FED_LOSS_NUM_CLASSES and
#   FED_LOSS_FREQ_WEIGHT_POWER), through ltdet2.config.federated;
# - the sigmoid classifier's biases at -ln 99 (initial probability 0.01): centernet/modeling/roi_heads/
#   custom_fast_rcnn.py lines 33-37 with MODEL.ROI_BOX_HEAD.PRIOR_PROB 0.01 (centernet/config.py line 47), set in code,
#   not in the yaml (Detectron2's own port of the loss keeps zero biases);
# - repeat-factor sampling at threshold 0.001 (square root): the yaml's lines 16-17 (docs/MODEL_ZOO.md line 62: "The
#   models are trained with repeat-factor sampling");
# - 1x: 90000 iterations at batch 16, SGD lr 0.02, steps at 60000 and 80000, linear warm-up over 4000 iterations
#   from 0.00025: Base-CenterNet2.yaml lines 45-51; multi-scale training at short edge 640-800 (line 55; long edge
#   <= 1333, Detectron2's default), which configs/lvis_v1_defaults.py already has;
# - test: 300 detections per image (the yaml's line 19), score threshold 0.02 (line 5; the shared defaults' 1e-4
#   otherwise), per-class NMS at 0.5 (line 6; Detectron2's default already).
# - gradient clipping: Base-CenterNet2.yaml lines 52-53 (SOLVER.CLIP_GRADIENTS.ENABLED, Detectron2's defaults: each
#   parameter's gradient clipped by value at 1.0), through ltdet2.config.optim.add_gradient_clipping.
# Not carried over: the CenterNet2 architecture (the yaml's base, lines 2-40 of Base-CenterNet2.yaml).
#
# RFS keeps the iteration count (Detectron2's convention). One phase: a plain single-phase config (also runs with
# Detectron2's script).
from ltdet2.config.federated import add_federated_loss
from ltdet2.config.optim import add_gradient_clipping
from ltdet2.config.rio import add_rfs
from ltdet2.config.schedules import multi_step

from ..configs.lvis_v1_defaults import dataloader, model, optimizer, train  # noqa: F401

MAX_ITER = 90000  # Base-CenterNet2.yaml line 48
STEPS = (60000, 80000)  # line 47

add_federated_loss(model, dataloader.train.dataset.names, num_classes=50, freq_weight_power=0.5, prior_prob=0.01)
add_rfs(dataloader, threshold=0.001)
model.roi_heads.box_predictor.test_score_thresh = 0.02
add_gradient_clipping(optimizer, clip_type="value", clip_value=1.0)
train.max_iter = MAX_ITER
lr_multiplier = multi_step(MAX_ITER, steps=STEPS, warmup_iters=4000, warmup_factor=0.00025)
train.output_dir = "output/federated_loss_lvis_v1"
