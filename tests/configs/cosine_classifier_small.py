# The small CPU model with RIO's cosine classifier at scale 10 (tests/test_rio.py), for the tests'
# class count (tests/fixtures/models.py: NUM_CLASSES), set before the classifier copies it.
from ...configs.models.faster_rcnn_r18_fpn_small import model
from ...configs.rio import add_cosine_classifier

model.roi_heads.num_classes = 6
add_cosine_classifier(model, variant="cosine", scale=10.0)
