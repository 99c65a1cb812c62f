# LOCE ablation on LT-Shapes (the README's LOCE table): one softmax-CE pretrain, then four
# fine-tunes of equal length from that same checkpoint: CE, EBL only, MFS only, EBL + MFS (LOCE).
# Run: python scripts/lazyconfig_train_net.py --config-file projects/loce_ablation.py train.seed=N
from ltdet2.config.loce import LOCE_TRAINABLE, add_ebl, add_mfs
from ltdet2.config.long_tail import use_long_tail_heads
from ltdet2.engine import make_phase

from .loce import phases as loce_phases
from .loce import train

train.output_dir = "output/loce_ablation"
pretrain, finetune = loce_phases["pretrain"], loce_phases["finetune"]

finetune_ce = make_phase(pretrain, lr_multiplier=finetune["lr_multiplier"])
finetune_ce["train"].update(
    trainable=LOCE_TRAINABLE,
    max_iter=finetune["train"].max_iter,
    checkpointer=finetune["train"].checkpointer,
    init_from_phase="pretrain",
)
use_long_tail_heads(finetune_ce["model"])  # same heads, stock loss: identical to StandardROIHeads

# the memory phases start with LOCE's official warm-up (the CE fine-tune has nothing to fill)
finetune_ebl = make_phase(finetune_ce)
add_ebl(finetune_ebl["model"])
finetune_ebl["train"].hooks = finetune["train"].hooks

finetune_mfs = make_phase(finetune_ce)
add_mfs(finetune_mfs["model"])
finetune_mfs["train"].hooks = finetune["train"].hooks

finetune_loce = make_phase(finetune_ce)
add_ebl(finetune_loce["model"])
add_mfs(finetune_loce["model"])
finetune_loce["train"].hooks = finetune["train"].hooks

phases = dict(
    pretrain=pretrain,
    finetune_ce=finetune_ce,
    finetune_ebl=finetune_ebl,
    finetune_mfs=finetune_mfs,
    finetune_loce=finetune_loce,
)
# a project's root: `train` and `phases`
del loce_phases, pretrain, finetune, finetune_ce, finetune_ebl, finetune_mfs, finetune_loce
