# Step-wise learning on smooth-tail data (Dong et al., ICCV 2023) on its own detector, two-stage Deformable DETR with
# box refinement, on LT-Shapes for a CPU (ltdet2.config.stepwise_detr; the R-CNN mapping: projects/stepwise.py):
#   "pretrain":    projects/deformable_detr.py (the small DETR from scratch, AdamW 2e-4, 2000 iterations, x0.1 at
#       80%) with the step-wise code's loss weights (cls 3, L1 5, GIoU 2; Deformable DETR's default cls 2).
#   "head_expert": scores every training annotation with the pretrained DETR (its Hungarian-matched query's largest
#       sigmoid, as the official code), builds D_head (per head class the best-scored annotations, one per image
#       first; per tail class a few) and fine-tunes the class heads (every decoder layer's and the encoder's
#       proposal head) and the input projections on it with step-wise RFS, at 0.1x the base lr (2e-5).
#   "transfer":    builds D_tail (a few per head class, every tail annotation) and trains the unified model, initialised
#       from the head expert, with the frozen head expert as teacher: masked feature distillation on the input
#       projections inside head-class boxes (weight 1) + KL over the shared object queries on the head-class columns
#       of every decoder layer (0.1 each), at the base lr, x0.1 halfway.
# Ablation with the control: projects/stepwise_detr_ablation.py. LVIS: projects/stepwise_detr_lvis_v1.py, _v0_5.py.
from ltdet2.config.stepwise_detr import stepwise_detr_phases

from .deformable_detr import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "output/stepwise_detr"  # the phases train in output/stepwise_detr/<phase>
phases = stepwise_detr_phases(
    model,
    dataloader,
    optimizer,
    lr_multiplier,
    train,
    source="lt_shapes_train",
    head_iters=200,  # ~1 epoch of D_head at batch 8 (paper: 1 epoch), as projects/stepwise.py
    transfer_iters=200,  # ~2 epochs of D_tail (paper: 2 epochs, lr x0.1 after the first), as projects/stepwise.py
    checkpoint_period=50,  # the short phases keep a few checkpoints to resume from
    quota_scale=0.3,  # LT-Shapes' head classes hold 32-434 images: 200 per class would take most of them
    threshold_scale=30,  # the sets hold ~1,000-2,000 images against LVIS' ~30,000-50,000
)
del model, dataloader, optimizer, lr_multiplier  # a project's root: `train` and `phases`
