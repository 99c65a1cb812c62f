"""LT-Shapes: a small, procedurally rendered, long-tailed detection + instance segmentation
dataset in LVIS json format, deterministic from a seed.

Classes are ``colour x fill x shape`` (default 4 x 3 x 6 = 72, names like ``red_solid_circle``),
so head and tail classes share attributes and can be confused. Frequency ranks are assigned to
classes by a seeded permutation; target training image counts follow a Zipf-like (piecewise
log-linear) curve whose groups are LVIS's own thresholds: rare 1..10 images, common 11..100,
frequent > 100. Every image holds ``min_objects..max_objects`` non-overlapping objects (so the
polygon *is* the visible region), every image with a rare class also holds a frequent class,
and the realised training image count of every class is checked to fall in its intended group.
The validation split is class balanced (every class has at least ``val_min_instances``).

Masks are rasterised from the polygons with pycocotools (the same rasteriser Detectron2 and the
LVIS API use), so the rendered object pixels are exactly the annotation's mask.

Entry points:

* :func:`generate` writes ``train/*.png``, ``val/*.png``, ``lt_shapes_train.json``,
  ``lt_shapes_val.json`` and, last, a ``DONE`` marker holding the spec+seed hash.
* :func:`get_lt_shapes` generates into ``$LTDET2_DATASETS/lt_shapes_seed{seed}`` on first use
  (default ``~/.cache/ltdet2/datasets``) and reuses it afterwards.
* :func:`register_lt_shapes` / :func:`register_all_lt_shapes` register the splits in
  Detectron2's catalogs (lazily: nothing is generated until the dataset is loaded).
* CLI: ``python -m ltdet2.data.lt_shapes --out DIR --seed N [--num-train K --num-val K
  --image-size S]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .lvis_meta import COMMON_MAX_IMAGES, FREQUENCY_GROUPS, RARE_MAX_IMAGES, frequency_from_image_count

__all__ = [
    "GENERATOR_VERSION",
    "SHAPES",
    "COLORS",
    "FILLS",
    "LTShapesSpec",
    "class_names",
    "plan_class_targets",
    "plan_split",
    "generate",
    "is_complete",
    "default_root",
    "get_lt_shapes",
    "register_lt_shapes",
    "register_all_lt_shapes",
    "TRAIN_JSON",
    "VAL_JSON",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
TRAIN_JSON = "lt_shapes_train.json"
VAL_JSON = "lt_shapes_val.json"
DONE_FILE = "DONE"

SHAPES = ("circle", "square", "triangle", "diamond", "hexagon", "star")
COLORS = {
    "red": (220, 45, 45),
    "green": (40, 170, 70),
    "blue": (45, 90, 225),
    "yellow": (235, 205, 40),
}
FILLS = ("solid", "outline", "striped")

_SPLIT_CODE = {"plan": 0, "train": 1, "val": 2}


@dataclass(frozen=True)
class LTShapesSpec:
    """Size and layout of an LT-Shapes dataset (the seed is separate).

    Class targets: ``group_fractions`` (rare, common, frequent) of the classes go to each group;
    within a group, target training image counts fall log-linearly over the frequency ranks:
    rare ``rare_targets`` (hi, lo), common ``common_targets``, frequent from a top value solved so
    that the images hold on average (min_objects + max_objects) / 2 objects, down to
    ``frequent_min_target``. The last non-empty group (frequent, else common) absorbs the budget.
    """

    num_train: int = 2500
    num_val: int = 400
    image_size: int = 128
    min_objects: int = 2
    max_objects: int = 5
    # object extent in pixels; None = scaled from 14..56 px at 128 px (at least 8 px)
    min_size: Optional[int] = None
    max_size: Optional[int] = None
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
            raise ValueError(f"LTShapesSpec: need num_train >= 1 and num_val >= 0, got {self.num_train}, {self.num_val}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"LTShapesSpec: need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        unknown = [s for s in self.shapes if s not in SHAPES] + [c for c in self.colors if c not in COLORS] + \
                  [f for f in self.fills if f not in FILLS]
        if unknown:
            raise ValueError(f"LTShapesSpec: unknown attributes {unknown}; shapes {SHAPES}, colors {tuple(COLORS)}, "
                             f"fills {FILLS}")
        if len(self.group_fractions) != 3 or abs(sum(self.group_fractions) - 1) > 1e-6:
            raise ValueError(f"LTShapesSpec: group_fractions (r, c, f) must sum to 1, got {self.group_fractions}")
        lo, hi = self.size_range
        if not 4 <= lo <= hi < self.image_size:
            raise ValueError(f"LTShapesSpec: object size range {lo}..{hi} does not fit image size {self.image_size}")
        if not 1 <= self.rare_targets[1] <= self.rare_targets[0] <= RARE_MAX_IMAGES:
            raise ValueError(f"LTShapesSpec: rare_targets must be (hi, lo) within 1..{RARE_MAX_IMAGES}")
        if not RARE_MAX_IMAGES < self.common_targets[1] <= self.common_targets[0] <= COMMON_MAX_IMAGES:
            raise ValueError(f"LTShapesSpec: common_targets must be (hi, lo) within "
                             f"{RARE_MAX_IMAGES + 1}..{COMMON_MAX_IMAGES}")
        if self.frequent_min_target <= COMMON_MAX_IMAGES:
            raise ValueError(f"LTShapesSpec: frequent_min_target must be > {COMMON_MAX_IMAGES}")

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


def _spec_hash(spec: LTShapesSpec, seed: int) -> str:
    payload = json.dumps({"version": GENERATOR_VERSION, "seed": int(seed), "spec": spec.to_dict()},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def class_names(spec: LTShapesSpec = LTShapesSpec()) -> list:
    """Class names in category-id order (id = index + 1): ``{colour}_{fill}_{shape}``."""
    return [f"{c}_{f}_{s}" for s in spec.shapes for c in spec.colors for f in spec.fills]


def _class_attrs(spec: LTShapesSpec):
    return [(s, c, f) for s in spec.shapes for c in spec.colors for f in spec.fills]


def _geom(hi: float, lo: float, n: int) -> np.ndarray:
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if n == 1:
        return np.array([int(round(hi))], dtype=np.int64)
    t = np.arange(n) / (n - 1)
    return np.maximum(1, np.round(hi * (lo / hi) ** t)).astype(np.int64)


def plan_class_targets(spec: LTShapesSpec = LTShapesSpec(), seed: int = 0):
    """Intended frequency group and target number of training images of every class.

    Cheap (no rendering). Returns (targets [C] int64, groups [C] of 'r'/'c'/'f'), indexed by
    contiguous class index (category id - 1).
    """
    C = spec.num_classes
    n_r = int(round(C * spec.group_fractions[0]))
    n_f = int(round(C * spec.group_fractions[2]))
    n_c = C - n_r - n_f
    if n_c < 0:
        raise ValueError(f"LTShapesSpec.group_fractions {spec.group_fractions} leave no room for {C} classes")
    budget = int(round(spec.num_train * (spec.min_objects + spec.max_objects) / 2))
    cap = max(1, int(math.floor(spec.max_target_fraction * spec.num_train)))
    rare = _geom(*spec.rare_targets, n_r)
    sizes = {"r": n_r, "c": n_c, "f": n_f}
    filler = "f" if n_f else ("c" if n_c else "r")
    ranges = {"r": (spec.rare_targets[1], spec.rare_targets[0]),
              "c": (spec.common_targets[1], spec.common_targets[0]),
              "f": (spec.frequent_min_target, cap)}
    fixed = {"r": rare, "c": _geom(*spec.common_targets, n_c)}
    rest = budget - sum(int(fixed[g].sum()) for g in ("r", "c") if g != filler)
    lo, hi_cap = ranges[filler]
    hi_cap = min(hi_cap, cap)
    if lo > hi_cap:
        raise ValueError(
            f"LT-Shapes spec infeasible: the {filler!r} group needs at least {lo} training images per class "
            f"but num_train={spec.num_train} allows at most {hi_cap} (max_target_fraction="
            f"{spec.max_target_fraction}); use more images, fewer classes or other group_fractions")
    # largest top value whose curve fits the remaining object budget
    best = lo
    a, b = lo, hi_cap
    while a <= b:
        mid = (a + b) // 2
        if _geom(mid, lo, sizes[filler]).sum() <= rest:
            best, a = mid, mid + 1
        else:
            b = mid - 1
    fixed[filler] = _geom(best, lo, sizes[filler])
    ordered = np.concatenate([fixed["f"] if filler == "f" else np.zeros(0, np.int64),
                              fixed["c"] if n_c else np.zeros(0, np.int64), fixed["r"]])
    groups_by_rank = np.array(["f"] * n_f + ["c"] * n_c + ["r"] * n_r, dtype="<U1")
    if (ordered > cap).any():
        raise ValueError(f"LT-Shapes spec infeasible: a class targets {int(ordered.max())} images, more than "
                         f"{cap} (= {spec.max_target_fraction} x num_train {spec.num_train})")
    total = int(ordered.sum())
    if not spec.num_train * spec.min_objects <= total <= spec.num_train * spec.max_objects:
        raise ValueError(
            f"LT-Shapes spec infeasible: the class targets need {total} objects, but {spec.num_train} images "
            f"with {spec.min_objects}..{spec.max_objects} objects hold "
            f"{spec.num_train * spec.min_objects}..{spec.num_train * spec.max_objects}")
    rng = np.random.default_rng([int(seed), _SPLIT_CODE["plan"]])
    perm = rng.permutation(C)  # perm[rank] = class index
    targets = np.zeros(C, dtype=np.int64)
    groups = np.empty(C, dtype="<U1")
    targets[perm] = ordered
    groups[perm] = groups_by_rank
    assert (frequency_from_image_count(targets)[groups != "f"] == groups[groups != "f"]).all()
    return targets, groups


def _split_counts(rng, n_images: int, total: int, lo: int, hi: int) -> np.ndarray:
    """Objects per image in [lo, hi], summing to ``total`` (random, deterministic)."""
    k = rng.integers(lo, hi + 1, size=n_images)
    diff = total - int(k.sum())
    while diff != 0:
        step = 1 if diff > 0 else -1
        ok = np.nonzero((k < hi) if step > 0 else (k > lo))[0]
        pick = rng.choice(ok, size=min(abs(diff), len(ok)), replace=False)
        k[pick] += step
        diff -= step * len(pick)
    return k


def _assign(rng, tokens: np.ndarray, k: np.ndarray, unique_mask: np.ndarray, rare_mask: np.ndarray,
            freq_mask: np.ndarray, what: str) -> list:
    """Deal class tokens into images (k[i] slots each), then repair by random swaps so that
    classes in ``unique_mask`` appear at most once per image and every image holding a class in
    ``rare_mask`` also holds one in ``freq_mask`` (when that group is non-empty)."""
    tokens = tokens[rng.permutation(len(tokens))]
    bounds = np.concatenate([[0], np.cumsum(k)])
    img_of_slot = np.repeat(np.arange(len(k)), k)
    need_freq = bool(freq_mask.any())

    def violations(i):
        cls = tokens[bounds[i]:bounds[i + 1]]
        u = cls[unique_mask[cls]]
        v = len(u) - len(np.unique(u))
        if need_freq and rare_mask[cls].any() and not freq_mask[cls].any():
            v += 1
        return v

    bad = [i for i in range(len(k)) if violations(i)]
    swaps = 0
    for i in bad:
        tries = 0
        while violations(i):
            tries += 1
            if tries > 10000:
                raise RuntimeError(f"LT-Shapes: could not satisfy the co-occurrence constraints of the {what} split")
            s = int(rng.integers(bounds[i], bounds[i + 1]))
            t = int(rng.integers(0, len(tokens)))
            j = int(img_of_slot[t])
            if j == i:
                continue
            before = violations(i) + violations(j)
            tokens[s], tokens[t] = tokens[t], tokens[s]
            if violations(i) + violations(j) < before:
                swaps += 1
            else:
                tokens[s], tokens[t] = tokens[t], tokens[s]
    logger.debug("LT-Shapes %s: %d repair swaps", what, swaps)
    return [tokens[bounds[i]:bounds[i + 1]].copy() for i in range(len(k))]


def plan_split(spec: LTShapesSpec = LTShapesSpec(), seed: int = 0, split: str = "train"):
    """Which classes go into which image (no rendering). Returns a list (one per image) of
    int arrays of contiguous class indices."""
    C = spec.num_classes
    targets, groups = plan_class_targets(spec, seed)
    rng = np.random.default_rng([int(seed), _SPLIT_CODE[split], 7])
    if split == "train":
        tokens = np.repeat(np.arange(C), targets)
        k = _split_counts(rng, spec.num_train, len(tokens), spec.min_objects, spec.max_objects)
        return _assign(rng, tokens, k, unique_mask=groups != "f", rare_mask=groups == "r",
                       freq_mask=groups == "f", what="train")
    if split == "val":
        if spec.num_val == 0:
            return []
        mean_total = int(round(spec.num_val * (spec.min_objects + spec.max_objects) / 2))
        per_class = max(spec.val_min_instances, mean_total // C)
        total = per_class * C
        extra = min(max(0, mean_total - total), C)
        if not spec.num_val * spec.min_objects <= total <= spec.num_val * spec.max_objects:
            raise ValueError(
                f"LT-Shapes spec infeasible: {spec.val_min_instances} val instances for each of {C} classes need "
                f"{total} objects, but {spec.num_val} val images hold at most {spec.num_val * spec.max_objects}")
        tokens = np.concatenate([np.repeat(np.arange(C), per_class), rng.permutation(C)[:extra]])
        k = _split_counts(rng, spec.num_val, len(tokens), spec.min_objects, spec.max_objects)
        if k.max() > C:
            raise ValueError(f"LT-Shapes: {k.max()} objects per image but only {C} classes")
        all_true = np.ones(C, dtype=bool)
        return _assign(rng, tokens, k, unique_mask=all_true, rare_mask=~all_true, freq_mask=~all_true, what="val")
    raise ValueError(f"unknown split {split!r}; expected 'train' or 'val'")


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------

def _shape_polygon(shape: str, cx: float, cy: float, s: float) -> np.ndarray:
    """Vertices [N, 2] of a shape of extent ~s centred at (cx, cy)."""
    r = s / 2.0
    if shape == "circle":
        a = np.arange(24) * (2 * np.pi / 24)
        pts = np.stack([np.cos(a), np.sin(a)], 1) * r
    elif shape == "square":
        pts = np.array([[-r, -r], [r, -r], [r, r], [-r, r]])
    elif shape == "triangle":
        h = s * math.sqrt(3) / 2
        pts = np.array([[0, -h / 2], [r, h / 2], [-r, h / 2]])
    elif shape == "diamond":
        pts = np.array([[0, -r], [0.75 * r, 0], [0, r], [-0.75 * r, 0]])
    elif shape == "hexagon":
        a = np.arange(6) * (np.pi / 3)
        pts = np.stack([np.cos(a), np.sin(a)], 1) * r
    elif shape == "star":
        a = -np.pi / 2 + np.arange(10) * (np.pi / 5)
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        pts = np.stack([np.cos(a) * rad, np.sin(a) * rad], 1)
    else:  # pragma: no cover - validated by the spec
        raise ValueError(shape)
    return pts + np.array([cx, cy])


def _rasterize(poly_flat: list, h: int, w: int) -> np.ndarray:
    import pycocotools.mask as mask_util

    rle = mask_util.frPyObjects([poly_flat], h, w)
    return mask_util.decode(mask_util.merge(rle)).astype(bool)


def _shift_and(m: np.ndarray, iters: int) -> np.ndarray:
    """Binary erosion with a 4-neighbourhood, ``iters`` times."""
    out = m.copy()
    for _ in range(iters):
        e = out.copy()
        e[1:, :] &= out[:-1, :]
        e[:-1, :] &= out[1:, :]
        e[:, 1:] &= out[:, :-1]
        e[:, :-1] &= out[:, 1:]
        e[0, :] = e[-1, :] = False
        e[:, 0] = e[:, -1] = False
        out = e
    return out


def _dilate(m: np.ndarray, iters: int) -> np.ndarray:
    out = m.copy()
    for _ in range(iters):
        d = out.copy()
        d[1:, :] |= out[:-1, :]
        d[:-1, :] |= out[1:, :]
        d[:, 1:] |= out[:, :-1]
        d[:, :-1] |= out[:, 1:]
        out = d
    return out


def _polygon_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def _render_image(rng, classes: np.ndarray, attrs: list, class_rank: np.ndarray, spec: LTShapesSpec):
    """Render one image. Returns (uint8 HxWx3, list of (class, polygon [N,2])) and #dropped."""
    S = spec.image_size
    lo, hi = spec.size_range
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    # background: plain grey with a light linear gradient and a slight tint
    base = rng.uniform(95, 150)
    theta = rng.uniform(0, 2 * np.pi)
    amp = rng.uniform(0, 25)
    proj = (xx * math.cos(theta) + yy * math.sin(theta)) / S
    tint = rng.uniform(-6, 6, size=3)
    img = (base + amp * (proj - proj.mean()))[..., None] + tint[None, None, :]

    # place the rarest classes first so a (very unlikely) placement failure drops a frequent one
    order = np.argsort(class_rank[classes], kind="stable")[::-1]
    sizes = np.exp(rng.uniform(math.log(lo), math.log(hi), size=len(classes)))
    fill = float((sizes ** 2).sum()) / (S * S)
    if fill > spec.max_fill_fraction:
        sizes = np.maximum(lo, sizes * math.sqrt(spec.max_fill_fraction / fill))
    occupied = np.zeros((S, S), dtype=bool)
    objects = []
    dropped = 0
    for oi in order:
        cls = int(classes[oi])
        shape, color, fill_kind = attrs[cls]
        size = float(sizes[oi])
        placed = None
        for attempt in range(400):
            if attempt and attempt % 40 == 0:
                size = max(lo, size * 0.85)
            unit = _shape_polygon(shape, 0.0, 0.0, size)
            mn, mx = unit.min(0), unit.max(0)
            cx = rng.uniform(1 - mn[0], S - 1 - mx[0])
            cy = rng.uniform(1 - mn[1], S - 1 - mx[1])
            poly = np.round(unit + np.array([cx, cy]), 2)
            mask = _rasterize(poly.reshape(-1).tolist(), S, S)
            if not mask.any():
                continue
            if (mask & occupied).any():
                continue
            placed = (poly, mask, size)
            break
        if placed is None:
            dropped += 1
            continue
        poly, mask, size = placed
        occupied |= _dilate(mask, spec.min_gap + 1)
        col = np.clip(np.array(COLORS[color], dtype=np.float32) + rng.uniform(-12, 12, size=3), 0, 255)
        if fill_kind == "solid":
            paint = mask
        elif fill_kind == "outline":
            width = max(2, int(round(0.1 * size)))
            paint = mask & ~_shift_and(mask, width)
        else:  # striped: 45-degree stripes inside a thin outline
            period = 6
            stripes = ((xx + yy).astype(np.int64) % period) < (period // 2)
            paint = mask & (stripes | ~_shift_and(mask, 1))
        img[paint] = col
        objects.append((cls, poly))
    img = img + rng.normal(0, 3.0, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), objects, dropped


def _render_split(out_dir: str, split: str, plan: list, spec: LTShapesSpec, seed: int, class_rank: np.ndarray):
    from PIL import Image

    attrs = _class_attrs(spec)
    img_dir = os.path.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    dropped = 0
    C = spec.num_classes
    all_ids = np.arange(1, C + 1)
    for i, classes in enumerate(plan):
        rng = np.random.default_rng([int(seed), _SPLIT_CODE[split], i])
        pixels, objects, d = _render_image(rng, classes, attrs, class_rank, spec)
        dropped += d
        image_id = i + 1
        rel = f"{split}/{image_id:06d}.png"
        Image.fromarray(pixels).save(os.path.join(out_dir, rel), compress_level=1)
        present = np.unique([cls for cls, _ in objects]).astype(np.int64) + 1
        images.append({
            "id": image_id,
            "file_name": rel,
            "coco_url": rel,  # detectron2's load_lvis_json builds image_root + "<split>/<name>" from it
            "height": spec.image_size,
            "width": spec.image_size,
            "neg_category_ids": [int(c) for c in np.setdiff1d(all_ids, present)],
            "not_exhaustive_category_ids": [],
        })
        # annotations in class-index order of the plan (stable, deterministic)
        for cls, poly in objects:
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cls + 1,
                "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
                "area": round(_polygon_area(poly), 2),
                "segmentation": [[float(v) for v in poly.reshape(-1)]],
            })
    return images, annotations, dropped


def _counts(annotations: list, C: int):
    if not annotations:
        return np.zeros(C, np.int64), np.zeros(C, np.int64)
    img = np.array([a["image_id"] for a in annotations], dtype=np.int64)
    cat = np.array([a["category_id"] for a in annotations], dtype=np.int64) - 1
    inst = np.bincount(cat, minlength=C).astype(np.int64)
    pairs = np.unique(img * C + cat)
    return np.bincount(pairs % C, minlength=C).astype(np.int64), inst


def _write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))
    os.replace(tmp, path)


def _paths(out_dir: str) -> dict:
    out_dir = os.path.abspath(out_dir)
    return {
        "root": out_dir,
        "image_root": out_dir + os.sep,
        "train_json": os.path.join(out_dir, TRAIN_JSON),
        "val_json": os.path.join(out_dir, VAL_JSON),
        "train_images": os.path.join(out_dir, "train"),
        "val_images": os.path.join(out_dir, "val"),
        "done": os.path.join(out_dir, DONE_FILE),
    }


def is_complete(out_dir: str, seed: int = 0, spec: Optional[LTShapesSpec] = None) -> bool:
    """True when ``out_dir`` holds a finished generation for exactly this seed and spec."""
    spec = spec or LTShapesSpec()
    p = _paths(out_dir)
    try:
        with open(p["done"], "r", encoding="utf-8") as f:
            done = json.load(f)
    except (OSError, ValueError):
        return False
    return (done.get("hash") == _spec_hash(spec, seed) and os.path.isfile(p["train_json"])
            and os.path.isfile(p["val_json"]))


def generate(out_dir: str, seed: int = 0, spec: Optional[LTShapesSpec] = None) -> dict:
    """Generate LT-Shapes into ``out_dir`` (replacing whatever LT-Shapes output is there).

    Returns a dict of paths: root, image_root (root with a trailing separator), train_json,
    val_json, train_images, val_images, done.
    """
    spec = spec or LTShapesSpec()
    t0 = time.perf_counter()
    p = _paths(out_dir)
    os.makedirs(p["root"], exist_ok=True)
    # the DONE marker goes first and comes back last: an interrupted run is never taken as complete
    with contextlib.suppress(FileNotFoundError):
        os.remove(p["done"])
    for key in ("train_images", "val_images"):
        shutil.rmtree(p[key], ignore_errors=True)
    for key in ("train_json", "val_json"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(p[key])

    C = spec.num_classes
    names = class_names(spec)
    attrs = _class_attrs(spec)
    targets, groups = plan_class_targets(spec, seed)
    class_rank = np.argsort(np.argsort(-targets, kind="stable"), kind="stable")  # 0 = most frequent
    h = _spec_hash(spec, seed)

    train_plan = plan_split(spec, seed, "train")
    train_images, train_anns, train_dropped = _render_split(p["root"], "train", train_plan, spec, seed, class_rank)
    image_count, instance_count = _counts(train_anns, C)
    realised = frequency_from_image_count(image_count)
    wrong = np.nonzero((realised != groups) | (image_count == 0))[0]
    if len(wrong):
        raise RuntimeError(
            "LT-Shapes: realised training image counts left the intended frequency group for classes "
            + ", ".join(f"{names[i]} (intended {groups[i]}, {image_count[i]} images)" for i in wrong[:10])
            + f" ({len(wrong)} in total); spec {spec}, seed {seed}")

    categories = []
    for i, (name, (shape, color, fill_kind)) in enumerate(zip(names, attrs)):
        categories.append({
            "id": i + 1,
            "name": name,
            "synset": name,
            "synonyms": [name],
            "def": f"a {color} {shape} with {fill_kind} fill",
            "frequency": str(groups[i]),
            "image_count": int(image_count[i]),
            "instance_count": int(instance_count[i]),
        })
    info = {
        "description": "LT-Shapes: procedurally rendered long-tailed shapes (ltdet2)",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "spec": spec.to_dict(),
        "spec_hash": h,
    }

    val_plan = plan_split(spec, seed, "val")
    val_images, val_anns, val_dropped = _render_split(p["root"], "val", val_plan, spec, seed, class_rank)
    _, val_instances = _counts(val_anns, C)

    for key, split, imgs, anns in (("train_json", "train", train_images, train_anns),
                                   ("val_json", "val", val_images, val_anns)):
        _write_json(p[key], {"info": dict(info, split=split), "licenses": [], "images": imgs,
                             "annotations": anns, "categories": categories})
    with open(p["done"] + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"hash": h, "seed": int(seed), "version": GENERATOR_VERSION, "spec": spec.to_dict()}, f,
                  sort_keys=True)
    os.replace(p["done"] + ".tmp", p["done"])

    dt = time.perf_counter() - t0
    per_group = "; ".join(
        f"{g}: {int((groups == g).sum())} classes, train images/class "
        f"{int(image_count[groups == g].min()) if (groups == g).any() else 0}-"
        f"{int(image_count[groups == g].max()) if (groups == g).any() else 0}, "
        f"{int(instance_count[groups == g].sum())} train instances"
        for g in FREQUENCY_GROUPS)
    logger.info(
        "Generated LT-Shapes (seed %d, %d classes) in %s in %.1f s: train %d images / %d instances, "
        "val %d images / %d instances (min %d per class); %s; objects dropped (no room to place "
        "without overlap): train %d, val %d",
        seed, C, p["root"], dt, len(train_images), len(train_anns), len(val_images), len(val_anns),
        int(val_instances.min()) if C and val_anns else 0, per_group, train_dropped, val_dropped)
    if spec.num_val and C and int(val_instances.min()) < spec.val_min_instances:
        logger.warning("LT-Shapes val: class %s has only %d instances (< %d)",
                       names[int(val_instances.argmin())], int(val_instances.min()), spec.val_min_instances)
    return p


def default_root(seed: int = 0, spec: Optional[LTShapesSpec] = None) -> str:
    """``$LTDET2_DATASETS/lt_shapes_seed{seed}`` (default ``~/.cache/ltdet2/datasets``); a
    non-default spec gets a ``_{hash}`` suffix."""
    base = os.path.expanduser(os.environ.get("LTDET2_DATASETS", os.path.join("~", ".cache", "ltdet2", "datasets")))
    name = f"lt_shapes_seed{seed}"
    if spec is not None and spec != LTShapesSpec():
        name += "_" + _spec_hash(spec, seed)[:8]
    return os.path.join(base, name)


@contextlib.contextmanager
def _file_lock(path: str):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def get_lt_shapes(root: Optional[str] = None, seed: int = 0, spec: Optional[LTShapesSpec] = None) -> dict:
    """Paths of an LT-Shapes dataset, generating it on first use.

    Args:
        root: the dataset folder; default :func:`default_root` (``$LTDET2_DATASETS/lt_shapes_seed{seed}``).
    A folder without a matching ``DONE`` marker (interrupted, other seed/spec) is regenerated.
    Concurrent callers (e.g. several ranks) are serialised by a file lock.
    """
    spec = spec or LTShapesSpec()
    root = os.path.abspath(os.path.expanduser(root or default_root(seed, spec)))
    if is_complete(root, seed, spec):
        return _paths(root)
    os.makedirs(root, exist_ok=True)
    with _file_lock(os.path.join(root, ".lock")):
        if not is_complete(root, seed, spec):
            logger.info("LT-Shapes (seed %d) not found complete in %s; generating it", seed, root)
            generate(root, seed, spec)
    return _paths(root)


def register_lt_shapes(root: Optional[str] = None, seed: int = 0, spec: Optional[LTShapesSpec] = None,
                       name_prefix: str = "lt_shapes") -> tuple:
    """Register ``{name_prefix}_train`` and ``{name_prefix}_val`` in Detectron2's catalogs.

    Lazy: the data is generated (via :func:`get_lt_shapes`) when the dataset is first loaded.
    Dicts come from Detectron2's own ``load_lvis_json`` (``category_id`` 0-based contiguous =
    json id - 1). Metadata: ``evaluator_type="lvis"``, ``json_file``, ``image_root``,
    ``thing_classes`` (contiguous order), ``seed``, ``lt_shapes_spec``; ``class_image_count`` is
    added when the train split is loaded. Names already registered for the same json are
    skipped; a name registered for another dataset is an error.

    Returns the two dataset names.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    spec = spec or LTShapesSpec()
    root = os.path.abspath(os.path.expanduser(root or default_root(seed, spec)))
    p = _paths(root)
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

        def _load(split=split, name=name, json_file=json_file):
            from detectron2.data.datasets.lvis import load_lvis_json

            paths = get_lt_shapes(root, seed, spec)
            dicts = load_lvis_json(paths[f"{split}_json"], paths["image_root"])
            meta = MetadataCatalog.get(name)
            if split == "train" and not hasattr(meta, "class_image_count"):
                from .lvis_meta import load_lvis_meta

                meta.set(class_image_count=load_lvis_meta(paths["train_json"]).class_image_count())
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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Generate the LT-Shapes long-tailed dataset (LVIS json format).")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=None)
    parser.add_argument("--num-val", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--force", action="store_true", help="regenerate even if a complete copy exists")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("num_train", args.num_train), ("num_val", args.num_val),
                                   ("image_size", args.image_size)) if v is not None}
    spec = LTShapesSpec(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if not args.force and is_complete(args.out, args.seed, spec):
        logger.info("%s already holds LT-Shapes for seed %d and this spec (use --force to redo)", args.out, args.seed)
        paths = _paths(args.out)
    else:
        paths = generate(args.out, args.seed, spec)
    print(json.dumps(paths, indent=1))
    return paths


if __name__ == "__main__":  # pragma: no cover
    main()
