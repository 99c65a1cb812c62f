# The step-wise method's pieces: smooth-tail sets, head expert, knowledge transfer.
# Defined in ltdet2.config.stepwise (importable outside this checkout); imported here for the LazyConfig files
# that import them relatively, e.g. `from ..configs.stepwise import stepwise_phases`.
from ltdet2.config.stepwise import (
    D_HEAD_QUOTAS,
    D_TAIL_QUOTAS,
    FEATURE_WEIGHT,
    HEAD_MIN_IMAGES,
    PAPER_FEATURE_WEIGHT,
    STEPWISE_TRAINABLE,
    add_head_expert,
    add_knowledge_transfer,
    lvis_phases,
    scaled_groups,
    stepwise_phases,
    use_smooth_tail_set,
)
