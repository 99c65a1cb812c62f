"""LT-Shapes: a small, procedurally rendered, long-tailed detection + instance segmentation
dataset in LVIS json format, deterministic from a seed.

Classes are ``colour x fill x shape`` (default 4 x 3 x 6 = :data:`NUM_CLASSES` = 72, names like
``red_solid_circle``), so head and tail classes share attributes and can be confused. Frequency ranks
are assigned to classes by a seeded permutation; target training image counts follow a Zipf-like
(piecewise log-linear) curve whose groups are LVIS's own thresholds: rare 1..10 images, common
11..100, frequent > 100. Every image holds ``min_objects..max_objects`` non-overlapping objects (so
the polygon *is* the visible region), every image with a rare class also holds a frequent class,
and the realised training image count of every class is checked to fall in its intended group.
The validation split is class balanced (every class has at least ``val_min_instances``).

Modules, one job each:

* :mod:`.spec`: :class:`LTShapesSpec` (sizes, classes, frequency curve), class names, ``NUM_CLASSES``.
* :mod:`.plan`: per-class training image targets and which classes go into which image (no pixels).
* :mod:`.render`: images and LVIS records from a plan.
* :mod:`.build`: :func:`generate` writes ``train/*.png``, ``val/*.png``, ``lt_shapes_train.json``,
  ``lt_shapes_val.json`` and, last, a ``DONE`` marker holding the spec+seed hash.
* :mod:`.cache`: :func:`get_lt_shapes` generates into ``$LTDET2_DATASETS/lt_shapes_seed{seed}``
  on first use (default ``~/.cache/ltdet2/datasets``) and reuses it afterwards.
* :mod:`.register`: :func:`register_lt_shapes` / :func:`register_all_lt_shapes` register the splits
  in Detectron2's catalogs (lazily: nothing is generated until the dataset is loaded).
* CLI: ``python -m ltdet2.data.lt_shapes --out DIR --seed N [--num-train K --num-val K
  --image-size S]``.
"""

from .build import DONE_FILE, TRAIN_JSON, VAL_JSON, dataset_paths, generate, is_complete
from .cache import default_root, get_lt_shapes
from .plan import plan_class_targets, plan_split
from .register import register_all_lt_shapes, register_lt_shapes
from .spec import (
    COLORS,
    FILLS,
    GENERATOR_VERSION,
    NUM_CLASSES,
    SHAPES,
    LTShapesSpec,
    class_attributes,
    class_names,
    spec_hash,
)

__all__ = [
    "GENERATOR_VERSION",
    "SHAPES",
    "COLORS",
    "FILLS",
    "NUM_CLASSES",
    "LTShapesSpec",
    "class_names",
    "class_attributes",
    "spec_hash",
    "plan_class_targets",
    "plan_split",
    "generate",
    "is_complete",
    "dataset_paths",
    "default_root",
    "get_lt_shapes",
    "register_lt_shapes",
    "register_all_lt_shapes",
    "TRAIN_JSON",
    "VAL_JSON",
    "DONE_FILE",
]
