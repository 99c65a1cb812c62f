"""Registering LT-Shapes splits in Detectron2's catalogs, lazily (nothing is generated until loaded)."""
import os
from typing import Optional

from .build import dataset_paths
from .cache import default_root, get_lt_shapes
from .spec import LTShapesSpec, class_names

__all__ = ["register_lt_shapes", "register_all_lt_shapes"]


def register_lt_shapes(root: Optional[str] = None, seed: int = 0, spec: Optional[LTShapesSpec] = None,
                       name_prefix: str = "lt_shapes") -> tuple:
    """Register ``{name_prefix}_train`` and ``{name_prefix}_val`` in Detectron2's catalogs.

    Lazy: the data is generated (via :func:`get_lt_shapes`) when the dataset is first loaded.
    Dicts come from Detectron2's own ``load_lvis_json`` (``category_id`` 0-based contiguous =
    json id - 1). Metadata: ``evaluator_type="lvis"``, ``json_file``, ``image_root``,
    ``thing_classes`` (contiguous order), ``seed``, ``lt_shapes_spec``; ``class_image_count``
    (Detectron2's federated-loss format, ``[{"id", "image_count"}]``) is added when the train split
    is loaded. Names already registered for the same json are skipped; a name registered for
    another dataset is an error.

    Returns the two dataset names.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    spec = spec or LTShapesSpec()
    root = os.path.abspath(os.path.expanduser(root or default_root(seed, spec)))
    p = dataset_paths(root)
    thing_classes = class_names(spec)
    names = []
    for split in ("train", "val"):
        name = f"{name_prefix}_{split}"
        json_file = p[f"{split}_json"]
        names.append(name)
        if name in DatasetCatalog.list():
            registered = MetadataCatalog.get(name).get("json_file", None)
            if registered == json_file:
                continue
            raise ValueError(f"dataset name {name!r} is already registered (json_file={registered!r}); "
                             f"use another name_prefix than {name_prefix!r}")

        def _load(split=split, name=name):
            from detectron2.data.datasets.lvis import load_lvis_json

            from ..lvis_meta import lvis_meta_from_dataset

            paths = get_lt_shapes(root, seed, spec)
            dicts = load_lvis_json(paths[f"{split}_json"], paths["image_root"])
            meta = MetadataCatalog.get(name)
            if split == "train" and not hasattr(meta, "class_image_count"):
                meta.set(class_image_count=lvis_meta_from_dataset(name).class_image_count())
            return dicts

        DatasetCatalog.register(name, _load)
        MetadataCatalog.get(name).set(
            evaluator_type="lvis",
            json_file=json_file,
            image_root=p["image_root"],
            thing_classes=list(thing_classes),
            seed=int(seed),
            lt_shapes_spec=spec.to_dict(),
        )
    return tuple(names)


def register_all_lt_shapes(root: Optional[str] = None) -> tuple:
    """Register the default ``lt_shapes_train`` / ``lt_shapes_val`` (seed 0, default spec).
    Generates nothing; idempotent."""
    return register_lt_shapes(root=root, seed=0, spec=None, name_prefix="lt_shapes")
