# Detectron2's federated loss as a config piece.
# Defined in ltdet2.config.federated (importable outside this checkout); imported here for the LazyConfig files
# that import them relatively, e.g. `from ..configs.federated import add_federated_loss`.
from ltdet2.config.federated import (
    FED_LOSS_FREQ_WEIGHT_POWER,
    FED_LOSS_NUM_CLASSES,
    add_federated_loss,
)
