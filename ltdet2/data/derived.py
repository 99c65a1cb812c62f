"""Derived datasets: a subset of a registered LVIS-format dataset's annotations (registered by ltdet2 or by
Detectron2's ``register_lvis_instances``), written as LVIS json and registered under its own name (issue #12's
smooth-tail sets; LST's replay sets).

:func:`build_derived_dataset` writes ``<output_dir>/<name>.json``: the source's validated json with only the
selected annotations (the others dropped, or kept with ``"valid": false`` = "ignored"), images without a
selected annotation removed, every category kept (contiguous ids equal the source's) with ``image_count`` /
``instance_count`` / ``frequency`` recomputed for the subset (ignored annotations count: they are in the file).
The top-level key ``"ltdet2_derived"`` records what the file was built from (:data:`RECORD_KEY`); building
again with the same record is skipped, with another one the file is rebuilt with a warning naming what changed.
:func:`register_derived_dataset` registers it with the source's image root.
"""

import hashlib
import logging
import os

import numpy as np

from ..utils.files import file_identity
from ..utils.json_io import read_json, write_json_atomic
from .class_counts import class_counts
from .datasets import (
    Detectron2LVISSource,
    _read_source,
    _validated_meta,
    dataset_category_ids,
    derived_source,
    register_lvis_format_dataset,
)
from .lvis_meta import _fmt_ids, frequency_from_image_count

__all__ = ["build_derived_dataset", "register_derived_dataset", "RECORD_KEY", "UNSELECTED_MODES"]

logger = logging.getLogger(__name__)

RECORD_KEY = "ltdet2_derived"
UNSELECTED_MODES = ("drop", "ignore")


def _changes(old, new, prefix="") -> list:
    """Dotted keys whose values differ between two JSON-able records."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _changes(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "<record>"]


def _existing_record(path: str):
    if not os.path.isfile(path):
        return None
    try:
        return read_json(path, what="derived dataset json").get(RECORD_KEY)
    except (ValueError, AttributeError):
        return None  # a truncated or foreign file: rebuilt


def is_up_to_date(name: str, path: str, record: dict) -> bool:
    """True when ``path`` was built from ``record`` (its :data:`RECORD_KEY`), logged as skipped; otherwise logs
    why it is (re)built: inputs changed (naming them), no readable record, or nothing there."""
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
    out[RECORD_KEY] = record
    write_json_atomic(path, out)
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
    ``derived_from=source`` and ``num_ignored_annotations`` (read from the file). ``train_json``: for an evaluation
    split, the json giving its training counts (see :func:`ltdet2.data.register_lvis_format_dataset`). Idempotent like
    :func:`ltdet2.data.register_lvis_format_dataset` (same file, same arguments: a no-op)."""
    image_root = derived_source(source).image_root
    d = read_json(json_path, what="derived dataset json")
    if RECORD_KEY not in d:
        raise ValueError(f"{json_path} is not a derived dataset (no {RECORD_KEY!r} key): build it first")
    num_ignored = sum(1 for a in d.get("annotations", ()) if a.get("valid", True) is False)
    return register_lvis_format_dataset(
        name, json_path, image_root, train_json=train_json, derived_from=source, num_ignored_annotations=num_ignored
    )
