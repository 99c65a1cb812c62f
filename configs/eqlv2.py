# EQLv2 as ltdet2 pieces.
# Defined in ltdet2.config.eqlv2 (importable outside this checkout); imported here for the LazyConfig files
# that import them relatively, e.g. `from ..configs.eqlv2 import add_eqlv2`.
from ltdet2.config.eqlv2 import (
    EQLV2_ALPHA,
    EQLV2_GAMMA,
    EQLV2_MU,
    GRADIENT_INDICATOR,
    add_eqlv2,
)
