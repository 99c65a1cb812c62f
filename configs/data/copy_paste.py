# Simple copy-paste with large-scale-jitter-lite (BACL stage 1).
# Defined in ltdet2.config.copy_paste (importable outside this checkout); imported here for the LazyConfig files
# that import them relatively, e.g. `from ..configs.data.copy_paste import add_copy_paste`.
from ltdet2.config.copy_paste import (
    LVIS_IMAGE_SIZE,
    SCALE_RANGE,
    add_copy_paste,
)
