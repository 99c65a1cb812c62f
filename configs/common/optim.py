# Optimizers: Detectron2's SGD with the usual R-CNN settings (lr for batch 16); Deformable DETR's AdamW.
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config
from detectron2.solver.build import get_default_optimizer_params

from ltdet2.modeling.meta_arch.deformable_detr import AdamWWithGradClip, DeformableDetrLRFactor

SGD = get_config("common/optim.py").SGD

# Deformable DETR's (the paper and its official main.py): AdamW lr 2e-4, the backbone, the attention's sampling
# offsets and reference points at 0.1x, weight decay 1e-4 on every parameter, the gradient norm clipped to 0.1
DeformableDETRAdamW = L(AdamWWithGradClip)(
    params=L(get_default_optimizer_params)(
        base_lr="${..lr}",
        lr_factor_func=L(DeformableDetrLRFactor)(backbone=0.1, linear_proj=0.1),
    ),
    lr=2e-4,
    betas=(0.9, 0.999),
    weight_decay=1e-4,
    clip_max_norm=0.1,
)
