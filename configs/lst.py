# LST's pieces: the class-incremental phases of a Mask R-CNN project.
# Defined in ltdet2.config.lst (importable outside this checkout); imported here for the LazyConfig files
# that import them relatively, e.g. `from ..configs.lst import lst_phases`.
from ltdet2.config.lst import (
    COCO_MASK_RCNN,
    COCO_REINITIALIZE,
    GENERATOR_TERM_OPTIONS,
    IMAGENET_R50,
    LST_INCREMENTAL_TRAINABLE,
    LST_LVIS_INITS,
    LST_TOP3_FROZEN_TRAINABLE,
    LT_SHAPES_INCREMENTAL_ITERS,
    LT_SHAPES_NUM_CLASSES,
    add_hook,
    add_weight_generator,
    lst_phases,
    lt_shapes_lst_phases,
    lvis_lst_phases,
    replay_draw_options,
    split_generator_options,
    use_lst_lvis_init,
    use_lst_model,
    use_phase_datasets,
)
