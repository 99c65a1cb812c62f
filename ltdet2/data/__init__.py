"""Data: LVIS metadata (frequency groups, counts), per-class counting, validated registration of
LVIS- / COCO-format datasets, the embedded LT-Shapes dataset, repeat-factor sampling (incl. step-wise RFS), the
copy-paste and validity mappers, exemplar selection, derived datasets and LST's class-incremental phases."""

# the function class_counts is not exported here: it would hide the module ltdet2.data.class_counts
# (import-by-name, e.g. LazyConfig's "_target_", would no longer find it)
from .categories import (  # noqa: F401
    FREQUENCY_GROUPS,
    dataset_dict_pairs,
    frequency_from_image_count,
    unique_image_class_pairs,
)
from .category_meta import LVISMeta, count_from_annotations, load_lvis_meta  # noqa: F401
from .class_counts import dataset_class_image_count  # noqa: F401
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
    ClassIncrementalSplit,
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
from .lvis_meta import lvis_meta_from_dataset  # noqa: F401
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
