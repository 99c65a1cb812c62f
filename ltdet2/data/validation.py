"""Checking an LVIS- or COCO-format json's annotations against its images and categories, vectorised.

One pass over the json collects per-annotation columns (numpy); every check is then an array
operation, and all problems found go into ONE report: a ValueError naming the file, the ids and how
many (default), or, with ``skip_invalid=True``, a warning saying what was dropped per class.

Checked:

* annotations of unknown image or category ids, repeated annotation ids;
* boxes: not 4 numbers, non-finite values, zero or negative width / height;
* polygons with fewer than 3 points or an odd number of coordinates;
* ``neg_category_ids`` / ``not_exhaustive_category_ids`` of images naming unknown categories;
* categories whose stored ``image_count`` / ``instance_count`` / ``frequency`` disagree with the
  counts of the (valid) annotations, or of the training annotations given as ``reference``
  (LVIS val files store the training counts).

Structural problems (no ``images``, a record without an integer id, repeated image or category
ids) are raised at once: nothing can be counted without them.
"""

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from tabulate import tabulate

from .categories import _fmt_ids, _sorted_category_ids, class_counts, frequency_from_image_count

__all__ = ["CountReference", "CheckedAnnotations", "check_annotations", "CATEGORY_LIST_KEYS"]

logger = logging.getLogger(__name__)

# image fields listing category ids (LVIS's federated annotation)
CATEGORY_LIST_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")
_STORED_COUNT_FIELDS = ("image_count", "instance_count")


@dataclass(frozen=True, eq=False)
class CountReference:
    """The counts a file's stored per-category fields must match: those of its own annotations
    (no reference) or of a training json's (an evaluation split's file stores the training counts).

    Attributes:
        category_ids: [C] sorted json category ids.
        image_count, instance_count: [C] int64.
        source: where they come from, for messages (e.g. "the annotations of <training json>").
    """

    category_ids: np.ndarray
    image_count: np.ndarray
    instance_count: np.ndarray
    source: str


@dataclass(frozen=True, eq=False)
class CheckedAnnotations:
    """The outcome of :func:`check_annotations`.

    Attributes:
        source: the file checked.
        lvis_format: True when the images carry ``neg_category_ids`` / ``not_exhaustive_category_ids``
            (LVIS's federated format), False for a COCO-format file (exhaustively annotated).
        category_ids: [C] sorted json category ids; contiguous index i <-> ``category_ids[i]``.
        names: [C] category names, same order.
        keep: [A] bool, the annotations to use (all of them unless ``skip_invalid`` dropped some).
        image_position: [A] int64, each annotation's image as a position in ``images`` (-1: unknown).
        class_index: [A] int64 contiguous class of each annotation (-1: unknown category).
        image_count, instance_count: [C] int64, counted from the kept annotations of this file.
        category_lists: {key: list (one per image, json order) of contiguous class lists} for each
            key of :data:`CATEGORY_LIST_KEYS` some image has; unknown ids removed.
        num_problems: number of problems found (0: the file is clean).
    """

    source: str
    lvis_format: bool
    category_ids: np.ndarray
    names: tuple
    keep: np.ndarray
    image_position: np.ndarray
    class_index: np.ndarray
    image_count: np.ndarray
    instance_count: np.ndarray
    category_lists: dict
    num_problems: int


def _int_column(records, key: str, source: str, what: str) -> np.ndarray:
    try:
        return np.fromiter((r[key] for r in records), dtype=np.int64, count=len(records))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{source}: every record in '{what}' needs an integer '{key}' ({e!r})") from e


def _lookup(sorted_ids: np.ndarray, ids: np.ndarray):
    """(position in ``sorted_ids`` [n], known [n] bool) of each of ``ids``."""
    if not len(sorted_ids):
        return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
    position = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return position, sorted_ids[position] == ids


def _boxes(annotations) -> tuple:
    """([A, 4] float64 boxes, [A] bool malformed): a box that is not 4 numbers is malformed (NaN row).
    JSON ``null`` becomes NaN (non-finite), like JSON ``NaN``."""
    try:
        boxes = np.array([a["bbox"] for a in annotations], dtype=np.float64)
        if boxes.shape == (len(annotations), 4):
            return boxes, np.zeros(len(annotations), dtype=bool)
    except (KeyError, TypeError, ValueError):
        pass
    boxes = np.full((len(annotations), 4), np.nan)
    malformed = np.zeros(len(annotations), dtype=bool)
    for i, a in enumerate(annotations):  # only for a file with a malformed box
        try:
            box = np.asarray(a["bbox"], dtype=np.float64)
            if box.shape != (4,):
                raise ValueError
            boxes[i] = box
        except (KeyError, TypeError, ValueError):
            malformed[i] = True
    return boxes, malformed


def _bad_polygons(annotations) -> np.ndarray:
    """[A] bool: the annotation's polygon segmentation has a polygon of < 3 points or odd length
    (Detectron2's LVIS loader asserts on them, its COCO loader drops the mask without a word)."""
    segmentations = [a.get("segmentation") for a in annotations]
    polygons = [s for s in segmentations if type(s) is list]  # RLE dicts and missing masks are not polygons
    owner = np.repeat(
        np.fromiter((type(s) is list for s in segmentations), dtype=bool, count=len(annotations)).nonzero()[0],
        np.fromiter(map(len, polygons), dtype=np.int64, count=len(polygons)),
    )
    lengths = np.fromiter(map(len, itertools.chain.from_iterable(polygons)), dtype=np.int64, count=len(owner))
    bad = np.zeros(len(annotations), dtype=bool)
    bad[owner[(lengths < 6) | (lengths % 2 == 1)]] = True
    return bad


def _category_lists(images, key: str, category_ids: np.ndarray):
    """Contiguous class lists of an image field (one per image) and the unknown (image ids, category ids)."""
    lengths = np.fromiter((len(im.get(key) or ()) for im in images), dtype=np.int64, count=len(images))
    try:
        flat = np.fromiter(
            itertools.chain.from_iterable(im.get(key) or () for im in images), dtype=np.int64, count=int(lengths.sum())
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"'{key}' of images must be lists of integer category ids ({e!r})") from e
    position, known = _lookup(category_ids, flat)
    owner = np.repeat(np.arange(len(images)), lengths)
    ends = np.cumsum(np.bincount(owner[known], minlength=len(images))).tolist()
    values = position[known].tolist()
    lists = [values[start:end] for start, end in zip([0] + ends[:-1], ends)]
    return lists, owner[~known], flat[~known]


def _stored_mismatch(categories_by_index, field: str, expected: np.ndarray):
    """(mask [C] of categories storing ``field`` different from ``expected``, stored values [C] as
    written in the file)."""
    missing = object()
    stored = [c.get(field, missing) for c in categories_by_index]
    present = np.array([s is not missing for s in stored], dtype=bool)
    if field == "frequency":
        comparable = np.array([s if isinstance(s, str) else None for s in stored], dtype=object)
    else:
        comparable = np.array(
            [s if isinstance(s, (int, float)) and not isinstance(s, bool) else np.nan for s in stored], dtype=np.float64
        )
    written = np.empty(len(stored), dtype=object)
    written[:] = [s if np.isscalar(s) else repr(s) for s in stored]  # scalars only: no broadcasting
    return present & (comparable != expected), written


def _fmt_pairs(ids, stored, counted, limit: int = 10) -> str:
    shown = ", ".join(
        f"{int(i)} (stored {s!r}, counted {c!r})" for i, s, c in zip(ids[:limit], stored[:limit], counted[:limit])
    )
    return shown + (f", ... ({len(ids)} in total)" if len(ids) > limit else "")


def check_annotations(
    dataset_json: Mapping[str, Any],
    *,
    source: str = "<dict>",
    skip_invalid: bool = False,
    reference: CountReference | None = None,
    log: bool = True,
    check_stored: bool = True,
) -> CheckedAnnotations:
    """Check an LVIS- or COCO-format json (the loaded dict) and count its valid annotations.

    Args:
        dataset_json: the json dict (not modified).
        source: the file's path, for messages.
        skip_invalid: drop invalid annotations (and unknown ids from images' category lists) and
            ignore stored per-category fields that disagree, logging a warning with the counts per
            class, instead of raising.
        reference: the counts the stored ``image_count`` / ``instance_count`` / ``frequency`` of
            the categories refer to; default this file's own annotations (all those of known image
            and category: a stored count made before an empty box was found is not stale).
        log: log the warning of ``skip_invalid`` (a caller checking the same file again passes False).
        check_stored: check the categories' stored ``image_count`` / ``instance_count`` / ``frequency``
            (False: they are not read, e.g. for a file registered by Detectron2, whose loader ignores them
            and whose val files store the training counts).
    Raises:
        ValueError: one message naming ``source``, each kind of problem with the ids involved and
            how many (unless ``skip_invalid``); structural problems at once.
    """
    d = dataset_json
    if not isinstance(d, Mapping):
        raise ValueError(f"{source}: expected a json object at top level, got {type(d).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in d:
            raise ValueError(f"{source}: missing '{key}'")
    images, annotations, categories = d["images"], d["annotations"], d["categories"]

    category_ids = _sorted_category_ids(categories, source)
    by_id = {int(c["id"]): c for c in categories}
    ordered = [by_id[int(i)] for i in category_ids]
    names = tuple(c.get("name", c.get("synset")) for c in ordered)
    unnamed = [int(i) for i, n in zip(category_ids, names) if not isinstance(n, str)]
    if unnamed:
        raise ValueError(f"{source}: categories without a 'name': ids {_fmt_ids(unnamed)}")

    image_ids = _int_column(images, "id", source, "images")
    image_order = np.argsort(image_ids, kind="stable")
    sorted_image_ids = image_ids[image_order]
    repeated = sorted_image_ids[1:][sorted_image_ids[1:] == sorted_image_ids[:-1]]
    if len(repeated):
        raise ValueError(f"{source}: repeated image ids {_fmt_ids(np.unique(repeated))}")
    has_lists = np.array([[key in im for key in CATEGORY_LIST_KEYS] for im in images], dtype=bool).reshape(-1, 2)
    lvis_format = bool(has_lists.any())
    if lvis_format and not has_lists.all():
        lacking = image_ids[~has_lists.all(axis=1)]
        raise ValueError(
            f"{source}: some images have {CATEGORY_LIST_KEYS} (LVIS format) and images "
            f"{_fmt_ids(lacking)} lack them; give them to every image or to none (COCO format)"
        )

    ann_ids = _int_column(annotations, "id", source, "annotations")
    ann_image = _int_column(annotations, "image_id", source, "annotations")
    ann_category = _int_column(annotations, "category_id", source, "annotations")
    boxes, malformed = _boxes(annotations)

    position, image_known = _lookup(sorted_image_ids, ann_image)
    image_position = np.where(image_known, image_order[position], -1)
    class_index, category_known = _lookup(category_ids, ann_category)
    class_index = np.where(category_known, class_index, -1)
    finite = np.isfinite(boxes).all(axis=1)
    nonfinite = ~finite & ~malformed
    nonpositive = finite & ((boxes[:, 2] <= 0) | (boxes[:, 3] <= 0))
    _, first = np.unique(ann_ids, return_index=True)
    repeated_id = np.ones(len(ann_ids), dtype=bool)
    repeated_id[first] = False
    bad_polygon = _bad_polygons(annotations)

    # (mask, description, what to list): one report line each
    annotation_checks = [
        (~image_known, "point at unknown image ids", ann_image),
        (~category_known, "point at unknown category ids", ann_category),
        (repeated_id, "repeat an annotation id already used", None),
        (malformed, "have a 'bbox' that is not 4 numbers", None),
        (nonfinite, "have a box with non-finite values", None),
        (nonpositive, "have a box of zero or negative width or height", None),
        (bad_polygon, "have a polygon with fewer than 3 points or an odd number of coordinates", None),
    ]
    invalid = np.zeros(len(annotations), dtype=bool)
    lines = []
    for mask, what, listed in annotation_checks:
        if mask.any():
            invalid |= mask
            named = f" {_fmt_ids(np.unique(listed[mask]))}" if listed is not None else ""
            lines.append(f"{int(mask.sum())} annotations {what}{named}: annotation ids {_fmt_ids(ann_ids[mask])}")
    keep = ~invalid
    image_count, instance_count = class_counts(ann_image[keep], class_index[keep], len(category_ids))

    category_lists = {}
    for key in CATEGORY_LIST_KEYS:
        if not lvis_format:
            break
        lists, unknown_images, unknown_ids = _category_lists(images, key, category_ids)
        category_lists[key] = lists
        if len(unknown_ids):
            lines.append(
                f"{len(np.unique(unknown_images))} images list unknown category ids "
                f"{_fmt_ids(np.unique(unknown_ids))} in '{key}': image ids "
                f"{_fmt_ids(image_ids[np.unique(unknown_images)])}"
            )

    own_counts = reference is None
    if own_counts:
        # stored fields describe the annotations as written: an empty box still counted when they were made
        written = image_known & category_known
        written_counts = (
            (image_count, instance_count)
            if np.array_equal(written, keep)
            else class_counts(ann_image[written], class_index[written], len(category_ids))
        )
        reference = CountReference(category_ids, *written_counts, "its annotations")
    elif not np.array_equal(reference.category_ids, category_ids):
        raise ValueError(
            f"{source}: its categories ({len(category_ids)} ids) differ from those of "
            f"{reference.source} ({len(reference.category_ids)} ids); its stored counts and frequency "
            "groups must refer to the same categories"
        )
    expected = {
        "image_count": reference.image_count,
        "instance_count": reference.instance_count,
        "frequency": frequency_from_image_count(reference.image_count).astype(object),
    }
    num_stale = 0
    for field, counted in expected.items() if check_stored else ():
        stale, stored = _stored_mismatch(ordered, field, counted)
        if stale.any():
            num_stale += 1
            rule = " (LVIS groups of the counted image counts)" if field == "frequency" else ""
            lines.append(
                f"{int(stale.sum())} categories have a stored '{field}' that disagrees with "
                f"{reference.source}{rule}: category id "
                f"{_fmt_pairs(category_ids[stale], stored[stale].tolist(), counted[stale].tolist())}"
            )

    if lines and not skip_invalid:
        hint = (
            "; for an evaluation split whose stored counts are the training set's (like LVIS val), give the "
            "training json as train_json"
            if num_stale and own_counts
            else ""
        )
        raise ValueError(
            f"{source}: {len(lines)} kinds of problems (pass skip_invalid=True to drop the invalid "
            f"annotations and use the counted numbers instead of the stored ones{hint}):\n  * " + "\n  * ".join(lines)
        )
    if lines and log:
        logger.warning(
            "%s: skip_invalid=True: dropped %d of %d annotations%s:\n  * %s%s",
            source,
            int(invalid.sum()),
            len(annotations),
            ", ignored stored per-category fields (the counted numbers are used)" if num_stale else "",
            "\n  * ".join(lines),
            _dropped_per_class(class_index[invalid], names, category_ids),
        )
    return CheckedAnnotations(
        source=source,
        lvis_format=lvis_format,
        category_ids=category_ids,
        names=names,
        keep=keep,
        image_position=image_position,
        class_index=class_index,
        image_count=image_count,
        instance_count=instance_count,
        category_lists=category_lists,
        num_problems=len(lines),
    )


def _dropped_per_class(dropped_classes: np.ndarray, names, category_ids) -> str:
    """A table of dropped annotations per class (unknown categories on one row), '' when none."""
    if not len(dropped_classes):
        return ""
    per_class = np.bincount(dropped_classes[dropped_classes >= 0], minlength=len(names))
    rows = [(names[i], int(category_ids[i]), int(per_class[i])) for i in np.nonzero(per_class)[0]]
    unknown = int((dropped_classes < 0).sum())
    if unknown:
        rows.append(("(unknown category)", "-", unknown))
    return "\ndropped annotations per class:\n" + tabulate(rows, headers=["class", "id", "dropped"])
