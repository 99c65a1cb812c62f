# projects/lst.py's phases on the tiny LT-Shapes of the tests (tests/fixtures/models.py: TINY_LT_SHAPES, 8 classes,
# registered as lt_shapes_e2e_train / _val by tests/conftest.py): base 4 classes, then 2 phases of 2 classes, a few
# iterations each. The same configs/lst.py:lst_phases as the project; only the sizes differ; the meta weight
# generator is on (the projects' default is off), so the end-to-end test covers its phase-end write and resume.
from ...configs.common.schedules import multi_step
from ...configs.lst import lst_phases
from ...configs.lt_shapes_defaults import dataloader, lr_multiplier, optimizer, train
from ...configs.models.mask_rcnn_r18_fpn_small import model

train.output_dir = "output/tiny_lst"
train.max_iter = 4
train.checkpointer.period = 2
train.allow_empty_eval = True  # a few iterations detect little; the tests check the phases' state
dataloader.train.total_batch_size = 4
# an untrained Mask R-CNN fills its 300 detections at 1e-4: masks for 10 per image keep the evaluation fast
model.roi_heads.box_predictor.test_topk_per_image = 10
dataloader.train.num_workers = 0
dataloader.test.num_workers = 0
phases = lst_phases(
    model,
    dataloader,
    optimizer,
    lr_multiplier,
    train,
    num_classes=8,
    source="lt_shapes_e2e_train",
    source_val="lt_shapes_e2e_val",
    base=4,
    num_phases=2,
    incremental_iters=4,
    incremental_schedule=lambda iters: multi_step(iters, steps=(iters // 2,), warmup_iters=1),
    incremental_lr=optimizer.lr * 0.2,
    agnostic_mlp_dim=16,
    name_prefix="tiny_lst",
    weight_generator=dict(row_norm="keep", batch_size=8),
)
del model, dataloader, optimizer, lr_multiplier
