"""Registering LT-Shapes splits in Detectron2's catalogs, lazily (nothing is generated until loaded)."""

import os

from ..datasets import register_lvis_format_dataset
from .build import dataset_paths
from .cache import default_root, get_lt_shapes
from .spec import LTShapesSpec, class_names

__all__ = ["register_lt_shapes", "register_all_lt_shapes"]


def register_lt_shapes(
    root: str | None = None, seed: int = 0, spec: LTShapesSpec | None = None, name_prefix: str = "lt_shapes"
) -> tuple:
    """Register ``{name_prefix}_train`` and ``{name_prefix}_val`` in Detectron2's catalogs.

    Lazy: the data is generated (via :func:`get_lt_shapes`) when the dataset is first loaded (or its
    per-class metadata first read). Both splits go through
    :func:`ltdet2.data.register_lvis_format_dataset`'s validated loader (the val split with the train
    json as ``train_json``: its stored counts and groups are the training ones, like LVIS val).
    Metadata: ``evaluator_type="lvis"``, ``json_file``, ``image_root``, ``thing_classes`` (contiguous
    order, known without generating), ``seed``, ``lt_shapes_spec``, and, read from the json,
    ``class_image_count`` (Detectron2's ``[{"id", "image_count"}]``) and the other keys of
    :class:`~ltdet2.data.datasets.LVISFormatMetadata`. Names already registered for the same
    dataset are skipped; a name registered for another dataset is an error.

    Returns the two dataset names.
    """
    spec = spec or LTShapesSpec()
    root = os.path.abspath(os.path.expanduser(root or default_root(seed, spec)))
    p = dataset_paths(root)
    names = tuple(f"{name_prefix}_{split}" for split in ("train", "val"))
    for name, split in zip(names, ("train", "val")):
        register_lvis_format_dataset(
            name, p[f"{split}_json"], p["image_root"],
            train_json=p["train_json"] if split == "val" else None,
            prepare=lambda: get_lt_shapes(root, seed, spec),
            thing_classes=list(class_names(spec)), seed=int(seed), lt_shapes_spec=spec.to_dict(),
        )  # fmt: skip
    return names


def register_all_lt_shapes(root: str | None = None) -> tuple:
    """Register the default ``lt_shapes_train`` / ``lt_shapes_val`` (seed 0, default spec).
    Generates nothing; idempotent."""
    return register_lt_shapes(root=root, seed=0, spec=None, name_prefix="lt_shapes")
