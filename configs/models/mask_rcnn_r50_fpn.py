# Mask R-CNN R-50-FPN as in the LVIS papers (Detectron2's model zoo definition), LVIS settings:
# up to 300 detections per image with a score threshold of 1e-4, as LVIS evaluation requires.
# The class count is the data's: the *_defaults.py configs set it.
from detectron2.model_zoo import get_config

model = get_config("common/models/mask_rcnn_fpn.py").model
model.roi_heads.box_predictor.test_score_thresh = 0.0001
model.roi_heads.box_predictor.test_topk_per_image = 300
