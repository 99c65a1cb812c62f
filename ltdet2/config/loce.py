"""LOCE's fine-tune pieces (EBL + MFS), to apply to any R-CNN phase config (see ``projects/loce.py``).

They read the class count and feature sizes from the model config when they are added.
"""

from detectron2.config import LazyCall as L

from ltdet2.config.long_tail import add_feature_source, pooled_feature_shape, roi_heads_num_classes, use_long_tail_heads
from ltdet2.data.lvis_meta import lvis_meta_from_dataset
from ltdet2.hooks import MemoryWarmup
from ltdet2.memory import InstanceFrequency, MeanScore
from ltdet2.modeling.feature_sources import MemoryFeatureSampler
from ltdet2.modeling.losses import EquilibriumLoss

# Decoupled fine-tune: only the classifier, box regressor, RPN and mask head train (LOCE sec. 4.1);
# backbone, FPN and the shared box-head FCs are frozen.
LOCE_TRAINABLE = ["roi_heads.box_predictor.", "proposal_generator.", "roi_heads.mask_head."]


def add_mean_score(model, alpha=0.9, background_score=0.01, sync="global", update_timing="before_loss"):
    """LOCE's mean score. Official code: updated before the loss (EBL sees this batch's update) and
    gathered over all GPUs; ``update_timing="after_loss"`` / ``sync="local"`` are the other options."""
    indicators = dict(model.roi_heads.get("indicators") or {})
    indicators["mean_score"] = L(MeanScore)(
        num_classes=roi_heads_num_classes(model),
        alpha=alpha,
        background_score=background_score,
        sync=sync,
        update_timing=update_timing,
    )
    model.roi_heads.indicators = indicators
    return model


def add_instance_frequency(model, dataset_name):
    """The paper's dataset-guided ablation: normalised training instance counts with a raw background
    count of 1 (LOCE supplement eq. 1)."""
    indicators = dict(model.roi_heads.get("indicators") or {})
    indicators["instance_frequency"] = L(InstanceFrequency.from_lvis_meta)(
        meta=L(lvis_meta_from_dataset)(dataset_name=dataset_name), background_count=1
    )
    model.roi_heads.indicators = indicators
    return model


def add_ebl(model, background_score=0.01, guide="mean_score", dataset_name=None):
    """EBL on the mean scores (paper), or with ``guide="instance_frequency"`` on the training
    instance frequencies of ``dataset_name`` (the paper's dataset-guided ablation)."""
    use_long_tail_heads(model)
    if guide == "mean_score":
        add_mean_score(model, background_score=background_score)
    elif guide == "instance_frequency":
        add_instance_frequency(model, dataset_name)
    else:
        raise ValueError(f"add_ebl: guide must be 'mean_score' or 'instance_frequency', got {guide!r}")
    model.roi_heads.box_predictor.cls_loss = L(EquilibriumLoss)(indicator=guide, background_score=background_score)
    return model


def add_mfs(
    model, capacity=80, num_sampled_classes=8, per_class=4, storage_dtype=None, guide="mean_score", shared_eta=False
):
    """MFS sampling classes with p ∝ 1/s for the ``guide`` indicator's scores s; it stores pooled RoI
    features of the box head's input shape. ``shared_eta=True``: the official code's dense boxes (one offset
    draw per image), the paper's per box by default."""
    use_long_tail_heads(model)
    if guide not in (model.roi_heads.get("indicators") or {}):
        if guide != "mean_score":
            raise ValueError(f"add_mfs: add the {guide!r} indicator first (add_ebl(..., guide={guide!r}))")
        add_mean_score(model)
    return add_feature_source(
        model,
        L(MemoryFeatureSampler)(
            num_classes=roi_heads_num_classes(model),
            feature_shape=pooled_feature_shape(model),
            capacity=capacity,
            num_sampled_classes=num_sampled_classes,
            per_class=per_class,
            indicator=guide,
            storage_dtype=storage_dtype,
            shared_eta=shared_eta,
        ),
    )


def add_memory_warmup(train, images_per_class=5, deduplicate=False):
    """LOCE's official warm-up (:class:`ltdet2.hooks.MemoryWarmup`, in ``train.hooks``): before the fine-tune's first
    iteration (not on a resume), a class-balanced pass of ``images_per_class`` images per class fills the memories and
    mean scores."""
    train["hooks"] = [
        *(train.get("hooks", None) or []),
        L(MemoryWarmup)(images_per_class=images_per_class, deduplicate=deduplicate),
    ]
    return train
