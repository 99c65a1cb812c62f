# Two independent phases for the multi-process tests, on the end-to-end tests' tiny LT-Shapes
# (registered as lt_shapes_e2e_*, 8 classes) with tiny_two_phase.py's small model: "loce", LOCE's
# fine-tune pieces (MFS memory: a `local` store; mean score: a `global` indicator) with a memory
# warm-up, and "rio", RIO's pieces (RFS, object replay: a `local` store, cosine classifier). Both train
# from scratch for a few iterations, with no evaluator (these tests compare states, not AP).
from ltdet2.engine import make_phase

from ...configs.common.schedules import multi_step
from ...configs.loce import add_ebl, add_memory_warmup, add_mfs
from ...configs.rio import add_rio
from .tiny_two_phase import phases as _tiny
from .tiny_two_phase import train

MAX_ITER = 5
train.output_dir = "output/tiny_distributed"

base = make_phase(_tiny["pretrain"], lr_multiplier=multi_step(MAX_ITER, steps=(4,), warmup_iters=1))
base["dataloader"].train.dataset.names = "lt_shapes_e2e_train"
base["dataloader"].test.dataset.names = "lt_shapes_e2e_val"
del base["dataloader"]["evaluator"]
base["model"].roi_heads.num_classes = 8
base["train"].device = "cpu"
base["train"].max_iter = MAX_ITER
base["train"].checkpointer.period = 100  # only the final checkpoint, and those a stop request saves
base["train"].init_from_phase = ""  # independent phases, both from scratch

loce = make_phase(base)
add_ebl(loce["model"])
add_mfs(loce["model"], capacity=8, num_sampled_classes=4, per_class=2)
add_memory_warmup(loce["train"], images_per_class=1)

rio = make_phase(base)
add_rio(rio["model"], rio["dataloader"], capacity=8, per_class=4)

phases = dict(loce=loce, rio=rio)
del base, loce, rio  # a project's root: `train` and `phases`
