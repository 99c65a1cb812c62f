# Optimizers: Detectron2's SGD with the usual R-CNN settings (lr for batch 16).
from detectron2.model_zoo import get_config

SGD = get_config("common/optim.py").SGD
