# The small CPU model without the mask branch.
from .mask_rcnn_r18_fpn_small import FPN_CHANNELS, model  # noqa: F401

model.roi_heads.mask_in_features = None
model.roi_heads.mask_pooler = None
model.roi_heads.mask_head = None
