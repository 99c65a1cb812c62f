# RIO's pieces (Chang et al., ICML 2021), to apply to any R-CNN phase config (see projects/rio.py):
# image-level repeat-factor sampling, object-level memory replay, and the cosine classifier.
# Sizes are interpolations ("${...}"), so later overrides of the class count, the box head's output
# size or the training dataset reach them.
from detectron2.config import LazyCall as L

from ltdet2.data.samplers import repeat_factor_sampler
from ltdet2.modeling import CosineClassifier
from ltdet2.modeling.feature_sources import ObjectReplay

from .long_tail import use_long_tail_heads

# RIO sec. 4.1 / official code
RFS_THRESHOLD = 0.001
COSINE_SCALE = 48.0  # official code; LST uses 10
REPLAY_MAX_IMAGES = 30  # targeted: classes in at most 30 training images
REPLAY_CAPACITY = 60
REPLAY_PER_CLASS = 20


def add_rfs(dataloader, threshold=RFS_THRESHOLD, power=0.5, seed=None):
    """Repeat-factor sampling on ``dataloader.train`` (Detectron2's RepeatFactorTrainingSampler).

    The sampler's dataset dicts are an interpolation of ``dataloader.train.dataset`` (built a second
    time, identically, for the sampler)."""
    dataloader.train.sampler = L(repeat_factor_sampler)(
        dataset_dicts="${..dataset}", threshold=threshold, power=power, seed=seed
    )
    return dataloader


def add_cosine_classifier(model, scale=COSINE_SCALE, learnable_scale=True, learnable_norm=False):
    """Replaces the linear ``cls_score`` with a :class:`CosineClassifier` (C+1 rows)."""
    use_long_tail_heads(model)
    model.roi_heads.box_predictor.classifier = L(CosineClassifier)(
        input_dim="${..input_shape.channels}",
        num_classes="${..num_classes}",
        scale=scale,
        learnable_scale=learnable_scale,
        learnable_norm=learnable_norm,
    )
    return model


def add_object_replay(model, *, dataset_name="${.....dataloader.train.dataset.names}", image_count=None,
                      targeted_classes=None, max_images=REPLAY_MAX_IMAGES, capacity=REPLAY_CAPACITY,
                      per_class=REPLAY_PER_CLASS, mode="recent", storage_dtype=None, sync="local"):
    """Adds :class:`ObjectReplay` to the ROI heads' feature sources.

    By default the targeted classes are read (lazily, at the first training iteration) from the
    training dataset of the same config namespace (``dataloader.train.dataset.names``, a sibling of
    ``model``); give ``image_count`` or ``targeted_classes`` instead to fix them in the config.
    """
    use_long_tail_heads(model)
    if image_count is not None or targeted_classes is not None:
        dataset_name = None
    sources = list(model.roi_heads.get("feature_sources", None) or [])
    sources.append(
        L(ObjectReplay)(
            num_classes="${...num_classes}",
            feature_dim="${...box_predictor.input_shape.channels}",
            dataset_name=dataset_name,
            image_count=image_count,
            targeted_classes=targeted_classes,
            max_images=max_images,
            capacity=capacity,
            per_class=per_class,
            mode=mode,
            storage_dtype=storage_dtype,
            sync=sync,
        )
    )
    model.roi_heads.feature_sources = sources
    return model


def add_rio(model, dataloader, **replay_options):
    """RIO: RFS + object replay + cosine classifier."""
    add_rfs(dataloader)
    add_cosine_classifier(model)
    add_object_replay(model, **replay_options)
    return model, dataloader
