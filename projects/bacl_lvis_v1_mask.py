# BACL with Mask R-CNN R-50-FPN on LVIS v1 (paper Tab. XIV: mask AP 25.4, APr 17.7): the stages of
# projects/bacl_lvis_v1.py; the mask head trains in both stages. The official Mask R-CNN configs
# (mask_rcnn_r50_fpn_normed_mask_*) use a cosine mask predictor, not in the paper: ltdet2's
# NormalizedMaskRCNNConvUpsampleHead, here in both stages (set the mask head's _target_ back to
# Detectron2's MaskRCNNConvUpsampleHead for the plain one).
from ltdet2.config.bacl import lvis_phases
from ltdet2.modeling import NormalizedMaskRCNNConvUpsampleHead

from ..configs.lvis_v1_defaults import BATCH_SIZE, NUM_TRAIN_IMAGES, dataloader, model, optimizer, train

model.roi_heads.mask_head._target_ = NormalizedMaskRCNNConvUpsampleHead
train.output_dir = "output/bacl_lvis_v1_mask"
phases = lvis_phases(model, dataloader, optimizer, train, num_train_images=NUM_TRAIN_IMAGES, batch_size=BATCH_SIZE)
del model, dataloader, optimizer  # a project's root: `train` and `phases`
