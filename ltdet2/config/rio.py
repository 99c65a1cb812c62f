"""RIO's pieces (Chang et al., ICML 2021), to apply to any R-CNN phase config (see ``projects/rio.py``):
image-level repeat-factor sampling, object-level memory replay, and the cosine classifier.

They read the class count, feature sizes and training dataset from the model and dataloader configs they are given,
when they are added: set those first.
"""

from detectron2.config import LazyCall as L

from ltdet2.config.long_tail import add_feature_source, box_feature_dim, roi_heads_num_classes, use_long_tail_heads
from ltdet2.data.samplers import repeat_factor_sampler
from ltdet2.modeling import CosineClassifier, WeightNormCosineClassifier
from ltdet2.modeling.feature_sources import ObjectReplay

# RIO sec. 4.1 / official code
RFS_THRESHOLD = 0.001
COSINE_SCALE = 48.0  # official code; LST uses 10
REPLAY_MAX_IMAGES = 30  # targeted: classes in at most 30 training images
REPLAY_CAPACITY = 60
REPLAY_PER_CLASS = 20


def add_rfs(dataloader, threshold=RFS_THRESHOLD, power=0.5, seed=None):
    """Repeat-factor sampling on ``dataloader.train`` (Detectron2's RepeatFactorTrainingSampler).

    The sampler's dataset dicts are its sibling ``dataloader.train.dataset`` (built a second time,
    identically, for the sampler): an interpolation one level up, so an override of the training
    dataset reaches the sampler too, however the phase is nested."""
    dataloader.train.sampler = L(repeat_factor_sampler)(
        dataset_dicts="${..dataset}", threshold=threshold, power=power, seed=seed
    )
    return dataloader


def add_cosine_classifier(model, variant="weight_norm", scale=COSINE_SCALE, learnable_scale=True):
    """Replaces the linear ``cls_score`` with a cosine classifier (C+1 rows).

    ``variant="weight_norm"`` (RIO's official ``distLinear``, the default): per-class learnable norms,
    fixed ``scale``; ``variant="cosine"``: pure cosine with a global ``scale``, learnable if
    ``learnable_scale`` (LST's, and ltdet2's RIO default before the official one was added)."""
    use_long_tail_heads(model)
    sizes = dict(input_dim=box_feature_dim(model), num_classes=roi_heads_num_classes(model), scale=scale)
    if variant == "weight_norm":
        classifier = L(WeightNormCosineClassifier)(**sizes)
    elif variant == "cosine":
        classifier = L(CosineClassifier)(**sizes, learnable_scale=learnable_scale)
    else:
        raise ValueError(f"add_cosine_classifier: variant must be 'weight_norm' or 'cosine', got {variant!r}")
    model.roi_heads.box_predictor.classifier = classifier
    return model


def add_object_replay(
    model,
    *,
    dataset_name=None,
    image_count=None,
    targeted_classes=None,
    max_images=REPLAY_MAX_IMAGES,
    capacity=REPLAY_CAPACITY,
    per_class=REPLAY_PER_CLASS,
    mode="recent",
    storage_dtype=None,
    sync="local",
):
    """Adds :class:`ObjectReplay` to the ROI heads' feature sources.

    The targeted classes (those in at most ``max_images`` training images) come from exactly one of:
    ``dataset_name``, the training dataset(s), e.g. ``dataloader.train.dataset.names`` (its counts are
    read at the first training iteration); ``image_count`` ([C] images per class); or
    ``targeted_classes`` (class ids).
    """
    use_long_tail_heads(model)
    return add_feature_source(
        model,
        L(ObjectReplay)(
            num_classes=roi_heads_num_classes(model),
            feature_dim=box_feature_dim(model),
            dataset_name=dataset_name,
            image_count=image_count,
            targeted_classes=targeted_classes,
            max_images=max_images,
            capacity=capacity,
            per_class=per_class,
            mode=mode,
            storage_dtype=storage_dtype,
            sync=sync,
        ),
    )


def add_rio(model, dataloader, **replay_options):
    """RIO: RFS + object replay + cosine classifier. Replay targets the classes of
    ``dataloader.train``'s dataset unless ``replay_options`` give ``image_count`` or ``targeted_classes``."""
    add_rfs(dataloader)
    add_cosine_classifier(model)
    if replay_options.get("image_count") is None and replay_options.get("targeted_classes") is None:
        replay_options.setdefault("dataset_name", dataloader.train.dataset.names)
    add_object_replay(model, **replay_options)
    return model, dataloader
