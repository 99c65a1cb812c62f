# Step-wise ablation on LT-Shapes (paper Tab. 3, 8), every variant from the same pretrain, the same trainable
# parts (classifier + FPN) and the same total iterations after it:
#   control            the pretrained model trained on: all data, its own loss, head_expert + transfer iterations
#   head_expert        fine-tune only (FT on D_head: the head expert, evaluated)
#   transfer           FT then KT (the full method; teacher = the head expert)
#   kt_only            knowledge transfer only: from the pretrained model, teacher = the pretrained model (what
#                      the official code runs as shipped; paper Tab. 3 "KT only"), head_expert + transfer iterations
#   head_expert_no_rfs, transfer_no_rfs   the full method without step-wise RFS (paper Tab. 8)
#   head_expert_ignore, transfer_ignore   the full method with the unselected annotations of the sets' images
#                      ignored (neither positive nor negative for the box head, still ground truth for the RPN)
#                      instead of dropped (issue 25: in an R-CNN a dropped object is background; in Deformable
#                      DETR it would only be a "no object" query)
# Run: python scripts/ablation_table.py --config-file projects/stepwise_ablation.py --seeds 0 1 2 \
#          --output-dir output/stepwise_ablation --results-dir docs/results/stepwise_ablation \
#          --paired transfer-control transfer-pretrain
from ltdet2.config.schedules import set_phase_length
from ltdet2.config.stepwise import STEPWISE_TRAINABLE, use_smooth_tail_set
from ltdet2.data import ValidityDatasetMapper
from ltdet2.engine import make_phase

from .stepwise import phases as stepwise_phases
from .stepwise import train

train.output_dir = "output/stepwise_ablation"
pretrain, head_expert, transfer = (stepwise_phases[k] for k in ("pretrain", "head_expert", "transfer"))
TOTAL_ITERS = head_expert["train"].max_iter + transfer["train"].max_iter


def independent_of_fine_tune(phase, *, iterations):
    """``phase`` from the pretrained model for ``iterations`` (the full method's iterations after pretrain),
    its lr schedule the transfer's stretched over them."""
    phase = make_phase(phase)
    phase["train"].init_from_phase = "pretrain"
    return set_phase_length(phase, iters=iterations, step_fractions=(0.5,), warmup_iters=10)


control = independent_of_fine_tune(pretrain, iterations=TOTAL_ITERS)
control["train"].trainable = STEPWISE_TRAINABLE
control["train"].checkpointer.period = 50

kt_only = independent_of_fine_tune(transfer, iterations=TOTAL_ITERS)
kt_only["train"].teacher_from_phase = "pretrain"
kt_only["dataloader"].train.dataset.names = "lt_shapes_train_stepwise_d_tail_kt_only"
kt_only["train"].derived_datasets[0].name = "lt_shapes_train_stepwise_d_tail_kt_only"

# without step-wise RFS: Detectron2's plain sampler inside both sets (each phase builds its own copy of the set)
head_expert_no_rfs = make_phase(head_expert)
transfer_no_rfs = make_phase(transfer)
for phase, suffix in ((head_expert_no_rfs, "d_head_no_rfs"), (transfer_no_rfs, "d_tail_no_rfs")):
    builder = phase["train"].derived_datasets.pop()
    options = {k: builder[k] for k in ("source", "scores_from_phase", "head_quota", "tail_quota", "min_images")}
    use_smooth_tail_set(phase, name=f"lt_shapes_train_stepwise_{suffix}", groups=(), step_rfs=False, **options)
transfer_no_rfs["train"].teacher_from_phase = "head_expert_no_rfs"

# unselected annotations ignored instead of dropped (each phase builds its own copy of the set)
head_expert_ignore = make_phase(head_expert)
transfer_ignore = make_phase(transfer)
for phase, suffix in ((head_expert_ignore, "d_head_ignore"), (transfer_ignore, "d_tail_ignore")):
    builder = phase["train"].derived_datasets[-1]
    builder.name = phase["dataloader"].train.dataset.names = f"lt_shapes_train_stepwise_{suffix}"
    builder.unselected = "ignore"
    phase["dataloader"].train.mapper._target_ = ValidityDatasetMapper  # passes the validity on to the model
transfer_ignore["train"].init_from_phase = "head_expert_ignore"
transfer_ignore["train"].teacher_from_phase = "head_expert_ignore"

phases = dict(
    pretrain=pretrain,
    control=control,
    head_expert=head_expert,
    transfer=transfer,
    kt_only=kt_only,
    head_expert_no_rfs=head_expert_no_rfs,
    transfer_no_rfs=transfer_no_rfs,
    head_expert_ignore=head_expert_ignore,
    transfer_ignore=transfer_ignore,
)
del stepwise_phases, pretrain, head_expert, transfer, control, kt_only, head_expert_no_rfs, transfer_no_rfs
del head_expert_ignore, transfer_ignore
del phase, suffix, builder, options
