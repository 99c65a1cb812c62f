# BACL's pieces: representation learning (stage 1), classifier learning with FCBL + FHM (stage 2).
# Defined in ltdet2.config.bacl (importable outside this checkout); imported here for the LazyConfig files
# that import them relatively, e.g. `from ..configs.bacl import add_classifier_learning`.
from ltdet2.config.bacl import (
    BACL_TRAINABLE,
    INDICATOR_KINDS,
    REPRESENTATION_WEIGHT_DECAY,
    add_classifier_learning,
    add_fcbl,
    add_fhm,
    add_indicator,
    add_representation_learning,
    keep_more_proposals,
    lvis_phases,
    use_sigmoid_background,
)
