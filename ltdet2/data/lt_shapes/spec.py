"""What an LT-Shapes dataset is made of: the spec (sizes, classes, frequency curve) and the class list.

Importing this module generates nothing; :data:`NUM_CLASSES` is the class count of the default spec,
the one number configs use for ``num_classes``.
"""

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from ..categories import COMMON_MAX_IMAGES, RARE_MAX_IMAGES

__all__ = [
    "GENERATOR_VERSION",
    "SHAPES",
    "COLORS",
    "FILLS",
    "LTShapesSpec",
    "NUM_CLASSES",
    "class_names",
    "class_attributes",
    "spec_hash",
]

# bump when the output for a given (spec, seed) changes: cached copies are then regenerated
GENERATOR_VERSION = 1

SHAPES = ("circle", "square", "triangle", "diamond", "hexagon", "star")
COLORS = {
    "red": (220, 45, 45),
    "green": (40, 170, 70),
    "blue": (45, 90, 225),
    "yellow": (235, 205, 40),
}
FILLS = ("solid", "outline", "striped")


@dataclass(frozen=True)
class LTShapesSpec:
    """Size and layout of an LT-Shapes dataset (the seed is separate).

    Class targets: ``group_fractions`` (rare, common, frequent) of the classes go to each group;
    within a group, target training image counts fall log-linearly over the frequency ranks:
    rare ``rare_targets`` (hi, lo), common ``common_targets``, frequent from a top value solved so
    that the images hold on average (min_objects + max_objects) / 2 objects, down to
    ``frequent_min_target``. The last non-empty group (frequent, else common) absorbs the budget.

    The fields (in this order) are part of the dataset: they are written into the json ``info`` and
    hashed into the ``DONE`` marker, so adding or renaming one changes every generated file.
    """

    num_train: int = 2500
    num_val: int = 400
    image_size: int = 128
    min_objects: int = 2
    max_objects: int = 5
    # object extent in pixels; None = scaled from 14..56 px at 128 px (at least 8 px)
    min_size: int | None = None
    max_size: int | None = None
    shapes: tuple = SHAPES
    colors: tuple = tuple(COLORS)
    fills: tuple = FILLS
    group_fractions: tuple = (0.25, 0.35, 0.40)  # r, c, f
    rare_targets: tuple = (9, 1)
    common_targets: tuple = (90, 13)
    frequent_min_target: int = 130
    max_target_fraction: float = 0.8  # no class in more than this fraction of train images
    val_min_instances: int = 10
    min_gap: int = 1  # pixels kept free between object masks
    max_fill_fraction: float = 0.3  # total object extent area / image area before shrinking

    def __post_init__(self):
        if self.num_train < 1 or self.num_val < 0:
            raise ValueError(
                f"LTShapesSpec: need num_train >= 1 and num_val >= 0, got {self.num_train}, {self.num_val}"
            )
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"LTShapesSpec: need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        unknown = (
            [s for s in self.shapes if s not in SHAPES]
            + [c for c in self.colors if c not in COLORS]
            + [f for f in self.fills if f not in FILLS]
        )
        if unknown:
            raise ValueError(
                f"LTShapesSpec: unknown attributes {unknown}; shapes {SHAPES}, colors {tuple(COLORS)}, fills {FILLS}"
            )
        if len(self.group_fractions) != 3 or abs(sum(self.group_fractions) - 1) > 1e-6:
            raise ValueError(f"LTShapesSpec: group_fractions (r, c, f) must sum to 1, got {self.group_fractions}")
        lo, hi = self.size_range
        if not 4 <= lo <= hi < self.image_size:
            raise ValueError(f"LTShapesSpec: object size range {lo}..{hi} does not fit image size {self.image_size}")
        if not 1 <= self.rare_targets[1] <= self.rare_targets[0] <= RARE_MAX_IMAGES:
            raise ValueError(f"LTShapesSpec: rare_targets must be (hi, lo) within 1..{RARE_MAX_IMAGES}")
        if not RARE_MAX_IMAGES < self.common_targets[1] <= self.common_targets[0] <= COMMON_MAX_IMAGES:
            raise ValueError(
                f"LTShapesSpec: common_targets must be (hi, lo) within {RARE_MAX_IMAGES + 1}..{COMMON_MAX_IMAGES}"
            )
        if self.frequent_min_target <= COMMON_MAX_IMAGES:
            raise ValueError(f"LTShapesSpec: frequent_min_target must be > {COMMON_MAX_IMAGES}")
        if self.min_gap < 0:
            raise ValueError(f"LTShapesSpec: min_gap must be >= 0, got {self.min_gap}")

    @property
    def size_range(self):
        s = self.image_size / 128.0
        lo = self.min_size if self.min_size is not None else max(8, int(round(14 * s)))
        hi = self.max_size if self.max_size is not None else max(lo, int(round(56 * s)))
        return int(lo), int(hi)

    @property
    def num_classes(self) -> int:
        return len(self.shapes) * len(self.colors) * len(self.fills)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


NUM_CLASSES = LTShapesSpec().num_classes  # 72 = 6 shapes x 4 colours x 3 fills


def spec_hash(spec: LTShapesSpec, seed: int) -> str:
    """16 hex digits identifying (generator version, seed, spec): the content of a finished generation."""
    payload = json.dumps({"version": GENERATOR_VERSION, "seed": int(seed), "spec": spec.to_dict()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def class_attributes(spec: LTShapesSpec = LTShapesSpec()) -> list:
    """``(shape, colour, fill)`` of every class in category-id order (id = index + 1)."""
    return [(s, c, f) for s in spec.shapes for c in spec.colors for f in spec.fills]


def class_names(spec: LTShapesSpec = LTShapesSpec()) -> list:
    """Class names in category-id order (id = index + 1): ``{colour}_{fill}_{shape}``."""
    return [f"{c}_{f}_{s}" for s, c, f in class_attributes(spec)]
