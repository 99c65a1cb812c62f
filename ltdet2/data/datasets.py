"""A user's own LVIS- or COCO-format dataset in Detectron2's catalogs, with everything computed from
the (validated) file: :func:`register_lvis_format_dataset`.

Why not Detectron2's ``register_lvis_instances``: its metadata comes from built-in LVIS tables (a
custom name fails with "No built-in metadata"; a name containing "v1" silently gets LVIS v1's class
counts), its loader maps ``category_id - 1`` (wrong for ids other than ``1..C``), and bad boxes or
annotations of unknown images are changed or dropped without a word.

Conventions (as :mod:`ltdet2.data.categories`): the contiguous class index ``i`` is the position of
the json category id in the sorted ids. Per-class counts come from the annotations (of the training
json for an evaluation split, given as ``train_json``), never from stored fields, which are checked
against them instead (:func:`ltdet2.data.validation.check_annotations`); frequency groups are LVIS's
thresholds on those image counts.
"""

import contextlib
import difflib
import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_util

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.datasets.lvis import get_lvis_instances_meta
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from ..utils.json_io import read_json
from .categories import _fmt_ids, frequency_from_image_count
from .category_meta import LVISMeta
from .validation import CATEGORY_LIST_KEYS, CountReference, check_annotations

__all__ = [
    "register_lvis_format_dataset",
    "load_lvis_format_json",
    "LVISFormatMetadata",
    "is_lvis_format_dataset",
    "dataset_lvis_meta",
    "evaluation_ground_truth",
    "derived_source",
    "Detectron2LVISSource",
    "dataset_category_ids",
    "dataset_dicts_with_annotation_ids",
    "unregistered_dataset_message",
]

logger = logging.getLogger(__name__)

# metadata read from the json on first access (see LVISFormatMetadata)
FROM_FILE_KEYS = (
    "thing_classes",
    "thing_dataset_id_to_contiguous_id",
    "class_image_count",
    "image_count",
    "instance_count",
    "frequency",
)


class LVISFormatMetadata(Metadata):
    """Detectron2 metadata of a dataset registered by :func:`register_lvis_format_dataset`.

    Set at registration: ``json_file``, ``image_root``, ``evaluator_type="lvis"``, ``skip_invalid``,
    ``train_json`` and any extra keys. Read from the validated json on first access (so registering
    reads nothing): ``thing_classes`` (names in contiguous order), ``thing_dataset_id_to_contiguous_id``,
    ``class_image_count`` (Detectron2's ``[{"id", "image_count"}]``), ``image_count`` /
    ``instance_count`` ([C] lists, training annotations) and ``frequency`` ([C] 'r' / 'c' / 'f').
    """

    def __getattr__(self, key):
        if key in FROM_FILE_KEYS:
            self.fill_from(_validated_meta(self))
            return self.__dict__[key]
        return super().__getattr__(key)

    def fill_from(self, meta: LVISMeta) -> None:
        """Sets the :data:`FROM_FILE_KEYS` from ``meta``; a key set before (at registration) must agree."""
        values = {
            "thing_classes": list(meta.names),
            "thing_dataset_id_to_contiguous_id": {int(i): k for k, i in enumerate(meta.category_ids)},
            "class_image_count": meta.class_image_count(),
            "image_count": meta.image_count.tolist(),
            "instance_count": meta.instance_count.tolist(),
            "frequency": meta.frequency.tolist(),
        }
        for key, value in values.items():
            if key in self.__dict__ and self.__dict__[key] != value:
                raise ValueError(
                    f"dataset {self.name!r}: metadata {key!r} was registered as {self.__dict__[key]!r} "
                    f"but {self.__dict__['json_file']} gives {value!r}"
                )
        self.__dict__.update(values)


def is_lvis_format_dataset(dataset_name: str) -> bool:
    """True for a dataset registered by :func:`register_lvis_format_dataset` (or LT-Shapes)."""
    return isinstance(MetadataCatalog.data.get(dataset_name), LVISFormatMetadata)


# --- reading and checking, cached per file version --------------------------------------------------

_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 16


def _file_key(path: str | None):
    if path is None:
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"dataset json file not found: {path}") from None
    return path, st.st_mtime_ns, st.st_size


def _read_checked(json_file: str, skip_invalid: bool, train_json: str | None, *, check_stored: bool = True):
    """(json dict, :class:`CheckedAnnotations`, :class:`LVISMeta`) of a file; the meta is cached
    by the files' (path, mtime, size), and the skip_invalid warning logged once per version.
    ``check_stored=False``: the categories' stored counts and groups are not checked (see
    :class:`Detectron2LVISSource`)."""
    key = (_file_key(json_file), _file_key(train_json), bool(skip_invalid), bool(check_stored))
    reference = None
    if train_json is not None:
        train = _checked_meta(train_json, skip_invalid, None)
        reference = CountReference(
            np.asarray(train.category_ids),
            train.image_count,
            train.instance_count,
            f"the annotations of {train.source}",
        )
    d = read_json(json_file, what="dataset json")
    if reference is None and isinstance(d, dict) and not d.get("annotations"):
        reference = _stored_counts(d, json_file)
    with _CACHE_LOCK:
        meta = _CACHE.get(key)
    checked = check_annotations(
        d,
        source=json_file,
        skip_invalid=skip_invalid,
        reference=reference,
        log=meta is None,
        check_stored=check_stored,
    )
    if meta is None:
        counts = reference if reference is not None else checked
        meta = LVISMeta(
            category_ids=tuple(int(i) for i in checked.category_ids),
            names=tuple(checked.names),
            frequency=frequency_from_image_count(counts.image_count),
            image_count=np.array(counts.image_count, dtype=np.int64),
            instance_count=np.array(counts.instance_count, dtype=np.int64),
            source=json_file,
        )
        with _CACHE_LOCK:
            if len(_CACHE) >= _CACHE_MAX:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = meta
    return d, checked, meta


def _stored_counts(d: dict, source: str) -> CountReference | None:
    """The stored counts of a file without annotations (a category table such as LVIS test-dev): with
    nothing to count, they are its counts. None if some category lacks them."""
    categories = d.get("categories") or []
    if not categories or not all("image_count" in c and "instance_count" in c for c in categories):
        return None
    ordered = sorted(categories, key=lambda c: c["id"])
    logger.info("%s has no annotations: its stored image_count / instance_count are used", source)
    return CountReference(
        np.array([c["id"] for c in ordered], dtype=np.int64),
        np.array([c["image_count"] for c in ordered], dtype=np.int64),
        np.array([c["instance_count"] for c in ordered], dtype=np.int64),
        "its stored counts (it has no annotations)",
    )


def _checked_meta(json_file: str, skip_invalid: bool, train_json: str | None, *, check_stored=True) -> LVISMeta:
    key = (_file_key(json_file), _file_key(train_json), bool(skip_invalid), bool(check_stored))
    with _CACHE_LOCK:
        meta = _CACHE.get(key)
    if meta is not None:
        return meta
    return _read_checked(json_file, skip_invalid, train_json, check_stored=check_stored)[2]


def _registered(dataset_name: str) -> LVISFormatMetadata:
    metadata = MetadataCatalog.data.get(dataset_name)
    if not isinstance(metadata, LVISFormatMetadata):
        raise ValueError(f"dataset {dataset_name!r} was not registered by register_lvis_format_dataset")
    return metadata


def _validated_meta(metadata) -> LVISMeta:
    """:class:`LVISMeta` of an :class:`LVISFormatMetadata` or a :class:`Detectron2LVISSource`."""
    if not os.path.isfile(metadata.json_file) and metadata.name in DatasetCatalog:
        DatasetCatalog.get(metadata.name)  # a dataset made on first load (LT-Shapes) is made now
    if isinstance(metadata, Detectron2LVISSource):
        with _named_source(metadata):
            return _checked_meta(metadata.json_file, False, None, check_stored=False)
    return _checked_meta(metadata.json_file, metadata.skip_invalid, metadata.train_json)


def dataset_lvis_meta(dataset_name: str) -> LVISMeta:
    """:class:`LVISMeta` of a dataset registered by :func:`register_lvis_format_dataset`: names, and
    image / instance counts and frequency groups of its training annotations (its own, or those of its
    ``train_json``), after validation. Also fills the dataset's metadata."""
    metadata = _registered(dataset_name)
    meta = _validated_meta(metadata)
    metadata.fill_from(meta)
    return meta


# --- sources of derived datasets: ltdet2's registrations and Detectron2's LVIS ones ----------------------


@dataclass(frozen=True)
class Detectron2LVISSource:
    """A dataset registered by Detectron2's ``register_lvis_instances`` (e.g. its built-in ``lvis_v0.5_*`` /
    ``lvis_v1_*`` under ``$DETECTRON2_DATASETS``) as the derived-dataset builders read it (:func:`derived_source`):
    its metadata's ``json_file`` and ``image_root``, every annotation checked as
    :func:`register_lvis_format_dataset` checks them by default (an invalid one is an error naming it), and the
    categories' stored ``image_count`` / ``instance_count`` / ``frequency`` not read (Detectron2's loader ignores
    them, and LVIS val files store the training counts): per-class counts come from the annotations.

    Class indices: Detectron2's ``load_lvis_json`` maps json id ``i`` to ``i - 1``; ltdet2 maps the position of
    the id among the sorted ids. They agree for LVIS (ids ``1..C``), which :func:`dataset_category_ids` checks.
    """

    name: str
    json_file: str
    image_root: str


def unregistered_dataset_message(dataset_name: str, known=()) -> str:
    """``"dataset 'X' is not registered; did you mean 'Y'?"``: the registered names closest to ``dataset_name``
    (``difflib.get_close_matches`` over Detectron2's ``DatasetCatalog.list()`` and ``known``, names to be registered
    later; of those, the ones about as close as the closest: many names share a prefix), or that none is close."""
    name = str(dataset_name)
    close = difflib.get_close_matches(name, sorted({*DatasetCatalog.list(), *known}), n=3, cutoff=0.6)
    ratios = [difflib.SequenceMatcher(None, name, c).ratio() for c in close]
    close = [c for c, ratio in zip(close, ratios) if ratio >= ratios[0] - 0.05]
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else " (no registered name is close to it)"
    return f"dataset {dataset_name!r} is not registered{hint}"


def derived_source(dataset_name: str):
    """The registration a derived-dataset builder reads ``dataset_name`` through: its
    :class:`LVISFormatMetadata` (registered by :func:`register_lvis_format_dataset`, or LT-Shapes) or, for a
    dataset registered by Detectron2's ``register_lvis_instances`` (metadata ``json_file``, ``image_root`` and
    ``evaluator_type="lvis"``), a :class:`Detectron2LVISSource`.

    Raises:
        ValueError: an unregistered name, or a dataset registered otherwise (naming what its metadata has).
    """
    metadata = MetadataCatalog.data.get(dataset_name)
    if isinstance(metadata, LVISFormatMetadata):
        return metadata
    if dataset_name not in DatasetCatalog:
        raise ValueError(
            f"{unregistered_dataset_message(dataset_name)}: register it with ltdet2.data.register_lvis_format_dataset "
            f"or Detectron2's register_lvis_instances (Detectron2 registers lvis_v0.5_* / lvis_v1_* itself, reading "
            f"$DETECTRON2_DATASETS)"
        )
    keys = metadata.as_dict() if metadata is not None else {}
    if keys.get("evaluator_type") != "lvis" or keys.get("json_file") is None or keys.get("image_root") is None:
        raise ValueError(
            f"dataset {dataset_name!r} was registered neither by ltdet2.data.register_lvis_format_dataset nor by "
            f"Detectron2's register_lvis_instances (metadata with json_file, image_root and evaluator_type='lvis'); "
            f"its metadata has {sorted(keys)} (evaluator_type={keys.get('evaluator_type')!r})"
        )
    return Detectron2LVISSource(
        name=dataset_name,
        json_file=_local_path(PathManager.get_local_path(keys["json_file"])),
        image_root=os.fspath(keys["image_root"]),
    )


@contextlib.contextmanager
def _named_source(source):
    """A ValueError raised on reading a Detectron2 source's json names the dataset and how to drop what it found."""
    try:
        yield
    except ValueError as e:
        raise ValueError(
            f"dataset {source.name!r} (registered by Detectron2's register_lvis_instances, json_file "
            f"{source.json_file}): {e}\nDetectron2's registration has no option to drop invalid annotations: register "
            f"the file with ltdet2.data.register_lvis_format_dataset(<a name of your own>, json_file, image_root, "
            f"skip_invalid=True) and build the derived datasets from that name"
        ) from e


def _read_source(source):
    """(json dict, :class:`CheckedAnnotations`, :class:`LVISMeta`) of a :func:`derived_source`."""
    if isinstance(source, Detectron2LVISSource):
        with _named_source(source):
            return _read_checked(source.json_file, False, None, check_stored=False)
    return _read_checked(source.json_file, source.skip_invalid, source.train_json)


def _builtin_lvis_meta(dataset_name: str) -> dict:
    """Detectron2's built-in metadata that its ``load_lvis_json`` sets for ``dataset_name`` ({} for a name without)."""
    try:
        return get_lvis_instances_meta(dataset_name)
    except ValueError:
        return {}


def dataset_category_ids(dataset_name: str) -> np.ndarray:
    """``[C]`` int64: the json category id of each contiguous class index, as the dataset dicts of
    ``dataset_name`` map them.

    * :func:`register_lvis_format_dataset` (and LT-Shapes): the sorted json ids.
    * A ``thing_dataset_id_to_contiguous_id`` in the metadata, or in the built-in metadata Detectron2's
      ``load_lvis_json`` sets (the "cocofied" LVIS sets): that mapping, inverted.
    * Otherwise a Detectron2 LVIS registration (``evaluator_type="lvis"``): ``load_lvis_json``'s
      ``category_id - 1``, i.e. ``1..C``, which the json's categories must be.

    Raises:
        ValueError: a mapping that is not onto ``0..C-1``, a Detectron2 LVIS json whose category ids are not
            ``1..C`` (naming the first that differ), or a dataset with neither a mapping nor an LVIS json.
    """
    if is_lvis_format_dataset(dataset_name):
        return np.asarray(dataset_lvis_meta(dataset_name).category_ids, dtype=np.int64)
    metadata = MetadataCatalog.get(dataset_name)
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if not mapping and metadata.get("evaluator_type", None) == "lvis":
        mapping = _builtin_lvis_meta(dataset_name).get("thing_dataset_id_to_contiguous_id")
    if mapping:
        contiguous = np.fromiter((int(v) for v in mapping.values()), dtype=np.int64, count=len(mapping))
        if not np.array_equal(np.sort(contiguous), np.arange(len(mapping))):
            raise ValueError(
                f"dataset {dataset_name!r}: thing_dataset_id_to_contiguous_id does not map onto 0..{len(mapping) - 1}"
            )
        ids = np.empty(len(mapping), dtype=np.int64)
        ids[contiguous] = np.fromiter((int(k) for k in mapping), dtype=np.int64, count=len(mapping))
        return ids
    if metadata.get("evaluator_type", None) != "lvis" or metadata.get("json_file", None) is None:
        raise ValueError(
            f"dataset {dataset_name!r}: no thing_dataset_id_to_contiguous_id in its metadata and no LVIS json_file: "
            "the json category ids of its classes are unknown"
        )
    ids = np.asarray(_validated_meta(derived_source(dataset_name)).category_ids, dtype=np.int64)
    expected = np.arange(1, len(ids) + 1)
    if not np.array_equal(ids, expected):
        differ = np.flatnonzero(ids != expected)
        raise ValueError(
            f"dataset {dataset_name!r} ({metadata.json_file}): Detectron2's load_lvis_json maps a json category id i "
            f"to class i - 1, which needs the ids 1..{len(ids)}; the sorted ids differ at positions "
            f"{_fmt_ids(differ)} (ids {_fmt_ids(ids[differ])}). Register the file with "
            "ltdet2.data.register_lvis_format_dataset, which maps any ids"
        )
    return ids


def dataset_dicts_with_annotation_ids(dataset_name: str) -> list:
    """``DatasetCatalog.get(dataset_name)`` with every annotation's json ``id``.

    ltdet2's registrations keep the ids (:func:`load_lvis_format_json`); Detectron2's ``load_lvis_json`` drops
    them (unless called with ``extra_annotation_keys=["id"]``). They are then recovered from the metadata's
    ``json_file``: Detectron2's loaders list an image's annotations in file order, so the record of image ``i``
    must hold the json's annotations of image ``i``, in order, with the same boxes and categories (mapped by
    :func:`dataset_category_ids`), which is checked. Returns new records (the catalog's are not changed).

    Raises:
        ValueError: annotations without ids and no ``json_file``, or records that do not match the json (naming
            the images).
    """
    dicts = DatasetCatalog.get(dataset_name)
    if all("id" in a for r in dicts for a in r.get("annotations", ())):
        return dicts
    metadata = MetadataCatalog.get(dataset_name)
    json_file = metadata.get("json_file", None)
    if json_file is None:
        raise ValueError(
            f"dataset {dataset_name!r}: its annotations have no 'id' and its metadata no json_file to recover them from"
        )
    json_file = PathManager.get_local_path(json_file)
    category_ids = dataset_category_ids(dataset_name)
    d = read_json(json_file, what="dataset json")
    annotations = d.get("annotations") or []
    with _gc_paused():
        ann_image = np.fromiter((a["image_id"] for a in annotations), dtype=np.int64, count=len(annotations))
        ann_ids = np.fromiter((a["id"] for a in annotations), dtype=np.int64, count=len(annotations))
        ann_category = np.fromiter((a["category_id"] for a in annotations), dtype=np.int64, count=len(annotations))
        ann_box = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
        by_image = np.argsort(ann_image, kind="stable")  # by image id, file order within an image
        sorted_image = ann_image[by_image]

        lengths = np.fromiter((len(r.get("annotations", ())) for r in dicts), dtype=np.int64, count=len(dicts))
        image_ids = np.fromiter((r["image_id"] for r in dicts), dtype=np.int64, count=len(dicts))
        start = np.searchsorted(sorted_image, image_ids, side="left")
        end = np.searchsorted(sorted_image, image_ids, side="right")
        bad_image = end - start != lengths
        owner = np.repeat(np.arange(len(dicts)), lengths)
        offset = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        # the json annotation each dict annotation should be (any in range, for images already found bad)
        position = by_image[np.minimum(start[owner] + offset, max(len(by_image) - 1, 0))] if len(by_image) else owner
        flat = [a for r in dicts for a in r.get("annotations", ())]
        box = np.array([a["bbox"] for a in flat], dtype=np.float64).reshape(-1, 4)
        contiguous = np.fromiter((a["category_id"] for a in flat), dtype=np.int64, count=len(flat))
        known = (contiguous >= 0) & (contiguous < len(category_ids))
        same = ~bad_image[owner] & known
        if len(by_image):
            same[same] &= (category_ids[contiguous[same]] == ann_category[position[same]]) & (
                box[same] == ann_box[position[same]]
            ).all(axis=1)
        bad_image[owner[~same]] = True
        if bad_image.any():
            raise ValueError(
                f"dataset {dataset_name!r}: the annotations of images {_fmt_ids(image_ids[bad_image])} are not those "
                f"of {json_file} (in file order, same boxes and categories): their json ids cannot be recovered. "
                "Register the file with ltdet2.data.register_lvis_format_dataset, whose dataset dicts carry the ids"
            )
        ids = iter(ann_ids[position].tolist())
        return [dict(r, annotations=[dict(a, id=next(ids)) for a in r.get("annotations", ())]) for r in dicts]


# --- Detectron2 dataset dicts -------------------------------------------------------------------------


def _image_file(image_root: str, image: dict, lvis_format: bool) -> str:
    # as Detectron2's loaders: LVIS takes "<split folder>/<name>" from coco_url, COCO joins file_name
    if lvis_format and "coco_url" in image:
        split_folder, file_name = image["coco_url"].split("/")[-2:]
        return os.path.join(image_root, split_folder, file_name)
    return os.path.join(image_root, image["file_name"])


def _instance(annotation: dict, class_index: int) -> dict:
    obj = {"bbox": annotation["bbox"], "bbox_mode": BoxMode.XYWH_ABS, "category_id": class_index}
    if "id" in annotation:
        obj["id"] = annotation["id"]
    segmentation = annotation.get("segmentation")
    if segmentation is not None:
        if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
            # uncompressed RLE -> compressed, as load_coco_json
            segmentation = mask_util.frPyObjects(segmentation, *segmentation["size"])
        obj["segmentation"] = segmentation
    if "iscrowd" in annotation:
        obj["iscrowd"] = annotation["iscrowd"]
    if "valid" in annotation:  # False: an "ignored" ground truth of a derived set (ValidityDatasetMapper)
        obj["valid"] = bool(annotation["valid"])
    return obj


@contextlib.contextmanager
def _gc_paused():
    """Millions of new dicts (LVIS: 1.3M) trigger full garbage collections over and over: 4x slower."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _dataset_dicts(d: dict, checked, image_root: str) -> list:
    with _gc_paused():
        return _build_dataset_dicts(d, checked, image_root)


def _build_dataset_dicts(d: dict, checked, image_root: str) -> list:
    images, annotations = d["images"], d["annotations"]
    without_file = [im.get("id") for im in images if "file_name" not in im
                    and not (checked.lvis_format and "coco_url" in im)]  # fmt: skip
    if without_file:
        raise ValueError(f"{checked.source}: images {_fmt_ids(without_file)} have no 'file_name' (nor 'coco_url')")
    kept = np.nonzero(checked.keep)[0]
    image_position = checked.image_position[kept]
    order = kept[np.argsort(image_position, kind="stable")]  # by image, json order within an image
    starts = np.concatenate([[0], np.cumsum(np.bincount(image_position, minlength=len(images)))]).tolist()
    instances = [_instance(annotations[i], c) for i, c in zip(order.tolist(), checked.class_index[order].tolist())]
    image_ids = np.fromiter((im["id"] for im in images), dtype=np.int64, count=len(images))
    records = []
    for p in np.argsort(image_ids, kind="stable").tolist():  # sorted by image id, as Detectron2
        image = images[p]
        record = {"file_name": _image_file(image_root, image, checked.lvis_format)}
        for key in ("height", "width", "replay_draw"):  # replay_draw: ltdet2.data.incremental.REPLAY_DRAW_KEY
            if key in image:
                record[key] = image[key]
        for key in CATEGORY_LIST_KEYS:
            if key in checked.category_lists:
                record[key] = checked.category_lists[key][p]
        record["image_id"] = image["id"]
        record["annotations"] = instances[starts[p] : starts[p + 1]]
        records.append(record)
    return records


def load_lvis_format_json(
    json_file, image_root, dataset_name: str | None = None, *, skip_invalid: bool = False, train_json=None
) -> list:
    """Detectron2 dataset dicts of an LVIS- or COCO-format json, validated first.

    Like Detectron2's ``load_lvis_json`` / ``load_coco_json``: one record per image, sorted by image id,
    with ``file_name`` (LVIS format: ``image_root/<split folder>/<name>`` from ``coco_url``; COCO
    format or no ``coco_url``: ``image_root/file_name``), ``height``, ``width``, ``image_id`` and
    ``annotations``: ``id`` (the json annotation id, when present), ``bbox`` (as in the file, ``bbox_mode``
    ``XYWH_ABS``), ``category_id`` (the contiguous index: position of the json id among the sorted ids),
    ``segmentation`` (polygons or compressed RLE, when present), ``iscrowd`` (when present) and ``valid``
    (when present: False marks an "ignored" annotation, see :class:`ltdet2.data.ValidityDatasetMapper`).
    LVIS-format records also carry ``neg_category_ids`` / ``not_exhaustive_category_ids`` as contiguous
    indices, and the entries of an LST phase set with resampled replay their ``replay_draw`` (read by
    :class:`ltdet2.data.samplers.ReplayDrawSampler`).

    Args:
        json_file: the json; a truncated or malformed file is an error naming it.
        image_root: the folder the image paths are relative to.
        dataset_name: if given, a dataset registered by :func:`register_lvis_format_dataset` whose
            metadata is filled from the file.
        skip_invalid, train_json: see :func:`register_lvis_format_dataset`.
    """
    t0 = time.perf_counter()
    json_file = _local_path(json_file)
    train_json = None if train_json is None else _local_path(train_json)
    d, checked, meta = _read_checked(json_file, skip_invalid, train_json)
    if dataset_name is not None:
        _registered(dataset_name).fill_from(meta)
    records = _dataset_dicts(d, checked, os.fspath(image_root))
    logger.info(
        "Loaded %d images and %d annotations in the %s format from %s in %.1f s",
        len(records),
        int(checked.keep.sum()),
        "LVIS" if checked.lvis_format else "COCO",
        json_file,
        time.perf_counter() - t0,
    )
    return records


# --- registration ---------------------------------------------------------------------------------------

_MISSING = object()


def _local_path(path) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def register_lvis_format_dataset(
    name: str,
    json_file,
    image_root,
    *,
    skip_invalid: bool = False,
    train_json=None,
    prepare: Callable[[], object] | None = None,
    **metadata,
) -> str:
    """Register an LVIS- or COCO-format dataset in Detectron2's ``DatasetCatalog`` / ``MetadataCatalog``.

    Nothing is read now: the json is read, validated (once, one report) and counted when the dataset
    is first loaded or its per-class metadata first read (:class:`LVISFormatMetadata`). Every ltdet2
    piece then works with ``name``: repeat-factor sampling, replay targets
    (:func:`~ltdet2.data.class_counts.dataset_class_image_count`), indicators
    (:func:`~ltdet2.data.lvis_meta.lvis_meta_from_dataset`) and ``LTLVISEvaluator(dataset_name=name)``.

    COCO format (images without ``neg_category_ids`` / ``not_exhaustive_category_ids``, categories
    without ``frequency``) is taken as exhaustively annotated: for evaluation every category absent
    from an image is a verified negative (:func:`evaluation_ground_truth`).

    Args:
        name: the dataset name (any name; registering the same name again with the same arguments
            is a no-op, with others an error).
        json_file: the LVIS- or COCO-format json.
        image_root: the folder image paths are relative to (see :func:`load_lvis_format_json`).
        skip_invalid: drop invalid annotations (unknown image or category, malformed, non-finite or
            empty boxes, bad polygons) and ignore stored per-category counts / frequency that disagree
            with the annotations, logging what was dropped per class. Default: a ValueError naming
            the file, the ids and how many.
        train_json: for an evaluation split, the training json: its annotations give the per-class
            counts and frequency groups (for AP_r / AP_c / AP_f), and the stored ``image_count`` /
            ``instance_count`` / ``frequency`` of this file are checked against them (LVIS val files
            store the training counts). Default: this file is its own training set.
        prepare: called before each load, e.g. to make the files on first use (LT-Shapes).
        metadata: extra metadata keys.
    Returns:
        ``name``.
    """
    json_file = _local_path(json_file)
    train_json = None if train_json is None else _local_path(train_json)
    image_root = os.fspath(image_root)
    options = dict(
        metadata,
        json_file=json_file,
        image_root=image_root,
        evaluator_type="lvis",
        skip_invalid=bool(skip_invalid),
        train_json=train_json,
    )
    if name in DatasetCatalog:
        existing = MetadataCatalog.data.get(name)
        if isinstance(existing, LVISFormatMetadata) and all(
            existing.__dict__.get(k, _MISSING) == v for k, v in options.items()
        ):
            return name
        registered = existing.__dict__.get("json_file") if existing is not None else None
        raise ValueError(
            f"dataset name {name!r} is already registered (json_file={registered!r}); "
            f"choose another name to register {json_file}"
        )

    def _load():
        if prepare is not None:
            prepare()
        return load_lvis_format_json(json_file, image_root, name, skip_invalid=skip_invalid, train_json=train_json)

    DatasetCatalog.register(name, _load)
    existing = MetadataCatalog.data.pop(name, None)  # keys someone set before registering are kept
    meta = LVISFormatMetadata(name=name)
    meta.__dict__.update({k: v for k, v in (existing.__dict__ if existing is not None else {}).items() if k != "name"})
    from_file = {k: options.pop(k) for k in FROM_FILE_KEYS if k in options}
    meta.set(**options)
    meta.__dict__.update(from_file)  # checked against the file when it is read
    MetadataCatalog.data[name] = meta
    return name


# --- evaluation --------------------------------------------------------------------------------------------


def evaluation_ground_truth(dataset_name: str):
    """What the LVIS evaluator should read for ``dataset_name``.

    For a dataset registered by :func:`register_lvis_format_dataset`: the validated json (a dict; with
    ``skip_invalid``, invalid annotations and unknown ids removed) with what the LVIS engine needs:
    every category's ``frequency`` / ``image_count`` / ``instance_count`` from the training counts
    (as on LVIS val files), every image's ``neg_category_ids`` / ``not_exhaustive_category_ids``
    (COCO format, exhaustive: every category absent from the image is a negative, none is
    non-exhaustive) and every annotation's ``area`` (box area when absent). Otherwise: the
    metadata's ``json_file``.
    """
    if not is_lvis_format_dataset(dataset_name):
        return MetadataCatalog.get(dataset_name).json_file
    metadata = _registered(dataset_name)
    _validated_meta(metadata)
    d, checked, meta = _read_checked(metadata.json_file, metadata.skip_invalid, metadata.train_json)
    metadata.fill_from(meta)
    if metadata.train_json is None and any("frequency" not in c for c in d["categories"]):
        logger.warning(
            "%s: no train_json and no stored 'frequency': the AP_r / AP_c / AP_f groups come from "
            "this file's own annotation counts (register it with train_json=<training json> for "
            "groups by training counts)",
            metadata.json_file,
        )

    annotations = [a if "area" in a else dict(a, area=float(a["bbox"][2]) * float(a["bbox"][3]))
                   for a, keep in zip(d["annotations"], checked.keep.tolist()) if keep]  # fmt: skip
    category_ids = checked.category_ids
    if checked.lvis_format:
        lists = {key: [category_ids[c].tolist() for c in checked.category_lists[key]] for key in CATEGORY_LIST_KEYS}
    else:
        present = np.zeros((len(d["images"]), len(category_ids)), dtype=bool)
        present[checked.image_position[checked.keep], checked.class_index[checked.keep]] = True
        lists = {
            "neg_category_ids": [category_ids[~row].tolist() for row in present],
            "not_exhaustive_category_ids": [[] for _ in d["images"]],
        }
    images = [dict(im, **{key: lists[key][p] for key in CATEGORY_LIST_KEYS}) for p, im in enumerate(d["images"])]
    by_id = {int(c["id"]): c for c in d["categories"]}
    categories = [
        dict(by_id[int(i)], frequency=str(f), image_count=int(n), instance_count=int(k))
        for i, f, n, k in zip(category_ids, meta.frequency, meta.image_count, meta.instance_count)
    ]
    return dict(d, images=images, annotations=annotations, categories=categories)
