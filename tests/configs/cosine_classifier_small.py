# The small CPU model with RIO's cosine classifier at scale 10 (tests/test_rio.py).
from ...configs.models.faster_rcnn_r18_fpn_small import model
from ...configs.rio import add_cosine_classifier

add_cosine_classifier(model, scale=10.0)
