from .distillation import kl_distillation, logit_distillation, masked_feature_distillation
from .eqlv2 import EQLv2Loss, eqlv2_loss, eqlv2_weights, weighted_sigmoid_loss
from .equilibrium import EquilibriumLoss, equilibrium_loss
from .federated import FederatedClassWeights
from .foreground_balance import (
    ForegroundBalanceLoss,
    confusion_margins,
    foreground_balance_loss,
    foreground_balance_weights,
    indicator_strengths,
    margin_balanced_loss,
    strength_margins,
)
from .seesaw import (
    SeesawLoss,
    SeesawNormalizedLinear,
    objectness_softmax_loss,
    objectness_softmax_probs,
    seesaw_loss,
)
from .sigmoid_background import sigmoid_background_loss, sigmoid_background_probs

__all__ = [
    "kl_distillation",
    "logit_distillation",
    "masked_feature_distillation",
    "EQLv2Loss",
    "eqlv2_loss",
    "eqlv2_weights",
    "weighted_sigmoid_loss",
    "EquilibriumLoss",
    "equilibrium_loss",
    "FederatedClassWeights",
    "ForegroundBalanceLoss",
    "confusion_margins",
    "foreground_balance_loss",
    "foreground_balance_weights",
    "indicator_strengths",
    "margin_balanced_loss",
    "strength_margins",
    "SeesawLoss",
    "SeesawNormalizedLinear",
    "objectness_softmax_loss",
    "objectness_softmax_probs",
    "seesaw_loss",
    "sigmoid_background_loss",
    "sigmoid_background_probs",
]
