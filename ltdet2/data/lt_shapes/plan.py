"""Planning an LT-Shapes dataset without rendering: per-class training image targets (a Zipf-like
curve over LVIS's frequency groups) and which classes go into which image."""

import logging
import math

import numpy as np

from ..categories import frequency_from_image_count
from .spec import LTShapesSpec

__all__ = ["SPLIT_SEED", "plan_class_targets", "plan_split"]

logger = logging.getLogger(__name__)

# second word of the numpy seed of each random stream: [seed, SPLIT_SEED[...], ...]
SPLIT_SEED = {"plan": 0, "train": 1, "val": 2}


def _log_linear(hi: float, lo: float, n: int) -> np.ndarray:
    """[n] int64 values falling log-linearly from ``hi`` to ``lo`` (rounded, at least 1)."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if n == 1:
        return np.array([int(round(hi))], dtype=np.int64)
    t = np.arange(n) / (n - 1)
    return np.maximum(1, np.round(hi * (lo / hi) ** t)).astype(np.int64)


def plan_class_targets(spec: LTShapesSpec | None = None, seed: int = 0):
    """Intended frequency group and target number of training images of every class.

    Cheap (no rendering). Returns (targets [C] int64, groups [C] of 'r'/'c'/'f'), indexed by
    contiguous class index (category id - 1).
    """
    spec = LTShapesSpec() if spec is None else spec
    C = spec.num_classes
    n_r = int(round(C * spec.group_fractions[0]))
    n_f = int(round(C * spec.group_fractions[2]))
    n_c = C - n_r - n_f
    if n_c < 0:
        raise ValueError(f"LTShapesSpec.group_fractions {spec.group_fractions} leave no room for {C} classes")
    budget = int(round(spec.num_train * (spec.min_objects + spec.max_objects) / 2))
    cap = max(1, int(math.floor(spec.max_target_fraction * spec.num_train)))
    rare = _log_linear(*spec.rare_targets, n_r)
    sizes = {"r": n_r, "c": n_c, "f": n_f}
    filler = "f" if n_f else ("c" if n_c else "r")
    ranges = {
        "r": (spec.rare_targets[1], spec.rare_targets[0]),
        "c": (spec.common_targets[1], spec.common_targets[0]),
        "f": (spec.frequent_min_target, cap),
    }
    fixed = {"r": rare, "c": _log_linear(*spec.common_targets, n_c)}
    rest = budget - sum(int(fixed[g].sum()) for g in ("r", "c") if g != filler)
    lo, hi_cap = ranges[filler]
    hi_cap = min(hi_cap, cap)
    if lo > hi_cap:
        raise ValueError(
            f"LT-Shapes spec infeasible: the {filler!r} group needs at least {lo} training images per class "
            f"but num_train={spec.num_train} allows at most {hi_cap} (max_target_fraction="
            f"{spec.max_target_fraction}); use more images, fewer classes or other group_fractions"
        )
    # largest top value whose curve fits the remaining object budget
    best = lo
    a, b = lo, hi_cap
    while a <= b:
        mid = (a + b) // 2
        if _log_linear(mid, lo, sizes[filler]).sum() <= rest:
            best, a = mid, mid + 1
        else:
            b = mid - 1
    fixed[filler] = _log_linear(best, lo, sizes[filler])
    ordered = np.concatenate(
        [
            fixed["f"] if filler == "f" else np.zeros(0, np.int64),
            fixed["c"] if n_c else np.zeros(0, np.int64),
            fixed["r"],
        ]
    )
    groups_by_rank = np.array(["f"] * n_f + ["c"] * n_c + ["r"] * n_r, dtype="<U1")
    if (ordered > cap).any():
        raise ValueError(
            f"LT-Shapes spec infeasible: a class targets {int(ordered.max())} images, more than "
            f"{cap} (= {spec.max_target_fraction} x num_train {spec.num_train})"
        )
    total = int(ordered.sum())
    if not spec.num_train * spec.min_objects <= total <= spec.num_train * spec.max_objects:
        raise ValueError(
            f"LT-Shapes spec infeasible: the class targets need {total} objects, but {spec.num_train} images "
            f"with {spec.min_objects}..{spec.max_objects} objects hold "
            f"{spec.num_train * spec.min_objects}..{spec.num_train * spec.max_objects}"
        )
    rng = np.random.default_rng([int(seed), SPLIT_SEED["plan"]])
    perm = rng.permutation(C)  # perm[rank] = class index
    targets = np.zeros(C, dtype=np.int64)
    groups = np.empty(C, dtype="<U1")
    targets[perm] = ordered
    groups[perm] = groups_by_rank
    assert (frequency_from_image_count(targets)[groups != "f"] == groups[groups != "f"]).all()
    return targets, groups


def _objects_per_image(rng, n_images: int, total: int, lo: int, hi: int) -> np.ndarray:
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


def _assign(
    rng,
    tokens: np.ndarray,
    k: np.ndarray,
    unique_mask: np.ndarray,
    rare_mask: np.ndarray,
    freq_mask: np.ndarray,
    what: str,
) -> list:
    """Deal class tokens into images (k[i] slots each), then repair by random swaps so that
    classes in ``unique_mask`` appear at most once per image and every image holding a class in
    ``rare_mask`` also holds one in ``freq_mask`` (when that group is non-empty)."""
    tokens = tokens[rng.permutation(len(tokens))]
    bounds = np.concatenate([[0], np.cumsum(k)])
    img_of_slot = np.repeat(np.arange(len(k)), k)
    need_freq = bool(freq_mask.any())

    def violations(i):
        cls = tokens[bounds[i] : bounds[i + 1]]
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
    return [tokens[bounds[i] : bounds[i + 1]].copy() for i in range(len(k))]


def plan_split(spec: LTShapesSpec | None = None, seed: int = 0, split: str = "train"):
    """Which classes go into which image (no rendering). Returns a list (one per image) of
    int arrays of contiguous class indices."""
    spec = LTShapesSpec() if spec is None else spec
    C = spec.num_classes
    targets, groups = plan_class_targets(spec, seed)
    rng = np.random.default_rng([int(seed), SPLIT_SEED[split], 7])
    if split == "train":
        tokens = np.repeat(np.arange(C), targets)
        k = _objects_per_image(rng, spec.num_train, len(tokens), spec.min_objects, spec.max_objects)
        return _assign(
            rng, tokens, k, unique_mask=groups != "f", rare_mask=groups == "r", freq_mask=groups == "f", what="train"
        )
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
                f"{total} objects, but {spec.num_val} val images hold at most {spec.num_val * spec.max_objects}"
            )
        tokens = np.concatenate([np.repeat(np.arange(C), per_class), rng.permutation(C)[:extra]])
        k = _objects_per_image(rng, spec.num_val, len(tokens), spec.min_objects, spec.max_objects)
        if k.max() > C:
            raise ValueError(f"LT-Shapes: {k.max()} objects per image but only {C} classes")
        all_true = np.ones(C, dtype=bool)
        return _assign(rng, tokens, k, unique_mask=all_true, rare_mask=~all_true, freq_mask=~all_true, what="val")
    raise ValueError(f"unknown split {split!r}; expected 'train' or 'val'")
