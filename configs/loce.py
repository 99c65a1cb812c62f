# LOCE's fine-tune pieces (EBL + MFS), to apply to any R-CNN phase config (see projects/loce.py).
from detectron2.config import LazyCall as L

from ltdet2.memory import MeanScore
from ltdet2.modeling.feature_sources import MemoryFeatureSampler
from ltdet2.modeling.losses import EquilibriumLoss

from .long_tail import use_long_tail_heads

# Decoupled fine-tune: only the classifier, box regressor, RPN and mask head train (LOCE sec. 4.1);
# backbone, FPN and the shared box-head FCs are frozen.
LOCE_TRAINABLE = ["roi_heads.box_predictor.", "proposal_generator.", "roi_heads.mask_head."]


def add_mean_score(model, alpha=0.9, background_score=0.01):
    model.roi_heads.indicators = {
        "mean_score": L(MeanScore)(
            num_classes=model.roi_heads.num_classes, alpha=alpha, background_score=background_score
        )
    }
    return model


def add_ebl(model, background_score=0.01):
    use_long_tail_heads(model)
    add_mean_score(model, background_score=background_score)
    model.roi_heads.box_predictor.cls_loss = L(EquilibriumLoss)(
        indicator="mean_score", background_score=background_score
    )
    return model


def add_mfs(model, feature_channels, capacity=80, num_sampled_classes=8, per_class=4, storage_dtype=None):
    use_long_tail_heads(model)
    if "mean_score" not in (model.roi_heads.get("indicators") or {}):
        add_mean_score(model)
    model.roi_heads.feature_sources = [
        L(MemoryFeatureSampler)(
            num_classes=model.roi_heads.num_classes,
            feature_shape=(feature_channels, 7, 7),
            capacity=capacity,
            num_sampled_classes=num_sampled_classes,
            per_class=per_class,
            indicator="mean_score",
            storage_dtype=storage_dtype,
        )
    ]
    return model
