# BACL ablation on LT-Shapes (paper Tab. III): one representation stage (projects/bacl.py's), then six
# classifier stages of equal length from that same checkpoint, each with the feature extractor frozen:
#   control       the stage-1 loss (sigmoid with a background channel) fine-tuned alone
#   margin        FCBL's class-aware margin only (no weight term)
#   weight_term   FCBL's weight term only (alpha = 0)
#   fhm           FHM only (stage-1 loss; classes drawn by the confusion matrix)
#   fcbl          margin + weight term
#   fcbl_fhm      FCBL + FHM (BACL)
# Run: python scripts/ablation_table.py --config-file projects/bacl_ablation.py --seeds 0 1 2 \
#          --output-dir output/bacl_ablation
from ltdet2.config.bacl import add_classifier_learning
from ltdet2.engine import make_phase

from .bacl import phases as bacl_phases
from .bacl import train

train.output_dir = "output/bacl_ablation"
representation, classifier = bacl_phases["representation"], bacl_phases["classifier"]


# every variant: the classifier stage of projects/bacl.py (length, schedule, data) from the representation
stage = make_phase(
    representation,
    dataloader=classifier["dataloader"],
    optimizer=classifier["optimizer"],
    lr_multiplier=classifier["lr_multiplier"],
)
stage["train"].update(
    max_iter=classifier["train"].max_iter,
    checkpointer=classifier["train"].checkpointer,
    init_from_phase="representation",
)
VARIANTS = dict(
    control=dict(fcbl=False, fhm=False),
    margin=dict(fhm=False, weight_term=False),
    weight_term=dict(fhm=False, alpha=0.0),
    fhm=dict(fcbl=False),
    fcbl=dict(fhm=False),
    fcbl_fhm=dict(),
)
phases = dict(representation=representation)
for name, options in VARIANTS.items():
    phases[name] = add_classifier_learning(make_phase(stage), **options)
# a project's root: `train` and `phases`
del bacl_phases, representation, classifier, stage, VARIANTS, name, options
