# LOCE's dataset-guided ablation on the end-to-end test's tiny LT-Shapes (registered by the test as
# lt_shapes_e2e_*): EBL margins and MFS sampling from training instance counts, not mean scores.
from ...configs.loce import add_ebl, add_mfs
from ...configs.models.faster_rcnn_r18_fpn_small import model

model.roi_heads.num_classes = 8
add_ebl(model, guide="instance_frequency", dataset_name="lt_shapes_e2e_train")
add_mfs(model, guide="instance_frequency")
