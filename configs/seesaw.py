# Seesaw loss as ltdet2 pieces.
# Defined in ltdet2.config.seesaw (importable outside this checkout); imported here for the LazyConfig files
# that import them relatively, e.g. `from ..configs.seesaw import add_seesaw`.
from ltdet2.config.seesaw import (
    COUNT_INDICATOR,
    SEESAW_EPS,
    SEESAW_P,
    SEESAW_Q,
    TEMPERATURE,
    add_seesaw,
)
