# LOCE (Feng et al., ICCV 2021): decoupled training. "pretrain": softmax cross-entropy;
# "finetune": equilibrium loss + memory-augmented feature sampling, feature extractor frozen.
# Defaults: LT-Shapes on a CPU (fine-tune = 1/4 of the pretrain length, as 6 of 24 epochs).
# LVIS v1 with the paper's settings: projects/loce_lvis_v1.py.
from ltdet2.config.loce import LOCE_TRAINABLE, add_ebl, add_memory_warmup, add_mfs
from ltdet2.config.schedules import multi_step
from ltdet2.engine import make_phase

from ..configs.lt_shapes_defaults import MAX_ITER, dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "output/loce"  # the phases train in output/loce/<phase>
pretrain = make_phase(model=model, dataloader=dataloader, optimizer=optimizer, lr_multiplier=lr_multiplier, train=train)

FINETUNE_ITERS = MAX_ITER // 4
finetune = make_phase(pretrain)
add_ebl(finetune["model"])
add_mfs(finetune["model"])
finetune["train"].trainable = LOCE_TRAINABLE
add_memory_warmup(finetune["train"], images_per_class=5)  # official: memory and mean scores filled first
finetune["train"].max_iter = FINETUNE_ITERS
finetune["train"].checkpointer.period = 50
finetune["lr_multiplier"] = multi_step(  # steps at 3/6 and 5/6 of the fine-tune (paper: epochs 3, 5 of 6)
    FINETUNE_ITERS, steps=(FINETUNE_ITERS // 2, FINETUNE_ITERS * 5 // 6), warmup_iters=10
)

phases = dict(pretrain=pretrain, finetune=finetune)
del model, dataloader, optimizer, lr_multiplier, pretrain, finetune  # a project's root: `train` and `phases`
