# Seesaw loss (Wang et al., CVPR 2021) on LT-Shapes on a CPU: the baseline (projects/baseline.py: same model, data
# and schedule) with Seesaw's classification as in its official configs: the loss (p 0.8, q 2, eps 1e-2) on the
# objectness-aware scoring (K+2 logits: test-time scores softmax over the classes x objectness foreground
# probability) and the normalised linear classifier (temperature 20), N counted online per class before each loss.
# One phase: a plain single-phase config (also runs with Detectron2's script). LVIS v1 with the paper's setting:
# projects/seesaw_lvis_v1.py.
from ltdet2.config.seesaw import add_seesaw

from ..configs.lt_shapes_defaults import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

add_seesaw(model)
train.output_dir = "output/seesaw"
