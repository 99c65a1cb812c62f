"""Simple copy-paste with large-scale-jitter-lite (BACL stage 1), to apply to any Detectron2 data config (see
:mod:`ltdet2.data.copy_paste`): ``add_copy_paste(dataloader, image_size=1280)`` for LVIS, 128 for LT-Shapes.
"""

from detectron2.config import LazyCall as L

from ltdet2.data.copy_paste import CopyPasteMapper

# BACL's official pipeline (bacl_representation_*_lvis_*.py)
SCALE_RANGE = (0.8, 1.25)
LVIS_IMAGE_SIZE = 1280


def add_copy_paste(dataloader, *, image_size, scale_range=SCALE_RANGE, **options):
    """Replaces ``dataloader.train.mapper`` by a :class:`CopyPasteMapper` that jitters every training image
    to ``image_size`` x ``image_size`` (its own resize, crop and flip replace the old mapper's
    augmentations) and pastes objects of another training image onto it.

    The mapper keeps the old mapper's ``image_format`` and ``use_instance_mask``, and its
    ``instance_mask_format`` when the old mapper sets one (else bitmasks, the exact format for cut masks).
    Its source images are the training dataset (``"${..dataset}"``, built a second time, identically, for
    the mapper), so an override of ``dataloader.train.dataset`` reaches the mapper too, however the phase is
    nested. ``options``: the other keyword arguments of :class:`CopyPasteMapper` (thresholds, flip, pad)."""
    old = dataloader.train.mapper
    kept = {
        key: old[key]
        for key in ("image_format", "use_instance_mask", "instance_mask_format")
        if old is not None and key in old
    }
    if "names" in dataloader.train.dataset:
        kept["dataset_name"] = "${..dataset.names}"
    dataloader.train.mapper = L(CopyPasteMapper)(
        dataset_dicts="${..dataset}", image_size=image_size, scale_range=scale_range, **{**kept, **options}
    )
    return dataloader
