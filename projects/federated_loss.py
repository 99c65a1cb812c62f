# Detectron2's federated loss (FastRCNNOutputLayers with use_fed_loss and use_sigmoid_ce; CenterNet2's LVIS loss)
# on LT-Shapes on a CPU: the baseline (projects/baseline.py: same model, data and schedule) with sigmoid
# cross-entropy over the batch's classes and negative classes drawn with p ∝ image_count ** 0.5 (the training set's
# per-class image counts) until 50 classes per iteration, Detectron2's defaults (on LT-Shapes' 72 classes that is
# most of them; fed_loss_num_classes=... overrides it). The box predictor stays Detectron2's own. One phase: a
# plain single-phase config (also runs with Detectron2's script).
from ltdet2.config.federated import add_federated_loss

from ..configs.lt_shapes_defaults import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

add_federated_loss(model, dataloader.train.dataset.names)
train.output_dir = "output/federated_loss"
