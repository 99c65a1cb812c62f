#!/usr/bin/env python
"""Times ltdet2's dataset validation (and building the Detectron2 dicts) on a synthetic LVIS-v1-sized json.

    python scripts/benchmark_dataset_validation.py [--annotations 1270000 --images 100170 --classes 1203]

The json is built in memory (LVIS v1 train's sizes by default: boxes, one 8-point polygon per object,
federated image lists); parsing the real file (about 1 GB) is not included.
"""

import argparse
import time

import numpy as np

from ltdet2.data.datasets import _dataset_dicts
from ltdet2.data.validation import check_annotations


def synthetic_lvis(num_annotations: int, num_images: int, num_classes: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    image_of = rng.integers(1, num_images + 1, num_annotations).tolist()
    class_of = rng.integers(1, num_classes + 1, num_annotations).tolist()
    boxes = np.round(rng.uniform(1, 300, (num_annotations, 4)), 2).tolist()
    images = [
        {
            "id": i,
            "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg",
            "height": 480,
            "width": 640,
            "neg_category_ids": [1, 2, 3],
            "not_exhaustive_category_ids": [4],
        }
        for i in range(1, num_images + 1)
    ]
    annotations = [
        {
            "id": k + 1,
            "image_id": i,
            "category_id": c,
            "bbox": b,
            "area": b[2] * b[3],
            "segmentation": [[b[0], b[1], b[0] + b[2], b[1], b[0] + b[2], b[1] + b[3], b[0], b[1] + b[3]]],
        }
        for k, (i, c, b) in enumerate(zip(image_of, class_of, boxes))
    ]
    categories = [{"id": c, "name": f"class_{c}"} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", type=int, default=1_270_000)
    parser.add_argument("--images", type=int, default=100_170)
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    d = synthetic_lvis(args.annotations, args.images, args.classes)
    print(f"built {len(d['annotations'])} annotations / {len(d['images'])} images in {time.perf_counter() - t0:.1f} s")
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        checked = check_annotations(d, source="<synthetic>")
        times.append(time.perf_counter() - t0)
    print(f"check_annotations: {min(times):.2f} s (best of {args.repeats}; all {', '.join(f'{t:.2f}' for t in times)})")
    t0 = time.perf_counter()
    dicts = _dataset_dicts(d, checked, "/datasets/coco/")
    print(f"dataset dicts: {len(dicts)} records in {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
