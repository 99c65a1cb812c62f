"""What a phase's model is evaluated with: the resize and image format of its test mapper. Scoring annotations
(:mod:`ltdet2.engine.derived`) and LST's phase-end write of generated rows (:mod:`ltdet2.hooks.weight_generation`)
feed the model as its evaluation does."""

from omegaconf import OmegaConf

from detectron2.config import instantiate

__all__ = ["evaluation_input"]


def evaluation_input(cfg):
    """(augmentations, image format) of a phase's test mapper (``dataloader.test.mapper``): the resize the
    model is evaluated with. None found: no augmentation, BGR."""
    mapper = OmegaConf.select(cfg, "dataloader.test.mapper", default=None)
    augmentations = mapper.get("augmentations", None) if mapper is not None else None
    image_format = mapper.get("image_format", "BGR") if mapper is not None else "BGR"
    return [instantiate(a) for a in (augmentations or [])], image_format
