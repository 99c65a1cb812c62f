# Step-wise ablation on Deformable DETR on LT-Shapes (paper Tab. 3), every variant from the same pretrain, the same
# trainable parts (class heads + input projections) and the same total iterations after it:
#   control            the pretrained DETR trained on: all data, its own loss, head_expert + transfer iterations
#   head_expert        fine-tune only (FT on D_head: the head expert, evaluated)
#   transfer           FT then KT (the full method; teacher = the head expert)
# Run: python scripts/ablation_table.py --config-file projects/stepwise_detr_ablation.py --seeds 0 1 2 \
#          --output-dir output/stepwise_detr_ablation --results-dir docs/results/stepwise_detr_ablation \
#          --paired transfer-control transfer-pretrain
from ltdet2.config.stepwise_detr import stepwise_detr_phases

from .deformable_detr import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "output/stepwise_detr_ablation"
phases = stepwise_detr_phases(
    model,
    dataloader,
    optimizer,
    lr_multiplier,
    train,
    source="lt_shapes_train",
    head_iters=200,  # as projects/stepwise_detr.py
    transfer_iters=200,
    checkpoint_period=50,
    quota_scale=0.3,
    threshold_scale=30,
    control=True,  # the pretrain continued 400 iterations on all data with the same trainable parts
)
del model, dataloader, optimizer, lr_multiplier  # a project's root: `train` and `phases`
