"""Data: LVIS metadata (frequency groups, counts), per-class counting, validated registration of
LVIS- / COCO-format datasets, the embedded LT-Shapes dataset, repeat-factor sampling (incl. step-wise RFS), the
copy-paste and validity mappers, exemplar selection, derived datasets and LST's class-incremental phases."""

# the function class_counts stays in its module: exported here it would hide the module
# ltdet2.data.class_counts (import-by-name, e.g. LazyConfig's "_target_", would no longer find it)
from .class_counts import (  # noqa: F401
    dataset_class_image_count,
    dataset_dict_pairs,
    unique_image_class_pairs,
)
from .copy_paste import CopyPasteMapper  # noqa: F401
from .datasets import (  # noqa: F401
    Detectron2LVISSource,
    dataset_category_ids,
    dataset_dicts_with_annotation_ids,
    derived_source,
    evaluation_ground_truth,
    load_lvis_format_json,
    register_lvis_format_dataset,
)
from .derived import build_derived_dataset, register_derived_dataset  # noqa: F401
from .exemplars import ExemplarSetBuilder, select_exemplars, smooth_tail_quota  # noqa: F401
from .incremental import (  # noqa: F401
    IncrementalPhaseBuilder,
    incremental_class_order,
    incremental_class_phases,
    replay_counts,
)
from .lt_shapes import (  # noqa: F401
    LTShapesSpec,
    get_lt_shapes,
    register_all_lt_shapes,
    register_lt_shapes,
)
from .lt_shapes import generate as generate_lt_shapes  # noqa: F401
from .lvis_meta import (  # noqa: F401
    FREQUENCY_GROUPS,
    LVISMeta,
    count_from_annotations,
    frequency_from_image_count,
    load_lvis_meta,
    lvis_meta_from_dataset,
)
from .mappers import ValidityDatasetMapper  # noqa: F401

# registers lt_shapes_train / lt_shapes_val (seed 0) lazily; generates nothing at import
register_all_lt_shapes()
from .samplers import (  # noqa: F401,E402
    STEPWISE_HEAD_GROUPS,
    STEPWISE_TAIL_GROUPS,
    StepwiseRepeatFactorSampler,
    class_repeat_factors,
    image_repeat_factors,
    repeat_factor_sampler,
    repeat_factors_from_dataset_dicts,
    stepwise_repeat_factor_sampler,
)
