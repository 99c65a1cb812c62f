"""Exemplar selection for the step-wise method's smooth-tail sets (issue #12; reference §2.3).

* :func:`select_exemplars`: per class, the annotations a set keeps, from a per-annotation score table.
* :func:`smooth_tail_quota`: how many annotations per class (head classes: ``head_quota``, tail: ``tail_quota``).
* :class:`ExemplarSetBuilder`: a derived-dataset builder (the phase runner's protocol) that scores the source
  dataset with an earlier phase's model, selects, and writes / registers the set
  (:mod:`ltdet2.data.derived`).

Category ids here are the *json* category ids (as in the score table and the LVIS json), not contiguous indices.
"""

import logging
import os
from collections.abc import Mapping

import numpy as np

from .categories import _fmt_ids
from .category_meta import LVISMeta
from .datasets import _read_source, _validated_meta, derived_source
from .derived import UNSELECTED_MODES, build_derived_dataset, register_derived_dataset

__all__ = ["select_exemplars", "smooth_tail_quota", "ExemplarSetBuilder"]

logger = logging.getLogger(__name__)

SCORE_TABLE_FIELDS = ("id", "image_id", "category_id", "score")


def _columns(annotations) -> dict:
    """{field: 1-D array} from a list of dicts (``id``, ``image_id``, ``category_id``, ``score``) or a mapping of
    1-D arrays (``annotation_id`` accepted for ``id``, as the score tables name it)."""
    if isinstance(annotations, Mapping):
        columns = dict(annotations)
        if "id" not in columns and "annotation_id" in columns:
            columns["id"] = columns["annotation_id"]
        missing = [k for k in SCORE_TABLE_FIELDS if k not in columns]
        if missing:
            raise ValueError(f"score table: missing field(s) {missing} (has {sorted(columns)})")
        columns = {k: np.asarray(columns[k]).reshape(-1) for k in SCORE_TABLE_FIELDS}
        lengths = {k: len(v) for k, v in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"score table: fields of different lengths {lengths}")
    else:
        annotations = list(annotations)
        columns = {}
        for key in SCORE_TABLE_FIELDS:
            try:
                columns[key] = np.array([a[key] for a in annotations])
            except KeyError:
                bad = [i for i, a in enumerate(annotations) if key not in a]
                raise ValueError(
                    f"annotations: field {key!r} missing in {len(bad)} annotation(s), positions {_fmt_ids(bad)}"
                ) from None
    try:
        out = {k: columns[k].astype(np.int64, casting="safe") for k in ("id", "image_id", "category_id")}
    except TypeError as e:
        raise ValueError(f"annotations: 'id', 'image_id' and 'category_id' must be integers ({e})") from None
    out["score"] = columns["score"].astype(np.float64)
    return out


def select_exemplars(
    annotations, per_class: Mapping, *, score_threshold: float = 0.5, one_per_image: bool = True
) -> list:
    """Annotation ids a smooth-tail set keeps (issue #12, paper Sec. 3.1, official ``main_data.py``).

    Per class ``c``, annotations are ranked: first those with ``score > score_threshold`` whose image
    class ``c`` has not used yet, by descending score (``one_per_image=False``: every annotation with
    ``score > score_threshold``, by descending score); then all the others by descending score. The
    first ``per_class[c]`` are kept (None: all). Ties in score are broken by ascending annotation id,
    so the result is deterministic.

    Args:
        annotations: list of dicts with ``id``, ``image_id``, ``category_id`` (json ids) and ``score``
            (in [0, 1], e.g. the pretrained model's max foreground probability), or a mapping of 1-D
            arrays with those fields (``annotation_id`` for ``id``, as a score table names it).
        per_class: {json category id: count (int >= 0) or None = all}. A class absent selects nothing.
        score_threshold: the "confident" score (0.5 in the paper and code); strictly greater passes.
        one_per_image: prefer one annotation per (class, image) among the confident ones (paper, code).
    Returns:
        list of annotation ids (int), ordered by category id, then selection rank.
    Raises:
        ValueError: a missing field, non-integer ids, non-finite scores, repeated annotation ids or
            negative counts (naming them).
    """
    cols = _columns(annotations)
    ids, images, cats, scores = cols["id"], cols["image_id"], cols["category_id"], cols["score"]
    bad = ~np.isfinite(scores)
    if bad.any():
        raise ValueError(f"annotations: non-finite 'score' for annotation ids {_fmt_ids(ids[bad].tolist())}")
    unique_ids, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"annotations: repeated annotation ids {_fmt_ids(unique_ids[counts > 1].tolist())}")
    negative = [c for c, n in per_class.items() if n is not None and int(n) < 0]
    if negative:
        raise ValueError(f"per_class: negative counts for category ids {_fmt_ids(sorted(negative))}")
    if not len(ids):
        return []

    # stream: by class, descending score, ascending id
    order = np.lexsort((ids, -scores, cats))
    confident = scores[order] > score_threshold
    if one_per_image:
        # the first (highest-scoring) annotation of each (class, image) pair in the stream; later ones of the
        # pair score no more, so they are confident only if it was, and then its image is used
        _, image_rank = np.unique(images, return_inverse=True)
        _, cat_rank = np.unique(cats, return_inverse=True)
        pair = (image_rank.reshape(-1) * (int(cat_rank.max()) + 1) + cat_rank.reshape(-1))[order]
        first = np.zeros(len(order), dtype=bool)
        first[np.unique(pair, return_index=True)[1]] = True
        confident &= first
    # rank: (class, confident first, descending score, id)
    order = order[np.lexsort((np.arange(len(order)), ~confident, cats[order]))]

    classes, starts, sizes = np.unique(cats[order], return_index=True, return_counts=True)
    quota = _class_quota(per_class, classes, sizes)
    rank = np.arange(len(order)) - np.repeat(starts, sizes)
    return ids[order[rank < np.repeat(quota, sizes)]].tolist()


def _class_quota(per_class: Mapping, classes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """[K] count kept of each of ``classes`` (sorted json ids, ``sizes`` annotations each): 0 for a class absent
    from ``per_class``, all for None."""
    keys = np.fromiter((int(c) for c in per_class), dtype=np.int64, count=len(per_class))
    all_ = np.fromiter((n is None for n in per_class.values()), dtype=bool, count=len(per_class))
    counts = np.fromiter((0 if n is None else int(n) for n in per_class.values()), dtype=np.int64, count=len(keys))
    if not len(keys):
        return np.zeros(len(classes), dtype=np.int64)
    by_key = np.argsort(keys)
    position = by_key[np.minimum(np.searchsorted(keys[by_key], classes), len(keys) - 1)]
    known = keys[position] == classes
    return np.where(known, np.where(all_[position], sizes, counts[position]), 0)


def smooth_tail_quota(meta: LVISMeta, *, head_quota, tail_quota, min_images: int = 30) -> dict:
    """{json category id: count or None} for :func:`select_exemplars`: ``head_quota`` for the head classes
    (:meth:`LVISMeta.head_classes`: in at least ``min_images`` training images of ``meta``), ``tail_quota``
    for the others. D_head: ``head_quota=200, tail_quota=30``; D_tail: ``head_quota=50, tail_quota=None``."""
    for name, q in (("head_quota", head_quota), ("tail_quota", tail_quota)):
        if q is not None and int(q) < 0:
            raise ValueError(f"{name} must be >= 0 or None, got {q}")
    head = np.zeros(len(meta.category_ids), dtype=bool)
    head[meta.head_classes(min_images)] = True
    return {int(c): (head_quota if h else tail_quota) for c, h in zip(meta.category_ids, head.tolist())}


class ExemplarSetBuilder:
    """A smooth-tail set (D_head / D_tail of the step-wise method) as a derived dataset: the phase runner
    calls :meth:`prepare` (main process) and :meth:`register` (every process) before the phase trains.

    ``prepare`` scores every annotation of ``source`` with phase ``scores_from_phase``'s final model
    (``context.annotation_scores``), checks the table belongs to ``source``, gives ``head_quota`` annotations
    to each head class (in >= ``min_images`` images of ``source``, :meth:`LVISMeta.head_classes`) and
    ``tail_quota`` to each tail class (None: all), selects them with :func:`select_exemplars` and writes the
    set with :func:`ltdet2.data.build_derived_dataset` (skipped when built from the same inputs).

    D_head (paper): ``head_quota=200, tail_quota=30``; D_tail: ``head_quota=50, tail_quota=None``.

    Args:
        name: the derived dataset's registered name (and file name in the phase folder).
        source: the LVIS-format training dataset the set is drawn from, registered by
            :func:`ltdet2.data.register_lvis_format_dataset` or by Detectron2's ``register_lvis_instances``
            (:func:`ltdet2.data.derived_source`).
        scores_from_phase: the earlier phase whose final model scores the annotations.
        head_quota, tail_quota: annotations per head / tail class (int, or None = all).
        min_images: the head / tail split (paper: 30).
        score_threshold, one_per_image: see :func:`select_exemplars`.
        score: "max_foreground" (official code) or "ground_truth" (the ground-truth class's probability).
        unselected: "drop" (paper, code; the default) or "ignore" (see :func:`ltdet2.data.build_derived_dataset`).
            On R-CNN, 5 LT-Shapes seeds put "ignore" lower on every seed, within the corrected intervals
            (docs/results/stepwise_drop_vs_ignore).
    """

    def __init__(
        self,
        *,
        name: str,
        source: str,
        scores_from_phase: str,
        head_quota,
        tail_quota,
        min_images: int = 30,
        score_threshold: float = 0.5,
        one_per_image: bool = True,
        score: str = "max_foreground",
        unselected: str = "drop",
    ):
        if unselected not in UNSELECTED_MODES:
            raise ValueError(f"unselected must be one of {UNSELECTED_MODES}, got {unselected!r}")
        self.name = name
        self.source = source
        self.scores_from_phase = scores_from_phase
        self.head_quota = head_quota
        self.tail_quota = tail_quota
        self.min_images = int(min_images)
        self.score_threshold = float(score_threshold)
        self.one_per_image = bool(one_per_image)
        self.score = score
        self.unselected = unselected

    def score_requests(self):
        """The score tables :meth:`prepare` reads: with several processes the runner computes them on every rank
        (sharded) before ``prepare`` runs on the main process, which then finds them cached."""
        return [dict(phase=self.scores_from_phase, dataset=self.source, score=self.score)]

    def __repr__(self):
        return (
            f"{type(self).__name__}(name={self.name!r}, source={self.source!r}, scores_from_phase="
            f"{self.scores_from_phase!r}, head_quota={self.head_quota}, tail_quota={self.tail_quota})"
        )

    def input_phases(self) -> list:
        return [self.scores_from_phase]

    def json_path(self, context) -> str:
        return os.path.join(context.output_dir, f"{self.name}.json")

    def parameters(self) -> dict:
        return {
            "head_quota": self.head_quota,
            "tail_quota": self.tail_quota,
            "min_images": self.min_images,
            "score_threshold": self.score_threshold,
            "one_per_image": self.one_per_image,
            "score": self.score,
        }

    def prepare(self, context) -> None:
        meta = _validated_meta(derived_source(self.source))  # the counts of the annotations the set is drawn from
        table = _columns(context.annotation_scores(self.scores_from_phase, dataset=self.source, score=self.score))
        table_identity = context.table_identity(self.scores_from_phase, dataset=self.source, score=self.score)
        self._check_table(table, table_identity)
        per_class = smooth_tail_quota(
            meta, head_quota=self.head_quota, tail_quota=self.tail_quota, min_images=self.min_images
        )
        ids = select_exemplars(table, per_class, score_threshold=self.score_threshold, one_per_image=self.one_per_image)
        inputs = {
            "builder": type(self).__name__,
            "parameters": self.parameters(),
            "scores_from_phase": self.scores_from_phase,
            "score_table": table_identity,
        }
        build_derived_dataset(
            self.name,
            source=self.source,
            output_dir=context.output_dir,
            valid_annotation_ids=ids,
            unselected=self.unselected,
            inputs=inputs,
        )
        self._log_summary(meta, table, ids)

    def register(self, context) -> None:
        register_derived_dataset(self.name, self.json_path(context), source=self.source)

    def _check_table(self, table: dict, table_identity) -> None:
        """Every scored annotation must be an annotation of ``source`` (one of its json's annotations that are
        candidates: with ``skip_invalid``, not a dropped one) with the same image and json category id."""
        d, checked, _ = _read_source(derived_source(self.source))
        images, annotations = d["images"], d["annotations"]
        kept = np.flatnonzero(checked.keep)
        ann = np.fromiter((annotations[i]["id"] for i in kept.tolist()), np.int64, len(kept))
        cls = checked.class_index[kept]
        image_ids = np.fromiter((im["id"] for im in images), np.int64, len(images))
        image = image_ids[checked.image_position[kept]]
        category_ids = np.asarray(checked.category_ids)
        by_id = np.argsort(ann)
        position = by_id[np.minimum(np.searchsorted(ann[by_id], table["id"]), max(len(ann) - 1, 0))]
        ok = (
            (ann[position] == table["id"]) & (image[position] == table["image_id"])
            if len(ann)
            else np.zeros(len(table["id"]), dtype=bool)
        )
        ok[ok] &= category_ids[cls[position[ok]]] == table["category_id"][ok]
        where = (
            f"the score table of phase {self.scores_from_phase!r} ({table_identity}) used by derived dataset "
            f"{self.name!r}"
        )
        if not ok.all():
            raise ValueError(
                f"{where} is not a table of dataset {self.source!r}: {int((~ok).sum())} scored annotations are "
                f"not its annotations (unknown id, or another image / category): ids "
                f"{_fmt_ids(table['id'][~ok].tolist())}"
            )
        unscored = ~np.isin(ann, table["id"])
        if unscored.any():
            logger.warning(
                "%s scores %d of the %d annotations of %s; the %d others cannot be selected (ids %s)",
                where,
                len(table["id"]),
                len(ann),
                self.source,
                int(unscored.sum()),
                _fmt_ids(ann[unscored].tolist()),
            )

    def _log_summary(self, meta: LVISMeta, table: dict, ids: list) -> None:
        category_ids = np.asarray(meta.category_ids)
        selected_categories = table["category_id"][np.isin(table["id"], np.asarray(ids, dtype=np.int64))]
        per_class = np.bincount(np.searchsorted(category_ids, selected_categories), minlength=len(category_ids))
        head = np.zeros(len(category_ids), dtype=bool)
        head[meta.head_classes(self.min_images)] = True
        for group, quota, members in (("head", self.head_quota, head), ("tail", self.tail_quota, ~head)):
            counts = per_class[members]
            empty = category_ids[members][counts == 0]
            logger.info(
                "Derived dataset %s: %d %s classes (quota %s): selected per class min %s / median %s / max %s, "
                "total %d; %d classes left empty%s",
                self.name,
                int(members.sum()),
                group,
                "all" if quota is None else quota,
                int(counts.min()) if len(counts) else "-",
                float(np.median(counts)) if len(counts) else "-",
                int(counts.max()) if len(counts) else "-",
                int(counts.sum()),
                len(empty),
                f" (category ids {_fmt_ids(empty.tolist())})" if len(empty) else "",
            )
