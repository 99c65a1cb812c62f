# Shared by the method pieces: switch a Detectron2 R-CNN config to ltdet2's heads, read its sizes.
# Defined in ltdet2.config.long_tail (importable outside this checkout); imported here for the LazyConfig files
# that import them relatively, e.g. `from ..configs.long_tail import use_long_tail_heads`.
from ltdet2.config.long_tail import (
    add_feature_source,
    box_feature_dim,
    pooled_feature_shape,
    roi_heads_num_classes,
    use_long_tail_heads,
)
