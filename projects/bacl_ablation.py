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
from ltdet2.engine import make_phase

from ..configs.bacl import add_classifier_learning
from .bacl import phases as bacl_phases
from .bacl import train

train.output_dir = "output/bacl_ablation"
representation, classifier = bacl_phases["representation"], bacl_phases["classifier"]


def classifier_stage(**options):
    """A classifier stage from the representation checkpoint with the length and schedule of projects/bacl.py's."""
    phase = make_phase(representation, dataloader=classifier["dataloader"], optimizer=classifier["optimizer"])
    phase["lr_multiplier"] = classifier["lr_multiplier"]
    phase["train"].update(
        max_iter=classifier["train"].max_iter,
        checkpointer=classifier["train"].checkpointer,
        init_from_phase="representation",
    )
    add_classifier_learning(phase, **options)
    return phase


phases = dict(
    representation=representation,
    control=classifier_stage(fcbl=False, fhm=False),
    margin=classifier_stage(fhm=False, weight_term=False),
    weight_term=classifier_stage(fhm=False, alpha=0.0),
    fhm=classifier_stage(fcbl=False),
    fcbl=classifier_stage(fhm=False),
    fcbl_fhm=classifier_stage(),
)
del bacl_phases, representation, classifier, classifier_stage  # a project's root: `train` and `phases`
