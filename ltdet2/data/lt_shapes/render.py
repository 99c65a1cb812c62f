"""Rendering LT-Shapes images and their LVIS records from a plan.

Masks are rasterised from the polygons with pycocotools (the rasteriser Detectron2 and the LVIS API
use), and objects never overlap, so the rendered object pixels are exactly the annotation's mask.
Every image draws from its own random stream ``[seed, SPLIT_SEED[split], image index]``.
"""

import math
import os

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image
from scipy import ndimage

from .plan import SPLIT_SEED
from .spec import COLORS, LTShapesSpec, class_attributes

__all__ = ["render_image", "render_split"]

_STRIPE_PERIOD = 6  # pixels, along the image diagonal


def _shape_polygon(shape: str, size: float) -> np.ndarray:
    """Vertices [N, 2] (x, y) of a shape of extent ~``size`` centred at the origin."""
    r = size / 2.0
    if shape == "circle":
        a = np.arange(24) * (2 * np.pi / 24)
        return np.stack([np.cos(a), np.sin(a)], 1) * r
    if shape == "square":
        return np.array([[-r, -r], [r, -r], [r, r], [-r, r]])
    if shape == "triangle":
        h = size * math.sqrt(3) / 2
        return np.array([[0, -h / 2], [r, h / 2], [-r, h / 2]])
    if shape == "diamond":
        return np.array([[0, -r], [0.75 * r, 0], [0, r], [-0.75 * r, 0]])
    if shape == "hexagon":
        a = np.arange(6) * (np.pi / 3)
        return np.stack([np.cos(a), np.sin(a)], 1) * r
    if shape == "star":
        a = -np.pi / 2 + np.arange(10) * (np.pi / 5)
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        return np.stack([np.cos(a) * rad, np.sin(a) * rad], 1)
    raise ValueError(f"unknown shape {shape!r}")  # pragma: no cover - validated by the spec


def _rasterize(polygon: np.ndarray, size: int) -> np.ndarray:
    """Bool [size, size] mask of a polygon [N, 2] (x, y), as pycocotools rasterises annotations."""
    rle = mask_util.frPyObjects([polygon.reshape(-1).tolist()], size, size)
    return mask_util.decode(mask_util.merge(rle)).astype(bool)


def _window(mask: np.ndarray, margin: int) -> tuple:
    """Slices of the bounding box of a non-empty ``mask`` grown by ``margin`` pixels (clipped to the image).

    Morphology runs on this window only (exact: the mask is empty outside it, and a window edge at the
    image border sees the same zero border); on the whole image it costs ~10x more per object.
    """
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return (
        slice(max(int(rows[0]) - margin, 0), int(rows[-1]) + margin + 1),
        slice(max(int(cols[0]) - margin, 0), int(cols[-1]) + margin + 1),
    )


def _erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Erosion by the 4-neighbourhood cross, ``iterations`` times; pixels outside the image are background."""
    window = _window(mask, 0)
    out = np.zeros_like(mask)
    out[window] = ndimage.binary_erosion(mask[window], iterations=iterations)
    return out


def _polygon_area(polygon: np.ndarray) -> float:
    # The shoelace area of the polygon, like COCO / LVIS polygon annotations; pycocotools' mask area
    # would be the rasterised pixel count, a different number (and different json bytes).
    # math.fsum, not np.dot: BLAS sums in a CPU-dependent order (OpenBLAS' AVX-512 kernel and its AVX2 one gave
    # different 2-decimal areas), and the json bytes must not depend on the machine.
    x, y = polygon[:, 0], polygon[:, 1]
    forward = math.fsum((x * np.roll(y, -1)).tolist())
    backward = math.fsum((y * np.roll(x, -1)).tolist())
    return float(abs(forward - backward) / 2.0)


def render_image(rng: np.random.Generator, classes: np.ndarray, class_rank: np.ndarray, spec: LTShapesSpec):
    """Render one image holding ``classes`` (contiguous indices), without overlaps.

    Args:
        class_rank: [C] frequency rank of every class (0 = most frequent); rarer classes are placed
            first so a (very unlikely) placement failure drops a frequent one.
    Returns:
        (pixels uint8 [S, S, 3] RGB, objects: list of (class index, polygon [N, 2] x, y) in placement
        order, number of objects dropped for lack of room).
    """
    S = spec.image_size
    lo, hi = spec.size_range
    attrs = class_attributes(spec)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    stripes = ((xx + yy).astype(np.int64) % _STRIPE_PERIOD) < (_STRIPE_PERIOD // 2)
    # background: plain grey with a light linear gradient and a slight tint
    base = rng.uniform(95, 150)
    theta = rng.uniform(0, 2 * np.pi)
    amp = rng.uniform(0, 25)
    proj = (xx * math.cos(theta) + yy * math.sin(theta)) / S
    tint = rng.uniform(-6, 6, size=3)
    img = (base + amp * (proj - proj.mean()))[..., None] + tint[None, None, :]

    order = np.argsort(class_rank[classes], kind="stable")[::-1]
    sizes = np.exp(rng.uniform(math.log(lo), math.log(hi), size=len(classes)))
    fill = float((sizes**2).sum()) / (S * S)
    if fill > spec.max_fill_fraction:
        sizes = np.maximum(lo, sizes * math.sqrt(spec.max_fill_fraction / fill))
    occupied = np.zeros((S, S), dtype=bool)  # object masks grown by min_gap + 1 pixels
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
            unit = _shape_polygon(shape, size)
            mn, mx = unit.min(0), unit.max(0)
            cx = rng.uniform(1 - mn[0], S - 1 - mx[0])
            cy = rng.uniform(1 - mn[1], S - 1 - mx[1])
            poly = np.round(unit + np.array([cx, cy]), 2)
            mask = _rasterize(poly, S)
            if mask.any() and not (mask & occupied).any():
                placed = (poly, mask, size)
                break
        if placed is None:
            dropped += 1
            continue
        poly, mask, size = placed
        grow = spec.min_gap + 1  # 4-neighbourhood steps
        window = _window(mask, grow)
        occupied[window] |= ndimage.binary_dilation(mask[window], iterations=grow)
        col = np.clip(np.array(COLORS[color], dtype=np.float32) + rng.uniform(-12, 12, size=3), 0, 255)
        if fill_kind == "solid":
            paint = mask
        elif fill_kind == "outline":
            width = max(2, int(round(0.1 * size)))
            paint = mask & ~_erode(mask, width)
        else:  # striped: 45-degree stripes inside a one-pixel outline
            paint = mask & (stripes | ~_erode(mask, 1))
        img[paint] = col
        objects.append((cls, poly))
    img = img + rng.normal(0, 3.0, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), objects, dropped


def render_split(out_dir: str, split: str, plan: list, spec: LTShapesSpec, seed: int, class_rank: np.ndarray):
    """Render the images of ``plan`` (one array of class indices per image) into ``out_dir/split/``.

    Returns:
        (LVIS ``images`` records, LVIS ``annotations`` records, number of objects dropped). Image ids
        are 1.. in plan order, annotation ids 1.. in image order, then placement order.
    """
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    images, annotations = [], []
    dropped = 0
    all_ids = np.arange(1, spec.num_classes + 1)
    for i, classes in enumerate(plan):
        rng = np.random.default_rng([int(seed), SPLIT_SEED[split], i])
        pixels, objects, d = render_image(rng, classes, class_rank, spec)
        dropped += d
        image_id = i + 1
        rel = f"{split}/{image_id:06d}.png"
        Image.fromarray(pixels).save(os.path.join(out_dir, rel), compress_level=1)
        present = np.unique([cls for cls, _ in objects]).astype(np.int64) + 1
        images.append(
            {
                "id": image_id,
                "file_name": rel,
                "coco_url": rel,  # detectron2's load_lvis_json builds image_root + "<split>/<name>" from it
                "height": spec.image_size,
                "width": spec.image_size,
                "neg_category_ids": [int(c) for c in np.setdiff1d(all_ids, present)],
                "not_exhaustive_category_ids": [],
            }
        )
        for cls, poly in objects:
            # the polygon's own extent (pycocotools' toBbox would give the rasterised pixels' box)
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cls + 1,
                    "bbox": [
                        round(float(x0), 2),
                        round(float(y0), 2),
                        round(float(x1 - x0), 2),
                        round(float(y1 - y0), 2),
                    ],
                    "area": round(_polygon_area(poly), 2),
                    "segmentation": [[float(v) for v in poly.reshape(-1)]],
                }
            )
    return images, annotations, dropped
