# Learning-rate multipliers: linear warm-up, then step decay by 10x at each milestone. The helpers are defined in
# ltdet2.config.schedules (importable outside this checkout); imported here for the LazyConfig files that import them
# relatively (`from ..configs.common.schedules import multi_step`).
from ltdet2.config.schedules import epochs_to_iters, multi_step

# Detectron2's 1x schedule at batch 16 (90k iterations, steps at 60k and 80k).
lr_multiplier = multi_step(90000, steps=(60000, 80000))
