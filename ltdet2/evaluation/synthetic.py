"""
Seeded synthetic LVIS-style ground truth and detections, for evaluator tests and benchmarks.

Detections are jittered copies of the ground truth plus false positives, drawn on purpose from
each image's ``neg_category_ids``, ``not_exhaustive_category_ids``, annotated categories and
random (unverified) categories, so every branch of LVIS's federated evaluation is exercised.
"""
import numpy as np

__all__ = [
    "LVIS_V1_FREQUENCY_COUNTS",
    "detections_array_to_dicts",
    "make_lvis_gt",
    "make_lvis_detections",
    "make_lvis_detections_fast",
]

# categories per frequency group in LVIS v1 (1203 categories)
LVIS_V1_FREQUENCY_COUNTS = {"r": 337, "c": 461, "f": 405}


def _lvis_like_frequency(img_count, pop):
    """
    Frequency group per category by rank of image count (ties: popularity), with the shares of
    LVIS v1; every group non-empty when there are at least 3 categories.
    """
    C = len(img_count)
    total = sum(LVIS_V1_FREQUENCY_COUNTS.values())
    n_f = int(round(C * LVIS_V1_FREQUENCY_COUNTS["f"] / total))
    n_c = int(round(C * LVIS_V1_FREQUENCY_COUNTS["c"] / total))
    if C >= 3:
        n_f = min(max(n_f, 1), C - 2)
        n_c = min(max(n_c, 1), C - n_f - 1)
    order = np.lexsort((-pop, -img_count))  # most images first
    freq = np.full(C, "r")
    freq[order[:n_f]] = "f"
    freq[order[n_f : n_f + n_c]] = "c"
    return freq


def make_lvis_gt(num_images=100, num_classes=1203, *, seed=0, max_objects=8, image_size=(480, 640)):
    """
    Build an LVIS-format ground-truth dict in memory.

    Categories get ids 1..C and a Zipf-like image frequency; the LVIS frequency groups are
    quantiles of it with LVIS v1's shares (337 r / 461 c / 405 f of 1203 categories): the
    405/1203 categories in most images are "f", the next 461/1203 "c", the rest "r" (LVIS's
    absolute thresholds, 10 and 100 training images, do not transfer to a small set). Each
    image gets annotations, ``neg_category_ids`` and ``not_exhaustive_category_ids``.

    Returns:
        dict: with "images", "annotations" (bbox only; area = w*h), "categories".
    """
    rng = np.random.default_rng(seed)
    H, W = image_size
    C = num_classes
    # Zipf-like class popularity; frequency groups by share of images (LVIS thresholds 10/100
    # images out of ~100k training images are scaled to this set)
    pop = 1.0 / np.arange(1, C + 1) ** 1.1
    pop = pop[rng.permutation(C)]
    pop /= pop.sum()
    n_obj = rng.integers(1, max_objects + 1, size=num_images)
    total = int(n_obj.sum())
    ann_cat = rng.choice(C, size=total, p=pop) + 1
    ann_img = np.repeat(np.arange(1, num_images + 1), n_obj)
    # boxes: log-uniform sizes so small/medium/large all occur
    w = np.exp(rng.uniform(np.log(8), np.log(W * 0.8), size=total))
    h = np.clip(w * np.exp(rng.normal(0, 0.4, size=total)), 6, H * 0.9)
    x = rng.uniform(0, 1, size=total) * (W - w)
    y = rng.uniform(0, 1, size=total) * (H - h)
    boxes = np.round(np.stack([x, y, w, h], 1), 2)

    img_count = np.zeros(C + 1, dtype=np.int64)
    for i in np.unique(np.stack([ann_img, ann_cat], 1), axis=0):
        img_count[i[1]] += 1
    freq = _lvis_like_frequency(img_count[1:], pop)
    categories = [
        {"id": int(c + 1), "name": f"class_{c + 1:04d}", "frequency": str(freq[c]),
         "image_count": int(img_count[c + 1]), "instance_count": int((ann_cat == c + 1).sum()),
         "synonyms": [f"class_{c + 1:04d}"], "synset": f"class_{c + 1:04d}.n.01", "def": ""}
        for c in range(C)
    ]  # fmt: skip
    annotations = []
    for k in range(total):
        x, y, w, h = boxes[k].tolist()
        annotations.append(
            {
                "id": k + 1,
                "image_id": int(ann_img[k]),
                "category_id": int(ann_cat[k]),
                "bbox": [x, y, w, h],
                "area": w * h,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            }
        )
    images = []
    starts = np.r_[0, np.cumsum(n_obj)]
    for i in range(num_images):
        pos = set(ann_cat[starts[i] : starts[i + 1]].tolist())
        cand = rng.choice(C, size=min(C, 12), replace=False, p=pop) + 1
        neg = [int(c) for c in cand[:8] if c not in pos]
        pos_l = sorted(pos)
        nel = [int(c) for c in pos_l if rng.random() < 0.1]
        images.append(
            {"id": i + 1, "height": H, "width": W, "file_name": f"{i + 1:012d}.jpg",
             "neg_category_ids": neg, "not_exhaustive_category_ids": nel}
        )  # fmt: skip
    return {"images": images, "annotations": annotations, "categories": categories,
            "info": {"description": f"synthetic LVIS-style set, seed {seed}"}, "licenses": []}  # fmt: skip


def make_lvis_detections(gt, *, seed=0, dets_per_image=None, fp_per_image=10, with_masks=False):
    """
    Seeded detections for an LVIS-format ground-truth dict.

    Args:
        gt (dict): LVIS annotations (images with neg/not-exhaustive lists, annotations).
        dets_per_image (int or None): if given, pad every image with random false positives
            up to this many detections (after the jittered copies); otherwise ``fp_per_image``
            false positives are added.
        with_masks (bool): add an RLE "segmentation" to every detection: the ground-truth mask
            (polygons rasterised with pycocotools) shifted by the box jitter for true copies,
            a box mask for false positives.

    Returns:
        list[dict]: LVIS results (image_id, category_id, bbox [x, y, w, h], score[, segmentation]).
    """
    rng = np.random.default_rng(seed)
    imgs = {im["id"]: im for im in gt["images"]}
    cat_ids = np.array(sorted(c["id"] for c in gt["categories"]))
    anns_by_img = {}
    for a in gt["annotations"]:
        anns_by_img.setdefault(a["image_id"], []).append(a)
    if with_masks:
        from pycocotools import mask as mask_util
    out = []
    for img_id in sorted(imgs):
        im = imgs[img_id]
        H, W = im["height"], im["width"]
        anns = anns_by_img.get(img_id, [])
        dets = []
        for a in anns:
            for _ in range(rng.integers(0, 3)):  # 0, 1 or 2 copies
                x, y, w, h = a["bbox"]
                s = rng.normal(0, 0.12, size=4)
                dx, dy = s[0] * w, s[1] * h
                nw, nh = max(w * np.exp(s[2]), 1.0), max(h * np.exp(s[3]), 1.0)
                cat = a["category_id"]
                if rng.random() < 0.05:  # wrong label on a good box
                    cat = int(rng.choice(cat_ids))
                d = {"image_id": img_id, "category_id": int(cat),
                     "bbox": [float(x + dx), float(y + dy), float(nw), float(nh)],
                     "score": float(rng.uniform(0.2, 1.0))}  # fmt: skip
                if with_masks:
                    d["_src"] = (a, int(round(dx)), int(round(dy)))
                dets.append(d)
        n_fp = fp_per_image if dets_per_image is None else max(dets_per_image - len(dets), 0)
        pools = [
            list(im.get("neg_category_ids", [])),
            list(im.get("not_exhaustive_category_ids", [])),
            [a["category_id"] for a in anns],
        ]
        for _ in range(n_fp):
            kind = rng.integers(0, 4)
            pool = pools[kind] if kind < 3 else None
            cat = int(rng.choice(pool)) if pool else int(rng.choice(cat_ids))
            w = float(np.exp(rng.uniform(np.log(4), np.log(W * 0.7))))
            h = float(np.clip(w * np.exp(rng.normal(0, 0.4)), 4, H * 0.9))
            x = float(rng.uniform(0, W - w))
            y = float(rng.uniform(0, H - h))
            dets.append({"image_id": img_id, "category_id": cat, "bbox": [x, y, w, h],
                         "score": float(rng.uniform(0.0, 0.9))})  # fmt: skip
        if with_masks:
            for d in dets:
                src = d.pop("_src", None)
                if src is None:
                    x, y, w, h = d["bbox"]
                    rle = mask_util.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], H, W)
                    m = mask_util.decode(rle)[..., 0]
                else:
                    a, dx, dy = src
                    seg = a["segmentation"]
                    rles = mask_util.frPyObjects(seg, H, W) if isinstance(seg, list) else [seg]
                    m = mask_util.decode(mask_util.merge(rles) if isinstance(rles, list) else rles)
                    m = np.roll(np.roll(m, dy, axis=0), dx, axis=1)
                rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                d["segmentation"] = rle
        out.extend(dets)
    return out


def make_lvis_detections_fast(gt, *, seed=0, dets_per_image=300, as_array=False):
    """
    Vectorised bbox-only variant of :func:`make_lvis_detections` for large benchmarks:
    0-2 jittered copies per ground-truth box (5% with a wrong label), then false positives
    up to ``dets_per_image`` per image, their categories drawn in equal shares from the image's
    negative, not-exhaustive and annotated categories and from all categories.

    Args:
        as_array (bool): return an ``[N, 7]`` float64 array with columns
            ``image_id, x, y, w, h, score, category_id`` (the columnar input of
            :func:`ltdet2.evaluation.evaluate_lvis`) instead of a list of dicts: no Python
            object per detection (LVIS-val size: 6M detections).

    Returns:
        list[dict] | ndarray: LVIS bbox results; the same detections in the same order either
        way (``detections_array_to_dicts`` converts).
    """
    rng = np.random.default_rng(seed)
    images = sorted(gt["images"], key=lambda im: im["id"])
    img_ids = np.array([im["id"] for im in images], dtype=np.int64)
    index_of = {int(i): k for k, i in enumerate(img_ids)}
    H = np.array([im["height"] for im in images], dtype=np.float64)
    W = np.array([im["width"] for im in images], dtype=np.float64)
    cat_ids = np.array(sorted(c["id"] for c in gt["categories"]), dtype=np.int64)
    N = len(images)

    anns = gt["annotations"]
    a_img = np.array([index_of[a["image_id"]] for a in anns], dtype=np.int64)
    a_cat = np.array([a["category_id"] for a in anns], dtype=np.int64)
    a_box = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)

    # true-positive-like copies
    n_copies = rng.integers(0, 3, size=len(anns))
    src = np.repeat(np.arange(len(anns)), n_copies)
    s = rng.normal(0, 0.12, size=(len(src), 4))
    b = a_box[src]
    tp_box = np.stack(
        [b[:, 0] + s[:, 0] * b[:, 2], b[:, 1] + s[:, 1] * b[:, 3],
         np.maximum(b[:, 2] * np.exp(s[:, 2]), 1.0), np.maximum(b[:, 3] * np.exp(s[:, 3]), 1.0)], 1
    )  # fmt: skip
    tp_cat = a_cat[src].copy()
    wrong = rng.random(len(src)) < 0.05
    tp_cat[wrong] = rng.choice(cat_ids, size=int(wrong.sum()))
    tp_img = a_img[src]
    tp_score = rng.uniform(0.2, 1.0, size=len(src))

    # false positives up to dets_per_image
    k = np.bincount(tp_img, minlength=N)
    n_fp = np.maximum(dets_per_image - k, 0)
    fp_img = np.repeat(np.arange(N), n_fp)
    M = len(fp_img)
    fp_cat = rng.choice(cat_ids, size=M)
    kind = rng.integers(0, 4, size=M)

    def _pool(lists):
        lens = np.array([len(x) for x in lists], dtype=np.int64)
        flat = np.fromiter(
            (c for x in lists for c in x), dtype=np.int64, count=int(lens.sum())
        )
        return flat, np.r_[0, np.cumsum(lens)[:-1]], lens

    pos_lists = [[] for _ in range(N)]
    for i, c in zip(a_img.tolist(), a_cat.tolist()):
        pos_lists[i].append(c)
    pools = [
        _pool([im.get("neg_category_ids", []) for im in images]),
        _pool([im.get("not_exhaustive_category_ids", []) for im in images]),
        _pool(pos_lists),
    ]
    for kk, (flat, start, lens) in enumerate(pools):
        sel = (kind == kk) & (lens[fp_img] > 0)
        j = start[fp_img[sel]] + (rng.random(int(sel.sum())) * lens[fp_img[sel]]).astype(np.int64)
        fp_cat[sel] = flat[j]
    w = np.exp(rng.uniform(np.log(4), np.log(W[fp_img] * 0.7)))
    h = np.clip(w * np.exp(rng.normal(0, 0.4, size=M)), 4, H[fp_img] * 0.9)
    x = rng.uniform(0, 1, size=M) * (W[fp_img] - w)
    y = rng.uniform(0, 1, size=M) * (H[fp_img] - h)
    fp_box = np.stack([x, y, w, h], 1)
    fp_score = rng.uniform(0.0, 0.9, size=M)

    out = np.empty((len(tp_img) + M, 7), dtype=np.float64)
    out[:, 0] = img_ids[np.r_[tp_img, fp_img]]
    out[:, 1:5] = np.round(np.r_[tp_box, fp_box], 2)
    out[:, 5] = np.r_[tp_score, fp_score]
    out[:, 6] = np.r_[tp_cat, fp_cat]
    if as_array:
        return out
    return detections_array_to_dicts(out)


def detections_array_to_dicts(arr):
    """``[N, 7]`` results array (image_id, x, y, w, h, score, category_id) -> list of dicts."""
    arr = np.asarray(arr, dtype=np.float64).reshape(-1, 7)
    img = arr[:, 0].astype(np.int64).tolist()
    cat = arr[:, 6].astype(np.int64).tolist()
    return [
        {"image_id": i, "category_id": c, "bbox": bb, "score": sc}
        for i, c, bb, sc in zip(img, cat, arr[:, 1:5].tolist(), arr[:, 5].tolist())
    ]
