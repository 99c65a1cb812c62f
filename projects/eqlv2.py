# EQLv2 (Tan et al., CVPR 2021) on LT-Shapes on a CPU: the baseline (projects/baseline.py: same model, data and
# schedule) with EQLv2's classification as in its official code: the sigmoid classifier with a background column
# (K+1 logits, zero biases; test-time scores each class's sigmoid times the objectness 1 - sigmoid(z_K)) trained with
# binary cross-entropy whose positive / negative terms of class j are weighted by q_j = 1 + alpha (1 - f(g_j)) and
# r_j = f(g_j), g_j the ratio of the class's accumulated positive to negative gradients (gamma 12, mu 0.8, alpha 4),
# accumulated after each loss. One phase: a plain single-phase config (also runs with Detectron2's script). LVIS v1
# with the paper's setting: projects/eqlv2_lvis_v1.py.
from ltdet2.config.eqlv2 import add_eqlv2

from ..configs.lt_shapes_defaults import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

add_eqlv2(model)
train.output_dir = "output/eqlv2"
