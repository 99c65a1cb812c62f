# LOCE's fine-tune pieces (EBL + MFS).
# Defined in ltdet2.config.loce (importable outside this checkout); imported here for the LazyConfig files
# that import them relatively, e.g. `from ..configs.loce import add_ebl`.
from ltdet2.config.loce import (
    LOCE_TRAINABLE,
    add_ebl,
    add_instance_frequency,
    add_mean_score,
    add_memory_warmup,
    add_mfs,
)
