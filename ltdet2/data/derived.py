"""Derived datasets: a subset of a registered LVIS-format dataset's annotations (registered by ltdet2 or by
Detectron2's ``register_lvis_instances``), written as LVIS json and registered under its own name (issue #12's
smooth-tail sets; LST's replay sets).

:func:`build_derived_dataset` writes ``<output_dir>/<name>.json``: the source's validated json with only the
selected annotations (the others dropped, or kept with ``"valid": false`` = "ignored"), images without a
selected annotation removed, every category kept (contiguous ids equal the source's) with ``image_count`` /
``instance_count`` / ``frequency`` recomputed for the subset (ignored annotations count: they are in the file).
The top-level key ``"ltdet2_derived"`` records what the file was built from (:data:`RECORD_KEY`), and under its
``"output"`` what it holds (e.g. ``num_ignored_annotations``); building again with the same inputs is skipped, with
other ones the file is rebuilt with a warning naming what changed. The record is the file's last key
(:func:`write_derived_json`), so it is read from the file's end (:func:`read_build_record`): a cheap check that the
file is whole, which registration makes. :func:`register_derived_dataset` registers it with the source's image root;
a file missing or damaged raises :class:`DerivedDatasetMissing` / :class:`DerivedDatasetDamaged` (the phase runner
rebuilds it from its inputs).
"""

import hashlib
import json
import logging
import os
import re

import numpy as np

from ..utils.files import file_identity
from ..utils.json_io import read_json, write_json_atomic
from .categories import _fmt_ids, class_counts, frequency_from_image_count
from .datasets import (
    Detectron2LVISSource,
    _read_source,
    _validated_meta,
    dataset_category_ids,
    derived_source,
    register_lvis_format_dataset,
)

__all__ = [
    "build_derived_dataset",
    "register_derived_dataset",
    "read_build_record",
    "write_derived_json",
    "DerivedDatasetUnavailable",
    "DerivedDatasetMissing",
    "DerivedDatasetDamaged",
    "RECORD_KEY",
    "UNSELECTED_MODES",
]

logger = logging.getLogger(__name__)

RECORD_KEY = "ltdet2_derived"
UNSELECTED_MODES = ("drop", "ignore")


OUTPUT_KEY = "output"  # in the record: what the file holds (not compared when deciding to rebuild)
_TAIL_BYTES = 1 << 16  # read from a file's end to find its record (records are a few KB)
_RECORD_AT_END = re.compile(r'"' + RECORD_KEY + r'"\s*:\s*')


class DerivedDatasetUnavailable(Exception):
    """A derived dataset's json cannot be registered: missing or damaged. ``path``: the file; ``reason``: what is
    wrong with it (the message less the dataset's name)."""

    def __init__(self, reason, path, name=None):
        super().__init__(f"derived dataset {name!r}: {reason}" if name else f"derived dataset: {reason}")
        self.reason, self.path, self.name = reason, path, name

    def __reduce__(self):  # pickled whole (an error raised on rank 0 reaches the other ranks pickled)
        return type(self), (self.reason, self.path, self.name)


class DerivedDatasetMissing(DerivedDatasetUnavailable, FileNotFoundError):
    """A derived dataset's json does not exist."""


class DerivedDatasetDamaged(DerivedDatasetUnavailable, ValueError):
    """A derived dataset's json is not whole JSON with a build record (cut short, overwritten)."""


def _changes(old, new, prefix="") -> list:
    """Dotted keys whose values differ between two JSON-able records."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _changes(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "<record>"]


def write_derived_json(path, d: dict, record: dict, **output) -> None:
    """Writes a derived dataset's json ``d`` (atomically) with its build record last: ``record`` (its inputs) and,
    under ``"output"``, ``num_ignored_annotations`` (counted in ``d``) and ``output``."""
    ignored = sum(1 for a in d.get("annotations", ()) if a.get("valid", True) is False)
    out = {k: v for k, v in d.items() if k != RECORD_KEY}
    out[RECORD_KEY] = dict(record, **{OUTPUT_KEY: {"num_ignored_annotations": ignored, **output}})
    write_json_atomic(path, out)


def read_build_record(path, name=None) -> dict:
    """The build record (:data:`RECORD_KEY`) of the derived dataset json ``path`` (``name``: the dataset, for
    messages), read from the file's last bytes without parsing the file: the builders write the record as its
    last key, so a whole file ends with it and one cut short does not. A file whose end holds no record is parsed
    whole (a file written otherwise).

    Raises:
        DerivedDatasetMissing: no file at ``path``.
        DerivedDatasetDamaged: a file that is not whole JSON, or without a record.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DerivedDatasetMissing(f"{path} does not exist", path, name)
    record = _record_at_end(path)
    if record is not None:
        return record
    try:
        d = read_json(path, what="derived dataset json")
    except (ValueError, OSError) as e:
        detail = e.__cause__ if isinstance(e.__cause__, ValueError) else e  # the parser's message, without the path
        raise DerivedDatasetDamaged(f"{path} is damaged (not whole JSON: {detail})", path, name) from e
    if not isinstance(d, dict) or not isinstance(d.get(RECORD_KEY), dict):
        raise DerivedDatasetDamaged(f"{path} is not a derived dataset (no {RECORD_KEY!r} key)", path, name)
    return d[RECORD_KEY]


def _record_at_end(path):
    """The record a whole derived json ends with, or None (not found in its last bytes, or not whole)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - _TAIL_BYTES))
            tail = f.read().decode("utf-8", errors="replace").rstrip()
    except OSError:
        return None
    found = list(_RECORD_AT_END.finditer(tail))
    if not found or not tail.endswith("}"):
        return None
    try:
        record = json.loads(tail[found[-1].end() : -1])  # the record, then the top-level object's closing brace
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _inputs(record):
    """A record without its output (what decides a rebuild)."""
    return {k: v for k, v in record.items() if k != OUTPUT_KEY} if isinstance(record, dict) else record


def _existing_record(path: str):
    """The inputs recorded in ``path``, parsed whole (before a build, a damage anywhere in it is found)."""
    if not os.path.isfile(path):
        return None
    try:
        return _inputs(read_json(path, what="derived dataset json").get(RECORD_KEY))
    except (ValueError, AttributeError):
        return None  # a truncated or foreign file: rebuilt


def is_up_to_date(name: str, path: str, record: dict) -> bool:
    """True when ``path`` was built from ``record`` (its :data:`RECORD_KEY`, output aside), logged as skipped;
    otherwise logs why it is (re)built: inputs changed (naming them), no readable build record, or nothing there."""
    old = _existing_record(path)
    if old == record:
        logger.info("Derived dataset %s: %s is up to date (same inputs), not rebuilt", name, path)
        return True
    if old is not None:
        logger.warning(
            "Derived dataset %s: rebuilding %s, its inputs changed: %s", name, path, ", ".join(_changes(old, record))
        )
    elif os.path.exists(path):
        logger.warning("Derived dataset %s: rebuilding %s (no readable build record in it)", name, path)
    return False


def build_derived_dataset(
    name: str, *, source: str, output_dir, valid_annotation_ids, unselected: str = "drop", inputs: dict
) -> str:
    """Writes the derived dataset ``name`` (``<output_dir>/<name>.json``) and returns its path.

    Args:
        name: the derived dataset's name (the file name).
        source: a dataset registered by :func:`ltdet2.data.register_lvis_format_dataset` (its validated
            annotations are the candidates; with ``skip_invalid`` the dropped ones are not in the set) or by
            Detectron2's ``register_lvis_instances`` (:class:`ltdet2.data.Detectron2LVISSource`: every annotation
            of its json must be valid; its class indices, json id - 1, must be the derived set's).
        output_dir: the folder (created if needed), e.g. the phase's folder.
        valid_annotation_ids: the selected json annotation ids (any iterable of ints).
        unselected: "drop" (paper and official code: the others are removed) or "ignore" (kept with
            ``"valid": false``: neither positive nor negative for the box head, see
            :class:`ltdet2.data.ValidityDatasetMapper`).
        inputs: JSON-able description of what decided the selection (parameters, seed, score-table identity);
            stored with the source json's identity and a digest of the selection.
    Raises:
        ValueError: an unknown ``unselected``, selected ids that are not (valid) annotations of ``source``.
    """
    if unselected not in UNSELECTED_MODES:
        raise ValueError(f"unselected must be one of {UNSELECTED_MODES}, got {unselected!r}")
    metadata = derived_source(source)
    _validated_meta(metadata)  # a dataset made on first load (LT-Shapes) is made now
    selected = np.unique(np.fromiter((int(i) for i in valid_annotation_ids), dtype=np.int64))
    record = {
        "source": source,
        "source_json": file_identity(metadata.json_file),
        "unselected": unselected,
        "inputs": inputs,
        "selection": {"count": int(len(selected)), "sha1": hashlib.sha1(selected.tobytes()).hexdigest()},
    }
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(os.fspath(output_dir), f"{name}.json")
    if is_up_to_date(name, path, record):
        return path

    d, checked, _ = _read_source(metadata)
    if isinstance(metadata, Detectron2LVISSource):
        # the derived set is registered by ltdet2 (class = position of the id among the sorted ids): the classes of
        # a model trained on the source must be the same (Detectron2's id - 1 is, for ids 1..C; raises otherwise)
        if not np.array_equal(dataset_category_ids(source), checked.category_ids):
            raise ValueError(
                f"derived dataset {name}: {source}'s classes (thing_dataset_id_to_contiguous_id) are not its sorted "
                f"json category ids, as the derived dataset's would be"
            )
    annotations = d["annotations"]
    ids = np.fromiter((a["id"] for a in annotations), dtype=np.int64, count=len(annotations))
    candidate = checked.keep
    known = np.isin(selected, ids[candidate])
    if not known.all():
        raise ValueError(
            f"derived dataset {name}: {int((~known).sum())} selected annotation ids are not annotations of "
            f"{source} ({metadata.json_file}): {_fmt_ids(selected[~known].tolist())}"
        )
    is_selected = np.isin(ids, selected) & candidate
    written = is_selected if unselected == "drop" else candidate
    # images with at least one selected annotation
    image_kept = np.zeros(len(d["images"]), dtype=bool)
    image_kept[checked.image_position[is_selected]] = True
    written &= image_kept[np.maximum(checked.image_position, 0)]

    out_annotations = []
    for i in np.flatnonzero(written).tolist():
        a = annotations[i]
        out_annotations.append(dict(a, valid=False) if not is_selected[i] else {k: v for k, v in a.items()
                                                                                   if k != "valid"})  # fmt: skip
    image_count, instance_count = class_counts(
        checked.image_position[written], checked.class_index[written], len(checked.category_ids)
    )
    frequency = frequency_from_image_count(image_count)
    by_id = {int(c["id"]): c for c in d["categories"]}
    categories = [
        dict(by_id[int(c)], image_count=int(n), instance_count=int(k), frequency=str(f))
        for c, n, k, f in zip(checked.category_ids.tolist(), image_count, instance_count, frequency)
    ]
    out = {key: value for key, value in d.items() if key not in ("images", "annotations", "categories", RECORD_KEY)}
    out.update(
        images=[im for im, keep in zip(d["images"], image_kept.tolist()) if keep],
        annotations=out_annotations,
        categories=categories,
    )
    write_derived_json(path, out, record)
    num_ignored = int((written & ~is_selected).sum())
    logger.info(
        "Derived dataset %s: wrote %s from %s: %d images, %d selected annotations, %d ignored, %d classes without one",
        name,
        path,
        source,
        len(out["images"]),
        int(is_selected.sum()),
        num_ignored,
        int((instance_count == 0).sum()),
    )
    return path


def register_derived_dataset(name: str, json_path, *, source: str, train_json=None) -> str:
    """Registers a json written by :func:`build_derived_dataset` (or another json with a :data:`RECORD_KEY`) with
    ``source``'s image root (``source``: see :func:`build_derived_dataset`); its metadata also has
    ``derived_from=source``, ``num_ignored_annotations`` and the rest of the record's ``"output"`` (e.g. an LST phase
    set's classes without images). ``train_json``: for an evaluation split, the json giving its training counts (see
    :func:`ltdet2.data.register_lvis_format_dataset`). Idempotent like :func:`ltdet2.data.register_lvis_format_dataset`
    (same file, same arguments: a no-op).

    Reads the record from the file's end (:func:`read_build_record`: the file is not parsed; a file written before
    records had an output is, to count its ignored annotations).

    Raises:
        DerivedDatasetMissing, DerivedDatasetDamaged: the json is missing, cut short or has no record.
    """
    image_root = derived_source(source).image_root
    output = dict(read_build_record(json_path, name).get(OUTPUT_KEY) or {})
    if "num_ignored_annotations" not in output:
        d = read_json(json_path, what="derived dataset json")
        output["num_ignored_annotations"] = sum(1 for a in d.get("annotations", ()) if a.get("valid", True) is False)
    return register_lvis_format_dataset(
        name, json_path, image_root, train_json=train_json, derived_from=source, **output
    )
