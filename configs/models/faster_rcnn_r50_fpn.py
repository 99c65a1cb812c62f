# Faster R-CNN R-50-FPN: the Mask R-CNN definition without the mask branch.
from .mask_rcnn_r50_fpn import model

model.roi_heads.mask_in_features = None
model.roi_heads.mask_pooler = None
model.roi_heads.mask_head = None
