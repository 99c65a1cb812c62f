# The small CPU model without the mask branch.
from .mask_rcnn_r18_fpn_small import model

model.roi_heads.mask_in_features = None
model.roi_heads.mask_pooler = None
model.roi_heads.mask_head = None
