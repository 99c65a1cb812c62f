#!/usr/bin/env python
"""Writes a subset of LT-Shapes as a user's own dataset: every k-th class (json ids 1, 1+k, ...: not
contiguous), the images holding them, and two json files for ltdet2.data.register_lvis_format_dataset.

    python scripts/make_lt_shapes_subset.py --out datasets/lt_shapes_subset [--every 3] [--format lvis]

Writes ``<out>/train.json`` and ``<out>/val.json`` and links ``<out>/train``, ``<out>/val`` to the
LT-Shapes images (generated on first use, see ltdet2.data.lt_shapes), so ``<out>`` is the image root.
Categories carry no counts and the train json no frequency groups: they are computed from the
annotations when the dataset is loaded. ``--format lvis`` (default) keeps LVIS's federated image
lists and gives the val json the training frequency groups and counts, as LVIS val files do;
``--format coco`` writes plain COCO files (exhaustive annotation, ``file_name`` only, no groups).
"""

import argparse
import os
import shutil

import numpy as np

from ltdet2.data.class_counts import class_counts
from ltdet2.data.lt_shapes import get_lt_shapes
from ltdet2.data.lvis_meta import frequency_from_image_count
from ltdet2.utils.json_io import read_json, write_json_atomic

IMAGE_FIELDS = ("id", "file_name", "height", "width")
CATEGORY_FIELDS = ("id", "name", "synset", "synonyms", "def")


def subset_split(d: dict, kept_ids: np.ndarray, lvis_format: bool) -> dict:
    """The images of ``d`` holding a kept category, with the annotations of kept categories only."""
    kept = set(kept_ids.tolist())
    annotations = [a for a in d["annotations"] if a["category_id"] in kept]
    holding = {a["image_id"] for a in annotations}
    images = []
    for im in d["images"]:
        if im["id"] not in holding:
            continue
        record = {k: im[k] for k in IMAGE_FIELDS}
        if lvis_format:
            record["coco_url"] = im["coco_url"]
            record["neg_category_ids"] = np.intersect1d(im["neg_category_ids"], kept_ids).tolist()
            record["not_exhaustive_category_ids"] = []
        images.append(record)
    categories = [{k: c[k] for k in CATEGORY_FIELDS} for c in d["categories"] if c["id"] in kept]
    return {
        "info": dict(d["info"], description="a subset of LT-Shapes"),
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def link_images(source_root: str, out_dir: str) -> None:
    for split in ("train", "val"):
        target = os.path.join(out_dir, split)
        if os.path.lexists(target):
            continue
        try:
            os.symlink(os.path.join(source_root, split), target, target_is_directory=True)
        except OSError:  # no symlinks here: copy the images
            shutil.copytree(os.path.join(source_root, split), target)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (the image root of the subset)")
    parser.add_argument("--every", type=int, default=3, help="keep every k-th class (json ids 1, 1+k, ...)")
    parser.add_argument("--format", choices=("lvis", "coco"), default="lvis")
    parser.add_argument("--seed", type=int, default=0, help="the LT-Shapes seed")
    args = parser.parse_args(argv)

    source = get_lt_shapes(seed=args.seed)
    train = read_json(source["train_json"], what="LT-Shapes json")
    val = read_json(source["val_json"], what="LT-Shapes json")
    kept_ids = np.array(sorted(c["id"] for c in train["categories"])[:: args.every], dtype=np.int64)
    lvis_format = args.format == "lvis"
    train_subset = subset_split(train, kept_ids, lvis_format)
    val_subset = subset_split(val, kept_ids, lvis_format)
    if lvis_format:  # like LVIS val: the val categories store the training counts and groups
        image_count, instance_count = class_counts(
            [a["image_id"] for a in train_subset["annotations"]],
            np.searchsorted(kept_ids, [a["category_id"] for a in train_subset["annotations"]]),
            len(kept_ids),
        )
        for c, n_images, n_instances, group in zip(
            val_subset["categories"], image_count, instance_count, frequency_from_image_count(image_count)
        ):
            c.update(image_count=int(n_images), instance_count=int(n_instances), frequency=str(group))

    os.makedirs(args.out, exist_ok=True)
    link_images(source["root"], args.out)
    for name, subset in (("train", train_subset), ("val", val_subset)):
        write_json_atomic(os.path.join(args.out, f"{name}.json"), subset)
        print(
            f"{os.path.join(args.out, name + '.json')}: {len(subset['images'])} images, "
            f"{len(subset['annotations'])} annotations, {len(subset['categories'])} classes"
        )
    print(
        f"json category ids {kept_ids[:6].tolist()} ... {kept_ids[-1]} (contiguous classes 0..{len(kept_ids) - 1}); "
        f"set model.roi_heads.num_classes={len(kept_ids)}"
    )


if __name__ == "__main__":
    main()
