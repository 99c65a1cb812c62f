# A two-phase project on a tiny LT-Shapes for the end-to-end test: "pretrain", then "finetune"
# at a lower learning rate starting from pretrain's final checkpoint. The test registers the
# tiny dataset and overrides the dataset names and class count.
from ltdet2.engine import make_phase

from ...configs.common.schedules import multi_step
from ...configs.lt_shapes_defaults import dataloader, model, optimizer, train

dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.test.num_workers = 0
model.roi_heads.batch_size_per_image = 32
model.proposal_generator.pre_nms_topk = (200, 100)
model.proposal_generator.post_nms_topk = (100, 50)
train.max_iter = 4
train.checkpointer.period = 2
train.log_period = 1

pretrain = make_phase(
    model=model,
    dataloader=dataloader,
    optimizer=optimizer,
    train=train,
    lr_multiplier=multi_step(4, steps=(3,), warmup_iters=1),
)
finetune = make_phase(pretrain)
finetune["optimizer"].lr = 0.002

phases = dict(pretrain=pretrain, finetune=finetune)
del model, dataloader, optimizer, pretrain, finetune  # a project's root: `train` and `phases`
