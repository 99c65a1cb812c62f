# RIO's pieces: repeat-factor sampling, object replay, the cosine classifier.
# Defined in ltdet2.config.rio (importable outside this checkout); imported here for the LazyConfig files
# that import them relatively, e.g. `from ..configs.rio import add_rio`.
from ltdet2.config.rio import (
    COSINE_SCALE,
    REPLAY_CAPACITY,
    REPLAY_MAX_IMAGES,
    REPLAY_PER_CLASS,
    RFS_THRESHOLD,
    add_cosine_classifier,
    add_object_replay,
    add_rfs,
    add_rio,
)
