# The two-phase project of the real-scheduler test (tests/slurm, `make test-slurm`), from
# tiny_two_phase.py: "pretrain", then a LOCE-style "finetune" (MFS memory: a `local` store; mean score:
# a `global` indicator) long enough to be preempted in its middle. A Slurm job loads this file in
# fresh processes, so it registers its dataset itself: the tests' tiny LT-Shapes as lt_shapes_slurm_*,
# generated on first use into $LTDET2_DATASETS (default ~/.cache/ltdet2/datasets; the test generates
# it before submitting).
from ltdet2.data import register_lt_shapes
from ltdet2.engine import make_phase

from ...configs.common.schedules import multi_step
from ...configs.loce import LOCE_TRAINABLE, add_ebl, add_memory_warmup, add_mfs
from ..fixtures.models import TINY_LT_SHAPES
from .tiny_two_phase import phases as _tiny
from .tiny_two_phase import train

_TRAIN, _VAL = register_lt_shapes(seed=3, spec=TINY_LT_SHAPES, name_prefix="lt_shapes_slurm")
PRETRAIN_ITERS, FINETUNE_ITERS = 6, 24
train.output_dir = "output/tiny_slurm"

pretrain = make_phase(_tiny["pretrain"], lr_multiplier=multi_step(PRETRAIN_ITERS, steps=(4,), warmup_iters=1))
pretrain["dataloader"].train.dataset.names = _TRAIN
pretrain["dataloader"].test.dataset.names = _VAL
pretrain["dataloader"].train.num_workers = 1  # a loader worker: it gets the preemption signal too
pretrain["model"].roi_heads.num_classes = TINY_LT_SHAPES.num_classes
pretrain["train"].device = "cpu"
pretrain["train"].max_iter = PRETRAIN_ITERS
pretrain["train"].checkpointer.period = 1000  # no periodic checkpoint in the middle: a preemption saves its own
pretrain["train"].allow_empty_eval = True  # so few iterations may detect nothing; the test compares weights too

finetune = make_phase(pretrain)
add_ebl(finetune["model"])
add_mfs(finetune["model"], capacity=8, num_sampled_classes=4, per_class=2)
finetune["train"].trainable = LOCE_TRAINABLE
add_memory_warmup(finetune["train"], images_per_class=1)
finetune["train"].max_iter = FINETUNE_ITERS
finetune["optimizer"].lr = 0.005
finetune["lr_multiplier"] = multi_step(FINETUNE_ITERS, steps=(FINETUNE_ITERS * 3 // 4,), warmup_iters=1)

phases = dict(pretrain=pretrain, finetune=finetune)
del pretrain, finetune  # a project's root: `train` and `phases`
