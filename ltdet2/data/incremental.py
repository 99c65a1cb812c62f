"""Class-incremental phases of LST (issue #13; reference §2.1-2.2): the class split, balanced replay and the
phase datasets.

* :class:`ClassIncrementalSplit`: the split in numbers (a base phase of the top ``base`` classes, then ``num_phases``
  near-equal bins, ``np.array_split`` sizes) and each phase's class counts, which the phase configs read
  (``ltdet2/config/lst.py``); :func:`incremental_class_order` / :func:`incremental_class_phases`: a dataset's classes
  sorted by training instance count (descending; ties by json category id ascending), split by it.
* :func:`replay_counts`: images replayed per old class, ``ceil(n_C / n_k)`` (paper) or ``round`` with a minimum of
  1 (official code).
* :class:`IncrementalPhaseBuilder`: a derived-dataset builder (the phase runner's protocol) writing phase t's
  training json (entries: new-class images + balanced replay, one draw or several) and its val json.

Ids in the phase datasets: the categories are the classes seen so far, renumbered in the sorted order (json
category id = rank + 1, ``"source_id"`` = the dataset's own id), so a class keeps its contiguous index
(rank) in every phase: old classes are a prefix, new classes append, Detectron2's background stays last (K_t).
"""

import logging
import os
from dataclasses import dataclass

import numpy as np

from .categories import _fmt_ids, class_counts, frequency_from_image_count, unique_image_class_pairs
from .category_meta import LVISMeta
from .validation import CATEGORY_LIST_KEYS

__all__ = [
    "ClassIncrementalSplit",
    "incremental_class_order",
    "incremental_class_phases",
    "replay_counts",
    "REPLAY_MODES",
    "NEW_IMAGE_MODES",
    "REPLAY_DRAW_KEY",
    "IncrementalPhaseBuilder",
]

logger = logging.getLogger(__name__)

REPLAY_MODES = ("ceil", "round")
NEW_IMAGE_MODES = ("new_classes", "entry_class")
# the image key of a training-set entry of a resampled replay: the draw it belongs to (ReplayDrawSampler)
REPLAY_DRAW_KEY = "replay_draw"
_MAX_NAMED = 10  # classes named in a warning


def _meta(meta) -> LVISMeta:
    if isinstance(meta, str):
        from .lvis_meta import lvis_meta_from_dataset

        return lvis_meta_from_dataset(meta)
    return meta


def incremental_class_order(meta) -> np.ndarray:
    """[C] json category ids by training instance count, descending; ties by json id, ascending.

    Args:
        meta: an :class:`~ltdet2.data.LVISMeta` (its ``instance_count``) or a registered dataset's name.
    """
    meta = _meta(meta)
    ids = np.asarray(meta.category_ids, dtype=np.int64)
    return ids[np.lexsort((ids, -np.asarray(meta.instance_count, dtype=np.int64)))]


@dataclass(frozen=True)
class ClassIncrementalSplit:
    """LST's class split in numbers, the one place it is made: ``num_classes`` classes in their sorted order
    (:func:`incremental_class_order`), a base phase (phase 0) of the first ``base``, then ``num_phases`` incremental
    phases that each add a near-equal bin of the rest, with ``np.array_split`` sizes (the first ``r`` bins one
    larger). LVIS v0.5, ``base=270, num_phases=6``: 270 + 6 x 160 (paper). ``num_phases=0``: the base phase alone.

    The phase datasets split a dataset's sorted classes with it (:meth:`split`, :func:`incremental_class_phases`);
    the phase configs read their class counts from it (:attr:`class_counts`, :meth:`old_num_classes`).

    Raises:
        ValueError: ``base < 1``, ``base`` above ``num_classes``, ``num_phases < 0``, or more phases than classes
            left after the base (an empty phase).
    """

    num_classes: int
    base: int
    num_phases: int

    def __post_init__(self):
        num_classes, base, num_phases = int(self.num_classes), int(self.base), int(self.num_phases)
        object.__setattr__(self, "num_classes", num_classes)
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "num_phases", num_phases)
        if base < 1 or base > num_classes:
            raise ValueError(f"base must be in [1, {num_classes}] (the number of classes), got {base}")
        if num_phases < 0:
            raise ValueError(f"num_phases must be >= 0, got {num_phases}")
        rest = num_classes - base
        if num_phases > rest:
            raise ValueError(
                f"more phases than classes: {num_phases} incremental phases for the {rest} classes left after the "
                f"{base} base classes ({num_classes} classes in all); every phase needs at least one class"
            )

    @property
    def sizes(self) -> tuple:
        """The classes each phase adds: ``base``, then the ``num_phases`` bins' sizes."""
        if not self.num_phases:
            return (self.base,)
        size, larger = divmod(self.num_classes - self.base, self.num_phases)
        return (self.base, *[size + 1] * larger, *[size] * (self.num_phases - larger))

    @property
    def class_counts(self) -> tuple:
        """K_t, the classes seen after each phase t = 0 (``base``) .. ``num_phases`` (``num_classes``, but for
        ``num_phases=0``, whose one phase has the ``base`` classes)."""
        return tuple(int(k) for k in np.cumsum(self.sizes))

    def old_num_classes(self, phase: int) -> int:
        """K_{t-1}, the classes phase ``phase`` starts with (the previous phase's); 0 for the base phase."""
        self._check_phase(phase)
        return self.class_counts[phase - 1] if phase > 0 else 0

    def split(self, ordered) -> list:
        """``ordered`` (the ``num_classes`` classes in their sorted order, e.g. json category ids) cut into the
        phases' classes: a list of ``num_phases + 1`` arrays."""
        ordered = np.asarray(ordered)
        if len(ordered) != self.num_classes:
            raise ValueError(f"{self}: splits {self.num_classes} classes, got {len(ordered)}")
        bounds = (0, *self.class_counts)
        return [ordered[start:end] for start, end in zip(bounds[:-1], bounds[1:])]

    def _check_phase(self, phase):
        if not 0 <= phase <= self.num_phases:
            raise ValueError(f"{self}: phase must be in [0, {self.num_phases}], got {phase}")


def incremental_class_phases(meta, *, base: int, num_phases: int) -> list:
    """The classes of each phase: json category ids (int64 arrays, in the sorted order of
    :func:`incremental_class_order`), split by :class:`ClassIncrementalSplit`: phase 0 = the top ``base`` classes,
    then ``num_phases`` bins of the rest with ``np.array_split`` sizes (the first ``r`` bins one larger). LVIS v0.5,
    ``base=270, num_phases=6``: 270 + 6 x 160 (paper). ``num_phases=0``: one phase of the top ``base`` classes.

    Raises:
        ValueError: ``base < 1``, ``base`` above the number of classes, ``num_phases < 0``, or more phases than
            classes left after the base (an empty phase).
    """
    order = incremental_class_order(meta)
    return ClassIncrementalSplit(len(order), base, num_phases).split(order)


def replay_counts(old_instance_count, old_image_count, new_instance_count, *, mode: str = "ceil") -> np.ndarray:
    """Images replayed per old class (LST's instance-level balanced replay, paper Sec. 3.3).

    With ``n_k = old_instance_count[k] / old_image_count[k]`` (instances of class k per image containing it) and
    ``n_C = mean(new_instance_count)`` (instances per new class): ``ceil(n_C / n_k)`` (``mode="ceil"``, paper) or
    ``round(n_C / n_k)`` with halves to even as Python's ``round`` (``mode="round"``, official
    ``balanced_replay.ipynb``); both at least 1. Computed on integers (no floating-point edge at whole ratios).

    Args:
        old_instance_count, old_image_count: [K_old] ints, each old class's training instances and images.
        new_instance_count: [N] ints (N >= 1), each new class's training instances.
    Returns:
        [K_old] int64.
    Raises:
        ValueError: an unknown mode, no new class, different lengths, an old class without an image or an
            instance (naming its positions).
    """
    if mode not in REPLAY_MODES:
        raise ValueError(f"replay mode must be one of {REPLAY_MODES}, got {mode!r}")
    instances = np.asarray(old_instance_count, dtype=np.int64).reshape(-1)
    images = np.asarray(old_image_count, dtype=np.int64).reshape(-1)
    new = np.asarray(new_instance_count, dtype=np.int64).reshape(-1)
    if instances.shape != images.shape:
        raise ValueError(f"{instances.size} old instance counts but {images.size} old image counts")
    if not new.size:
        raise ValueError("replay counts need at least one new class")
    empty = (images < 1) | (instances < 1)
    if empty.any():
        raise ValueError(f"old classes at positions {_fmt_ids(np.flatnonzero(empty))} have no training image to replay")
    # n_C / n_k = (sum_new / N) / (instances / images) = sum_new * images / (N * instances)
    numerator = int(new.sum()) * images
    denominator = len(new) * instances
    quotient, remainder = np.divmod(numerator, denominator)
    if mode == "ceil":
        count = quotient + (remainder > 0)
    else:
        twice = 2 * remainder
        count = quotient + ((twice > denominator) | ((twice == denominator) & (quotient % 2 == 1)))
    return np.maximum(count, 1).astype(np.int64)


class IncrementalPhaseBuilder:
    """Phase ``t``'s datasets of LST as derived datasets (the phase runner's builder protocol, see
    :mod:`ltdet2.engine.derived`): ``prepare`` writes them in the phase folder, ``register`` registers them.

    The training set ``name`` (``<output_dir>/<name>.json``) is a list of **entries** (an image and the classes
    valid in it), each written as its own image (new image id = entry index + 1, ``"source_image_id"`` kept; an
    annotation copied into several entries gets a new id each, ``"source_annotation_id"`` kept):

    * phase 0: every image with a base class, all its base-class annotations valid;
    * phase t > 0, new-class images (``new_images``): ``"new_classes"`` (the paper's reading) one entry per image
      with a new class, all new classes' annotations valid, old classes' ignored; ``"entry_class"`` (official
      code) one entry per (image, new class) pair, only that class valid;
    * phase t > 0, balanced replay: for each old class k, :func:`replay_counts` images containing k (``replay``:
      "ceil", paper; "round", official), the first ones of a permutation of k's training images by
      ``np.random.default_rng([seed, t, source id of k])`` (cycled when the count exceeds them); in a replay entry
      only class k is valid.

    The replay is fixed for the phase by default (``replay_draws=1``, the paper's one R_t). The official code draws a
    new replay every epoch (``balanced_replay.ipynb``: each class's shuffled image list, cycled, gives the *next*
    ``count`` images each epoch): ``replay_draws`` E > 1 writes E draws, draw e of class k being the permutation's
    images ``e * count ... (e + 1) * count - 1`` (cycled), so draw 0 is the fixed replay, the draws share no image while
    ``E * count`` is at most k's images, and every image of k is replayed before one repeats. The entries are then the
    new-class entries (untagged), then draw 0's replay, draw 1's, ... (each by class rank), every replay entry's image
    tagged ``"replay_draw": e`` (:data:`REPLAY_DRAW_KEY`); :class:`~ltdet2.data.samplers.ReplayDrawSampler` trains epoch
    e on the untagged entries and draw ``e mod E``. ``replay_draws="epochs"``: E is one draw per epoch of the phase's
    schedule, ``ceil(schedule_iters * schedule_batch_size / epoch)`` with an epoch = the new-class entries + one draw
    (the official code's epoch), at least 1; the replay entries are tagged even when E is 1. With ``replay_draws=1`` the
    json has no tag and is the fixed-replay json byte for byte.

    A class of the phase without a training image (e.g. in a subset of LVIS, where most classes have none) is not
    an error: a new class without one gets no positive, an old class without one no replay; both are warned about
    (naming the classes and the phase) and listed in the training set's metadata (``new_classes_without_images``,
    ``old_classes_without_replay``: ``{"id", "source_id", "name"}`` each).

    In every entry the annotations of unseen classes are removed and the other seen-class annotations kept, those
    not valid as ``"valid": false`` (ignored by the box head, seen by the RPN: :class:`ValidityDatasetMapper`).

    The val set ``val_name`` (default ``name + "_val"``) holds every image of ``source_val`` with the annotations of
    the seen classes and its federated lists (``neg_category_ids`` / ``not_exhaustive_category_ids``) filtered; its
    image and annotation ids are the source's. Both jsons' categories are the seen classes in the sorted order
    (:func:`incremental_class_phases`): json id = rank + 1, ``"source_id"`` = the dataset's id. The val set is
    registered with ``train_json=<val_name>.train_counts.json`` (a category table of the *full* ``source``'s counts
    of the seen classes), so its frequency groups and instance counts (AP_r/c/f, instance-count buckets) are the
    source training set's: a rare class stays rare. The training set's categories count its own entries (with
    several replay draws: all of them).

    Args:
        name: the training set's registered name (and file name in the phase folder).
        source, source_val: the full training / val sets, registered by
            :func:`ltdet2.data.register_lvis_format_dataset` (or LT-Shapes) or by Detectron2's
            ``register_lvis_instances`` (e.g. its built-in ``lvis_v0.5_train`` / ``lvis_v0.5_val``; read as
            :class:`ltdet2.data.Detectron2LVISSource`: counts from the annotations, the stored ones not read).
        base, num_phases: the class split (:func:`incremental_class_phases`).
        phase: t, 0 (base) .. ``num_phases``.
        replay: "ceil" (paper) or "round" (official code, minimum 1).
        new_images: "new_classes" (paper) or "entry_class" (official code).
        seed: the replay draw's seed; None: the phase's ``train.seed`` (``context.seed``).
        val_name: the val set's name; None: ``name + "_val"``.
        replay_draws: 1 (paper: the replay fixed for the phase), an int E > 1 (E draws, official code's
            resampling cycled over E epochs), or "epochs" (one draw per epoch of the schedule, official code).
        schedule_iters, schedule_batch_size: the phase's iterations and total batch size (images per
            iteration), read only with ``replay_draws="epochs"`` (and required by it).
    """

    def __init__(
        self,
        *,
        name: str,
        source: str,
        source_val: str,
        base: int,
        num_phases: int,
        phase: int,
        replay: str = "ceil",
        new_images: str = "new_classes",
        seed=None,
        val_name=None,
        replay_draws=1,
        schedule_iters=None,
        schedule_batch_size=None,
    ):
        if replay not in REPLAY_MODES:
            raise ValueError(f"replay must be one of {REPLAY_MODES}, got {replay!r}")
        if new_images not in NEW_IMAGE_MODES:
            raise ValueError(f"new_images must be one of {NEW_IMAGE_MODES}, got {new_images!r}")
        if not 0 <= int(phase) <= int(num_phases):
            raise ValueError(
                f"derived dataset {name!r}: phase {phase} out of range: phases are 0 (base) .. {num_phases} "
                f"(num_phases={num_phases})"
            )
        by_schedule = replay_draws == "epochs"
        if not by_schedule and (
            isinstance(replay_draws, bool) or not isinstance(replay_draws, int) or replay_draws < 1
        ):
            raise ValueError(
                f"derived dataset {name!r}: replay_draws must be an int >= 1 or 'epochs', got {replay_draws!r}"
            )
        schedule = (schedule_iters, schedule_batch_size)
        if by_schedule and not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in schedule):
            raise ValueError(
                f"derived dataset {name!r}: replay_draws='epochs' needs schedule_iters and schedule_batch_size "
                f"(ints >= 1: the phase's iterations and total batch size), got {schedule_iters!r}, "
                f"{schedule_batch_size!r}"
            )
        if not by_schedule and schedule != (None, None):
            raise ValueError(
                f"derived dataset {name!r}: schedule_iters / schedule_batch_size are read only with "
                f"replay_draws='epochs' (replay_draws={replay_draws!r})"
            )
        if int(phase) == 0 and replay_draws != 1:
            raise ValueError(
                f"derived dataset {name!r}: phase 0 (base) has no replay to resample (replay_draws={replay_draws!r})"
            )
        self.name = name
        self.val_name = val_name if val_name is not None else f"{name}_val"
        self.source = source
        self.source_val = source_val
        self.base = int(base)
        self.num_phases = int(num_phases)
        self.phase = int(phase)
        self.replay = replay
        self.new_images = new_images
        self.seed = None if seed is None else int(seed)
        self.replay_draws = replay_draws
        self.schedule_iters, self.schedule_batch_size = schedule

    def __repr__(self):
        schedule = f", schedule={self.schedule_iters}x{self.schedule_batch_size}" if self.schedule_iters else ""
        return (
            f"{type(self).__name__}(name={self.name!r}, source={self.source!r}, source_val={self.source_val!r}, "
            f"base={self.base}, num_phases={self.num_phases}, phase={self.phase}, replay={self.replay!r}, "
            f"new_images={self.new_images!r}, seed={self.seed}, replay_draws={self.replay_draws!r}{schedule})"
        )

    def input_phases(self) -> list:
        return []

    def json_path(self, context) -> str:
        return os.path.join(context.output_dir, f"{self.name}.json")

    def val_json_path(self, context) -> str:
        return os.path.join(context.output_dir, f"{self.val_name}.json")

    def counts_json_path(self, context) -> str:
        """The category table of the source's training counts the val set is registered with."""
        return os.path.join(context.output_dir, f"{self.val_name}.train_counts.json")

    def class_phases(self) -> list:
        """:func:`incremental_class_phases` of ``source`` (json category ids per phase)."""
        from .datasets import _validated_meta, derived_source

        meta = _validated_meta(derived_source(self.source))  # the counts prepare() splits by
        return incremental_class_phases(meta, base=self.base, num_phases=self.num_phases)

    def seen_category_ids(self) -> np.ndarray:
        """[K_t] source json ids of the classes seen up to this phase, in contiguous order (rank)."""
        return np.concatenate(self.class_phases()[: self.phase + 1])

    def num_old_classes(self) -> int:
        """K_{t-1}: classes of the earlier phases (0 in the base phase); their contiguous indices are 0..K_{t-1}-1."""
        return int(sum(len(p) for p in self.class_phases()[: self.phase]))

    def parameters(self, seed) -> dict:
        return {
            "base": self.base,
            "num_phases": self.num_phases,
            "phase": self.phase,
            "replay": self.replay,
            "new_images": self.new_images,
            "seed": seed,
            # only when resampled: a fixed-replay set keeps the record (and the file) it had before the option
            **({"replay_draws": self.replay_draws} if self.replay_draws != 1 else {}),
            **({"schedule": [self.schedule_iters, self.schedule_batch_size]} if self.schedule_iters else {}),
        }

    def num_draws(self, num_new_entries: int, draw_size: int) -> int:
        """E, the replay draws written for ``num_new_entries`` new-class entries and ``draw_size`` entries per draw:
        ``replay_draws``, or with "epochs" ``ceil(schedule images / (num_new_entries + draw_size))``, at least 1."""
        if self.replay_draws != "epochs":
            return int(self.replay_draws)
        images = self.schedule_iters * self.schedule_batch_size
        return max(1, -(-images // max(1, int(num_new_entries) + int(draw_size))))

    def prepare(self, context) -> None:
        from ..utils.files import file_identity
        from .datasets import _read_source, _validated_meta, derived_source
        from .derived import is_up_to_date, write_derived_json

        seed = self.seed if self.seed is not None else int(context.seed)
        source, source_val = derived_source(self.source), derived_source(self.source_val)
        _validated_meta(source)  # a dataset made on first load (LT-Shapes) is made now
        _validated_meta(source_val)
        record = {
            "builder": type(self).__name__,
            "source": self.source,
            "source_json": file_identity(source.json_file),
            "source_val": self.source_val,
            "source_val_json": file_identity(source_val.json_file),
            "parameters": self.parameters(seed),
        }
        os.makedirs(context.output_dir, exist_ok=True)
        paths = (self.json_path(context), self.val_json_path(context), self.counts_json_path(context))
        names = (self.name, self.val_name, f"{self.val_name} (training counts)")
        if all([is_up_to_date(n, p, record) for n, p in zip(names, paths)]):
            return
        d, checked, meta = _read_source(source)
        phases = incremental_class_phases(meta, base=self.base, num_phases=self.num_phases)
        seen = np.concatenate(phases[: self.phase + 1])
        num_old = len(seen) - len(phases[self.phase])
        categories = _renumbered_categories(d, seen, meta)
        train, without_images = self._train_json(d, checked, meta, seen, num_old, seed, categories)
        val = self._val_json(source_val, seen, categories)
        counts = {"images": [], "annotations": [], "categories": categories}
        outputs = (without_images, {}, {})
        for path, out, output in zip(paths, (train, val, counts), outputs):
            write_derived_json(path, out, record, **output)
        logger.info(
            "Derived dataset %s (phase %d): wrote %s (%d entries, %d annotations of which %d ignored) and %s "
            "(%d images, %d annotations of the %d seen classes)",
            self.name,
            self.phase,
            paths[0],
            len(train["images"]),
            len(train["annotations"]),
            sum(1 for a in train["annotations"] if a.get("valid", True) is False),
            paths[1],
            len(val["images"]),
            len(val["annotations"]),
            len(seen),
        )

    def register(self, context) -> None:
        """Registers the training and val sets (reading only their files' ends, :func:`read_build_record`; a
        missing or damaged one raises :class:`~ltdet2.data.derived.DerivedDatasetUnavailable` before any is
        registered)."""
        from .derived import read_build_record, register_derived_dataset

        names = (self.name, self.val_name, f"{self.val_name} (training counts)")
        paths = (self.json_path(context), self.val_json_path(context), self.counts_json_path(context))
        for name, path in zip(names, paths):
            read_build_record(path, name)
        register_derived_dataset(self.name, self.json_path(context), source=self.source)
        register_derived_dataset(
            self.val_name,
            self.val_json_path(context),
            source=self.source_val,
            train_json=self.counts_json_path(context),
        )

    # --- building ---------------------------------------------------------------------------------------------

    def _entries(self, checked, image_ids, rank, num_old, seed, meta, seen):
        """(entry image positions [M], entry classes [M]: the rank valid in the entry, -1 = every class of rank
        >= ``num_old``, entry draws [M]: the replay draw, -1 for a new-class entry), new-class entries first (by
        image id, then class), then the replay by draw, then class rank."""
        image_order = np.empty(len(image_ids), dtype=np.int64)
        by_id = np.argsort(image_ids, kind="stable")
        image_order[by_id] = np.arange(len(image_ids))
        annotation_image = image_order[np.maximum(checked.image_position, 0)]
        is_new = rank >= num_old
        if self.phase == 0 or self.new_images == "new_classes":
            keys = np.unique(annotation_image[is_new])
            entry_image, entry_class = by_id[keys], np.full(len(keys), -1, dtype=np.int64)
        else:
            keys, classes = unique_image_class_pairs(annotation_image[is_new], rank[is_new])
            entry_image, entry_class = by_id[keys], classes
        if self.phase == 0:
            return entry_image, entry_class, np.full(len(entry_image), -1, dtype=np.int64)
        is_old = (rank >= 0) & (rank < num_old)
        keys, classes = unique_image_class_pairs(annotation_image[is_old], rank[is_old])
        by_class = np.lexsort((keys, classes))
        keys, classes = keys[by_class], classes[by_class]
        images_per_class = np.bincount(classes, minlength=num_old)
        index = np.searchsorted(np.asarray(meta.category_ids), seen)
        old_instances, old_images = meta.instance_count[index[:num_old]], meta.image_count[index[:num_old]]
        replayable = (images_per_class > 0) & (old_instances > 0) & (old_images > 0)
        counts = np.zeros(num_old, dtype=np.int64)  # none for an old class without an image
        if replayable.any():
            counts[replayable] = replay_counts(
                old_instances[replayable],
                old_images[replayable],
                meta.instance_count[index[num_old:]],
                mode=self.replay,
            )
        num_draws = self.num_draws(len(entry_image), int(counts.sum()))
        starts = np.concatenate([[0], np.cumsum(images_per_class)])
        draws = np.arange(num_draws)[:, None]
        replayed = [np.zeros((num_draws, 0), dtype=np.int64)]
        for k in np.flatnonzero(counts).tolist():  # once per phase, not per iteration
            candidates = keys[starts[k] : starts[k + 1]]
            order = np.random.default_rng([seed, self.phase, int(seen[k])]).permutation(len(candidates))
            count = int(counts[k])
            # [E, count]: draw e takes the permutation's next `count` images, cycled (draw 0 = the fixed replay)
            replayed.append(candidates[order[(draws * count + np.arange(count)) % len(candidates)]])
        shown = counts[replayable] if replayable.any() else np.zeros(1, dtype=np.int64)
        logger.info(
            "Derived dataset %s (phase %d): replaying %d images of %d old classes (%s; per class min %d / median %s "
            "/ max %d)%s",
            self.name,
            self.phase,
            int(counts.sum()),
            int(replayable.sum()),
            self.replay,
            int(shown.min()),
            float(np.median(shown)),
            int(shown.max()),
            f" in each of {num_draws} draws (an epoch: {len(entry_image)} new-class entries + one draw)"
            if self.replay_draws != 1
            else "",
        )
        replay_class = np.repeat(np.arange(num_old, dtype=np.int64), counts)  # one draw's classes
        return (
            np.concatenate([entry_image, by_id[np.concatenate(replayed, axis=1).reshape(-1)]]),
            np.concatenate([entry_class, np.tile(replay_class, num_draws)]),
            np.concatenate(
                [np.full(len(entry_image), -1, dtype=np.int64), np.repeat(np.arange(num_draws), len(replay_class))]
            ),
        )

    def _train_json(self, d, checked, meta, seen, num_old, seed, categories):
        """(the training json, its classes without images: see :meth:`_classes_without_images`)."""
        images, annotations = d["images"], d["annotations"]
        image_ids = np.fromiter((im["id"] for im in images), dtype=np.int64, count=len(images))
        rank = _ranks(checked, seen)
        entry_image, entry_class, entry_draw = self._entries(checked, image_ids, rank, num_old, seed, meta, seen)

        # the seen annotations of every entry's image, vectorised: by image position, json order within one
        kept = np.flatnonzero(rank >= 0)
        kept = kept[np.argsort(checked.image_position[kept], kind="stable")]
        starts = np.concatenate([[0], np.cumsum(np.bincount(checked.image_position[kept], minlength=len(images)))])
        per_entry = starts[entry_image + 1] - starts[entry_image]
        entry_of = np.repeat(np.arange(len(entry_image)), per_entry)
        offset = np.arange(int(per_entry.sum())) - np.repeat(np.cumsum(per_entry) - per_entry, per_entry)
        written = kept[starts[entry_image][entry_of] + offset]
        written_rank = rank[written]
        valid = np.where(entry_class[entry_of] >= 0, written_rank == entry_class[entry_of], written_rank >= num_old)
        valid &= np.fromiter(
            (annotations[i].get("valid", True) is not False for i in written.tolist()), bool, len(written)
        )

        lists = _renumbered_lists(checked, seen)
        out_images = [
            dict(_image(images[p], e + 1, lists, p), source_image_id=images[p]["id"])
            for e, p in enumerate(entry_image.tolist())
        ]
        if self.replay_draws != 1:
            for e in np.flatnonzero(entry_draw >= 0).tolist():
                out_images[e][REPLAY_DRAW_KEY] = int(entry_draw[e])
        out_annotations = []
        for j, (i, e, r, v) in enumerate(
            zip(written.tolist(), entry_of.tolist(), written_rank.tolist(), valid.tolist())
        ):
            a = {k: value for k, value in annotations[i].items() if k != "valid"}
            a.update(id=j + 1, image_id=e + 1, category_id=r + 1, source_annotation_id=annotations[i].get("id"))
            if not v:
                a["valid"] = False
            out_annotations.append(a)
        image_count, instance_count = class_counts(entry_of, written_rank, len(seen))
        own = [
            dict(c, image_count=int(n), instance_count=int(k), frequency=str(f))
            for c, n, k, f in zip(categories, image_count, instance_count, frequency_from_image_count(image_count))
        ]
        positives = np.bincount(written_rank[valid], minlength=len(seen))
        replayed = np.bincount(entry_class[entry_draw >= 0], minlength=num_old)[:num_old]
        without_images = self._classes_without_images(categories, positives[num_old:] == 0, replayed == 0, num_old)
        return _with(d, images=out_images, annotations=out_annotations, categories=own), without_images

    def _classes_without_images(self, categories, new_empty, old_empty, num_old) -> dict:
        """Warns about the phase's new classes with no valid annotation in the set (no training image in the source)
        and its old classes with no image to replay; returns them for the set's record
        (``new_classes_without_images``, ``old_classes_without_replay``: ``{"id", "source_id", "name"}`` each, ``id``
        the phase set's)."""
        out = {}
        for key, ranks, what in (
            ("new_classes_without_images", num_old + np.flatnonzero(new_empty), "new classes have no training image"),
            ("old_classes_without_replay", np.flatnonzero(old_empty), "old classes have no image"),
        ):
            out[key] = [
                {"id": int(r) + 1, "source_id": int(categories[r]["source_id"]), "name": categories[r]["name"]}
                for r in ranks.tolist()
            ]
            if not len(ranks):
                continue
            total = len(new_empty) if key.startswith("new") else num_old
            shown = ", ".join(f"{c['name']!r} (category id {c['source_id']})" for c in out[key][:_MAX_NAMED])
            more = f", ... ({len(ranks)} in total)" if len(ranks) > _MAX_NAMED else ""
            logger.warning(
                "Derived dataset %s, phase %d: %d of its %d %s in %s%s: %s%s",
                self.name,
                self.phase,
                len(ranks),
                total,
                what,
                self.source,
                " (no positive of them in the phase set)" if key.startswith("new") else " to replay (none replayed)",
                shown,
                more,
            )
        return out

    def _val_json(self, source_val, seen, categories) -> dict:
        from .datasets import _read_source

        d, checked, _ = _read_source(source_val)
        missing = seen[~np.isin(seen, checked.category_ids)]
        if len(missing):
            raise ValueError(
                f"derived dataset {self.val_name!r}: {self.source_val} ({source_val.json_file}) lacks seen classes of "
                f"{self.source}: category ids {_fmt_ids(missing)}"
            )
        rank = _ranks(checked, seen)
        lists = _renumbered_lists(checked, seen)
        out_images = [_image(im, im["id"], lists, p) for p, im in enumerate(d["images"])]
        out_annotations = [
            dict(d["annotations"][i], category_id=int(rank[i]) + 1) for i in np.flatnonzero(rank >= 0).tolist()
        ]
        return _with(d, images=out_images, annotations=out_annotations, categories=categories)


def _rank_of_index(checked, seen) -> np.ndarray:
    """[C + 1] rank among ``seen`` of each contiguous class of ``checked`` (-1: unseen); the last entry, -1, is
    what an unknown category (class index -1) reads."""
    rank_of_index = np.full(len(checked.category_ids) + 1, -1, dtype=np.int64)
    rank_of_index[np.searchsorted(checked.category_ids, seen)] = np.arange(len(seen))
    return rank_of_index


def _ranks(checked, seen) -> np.ndarray:
    """[A] rank of each kept annotation's class among ``seen`` (-1: unseen, unknown category or dropped)."""
    return np.where(checked.keep, _rank_of_index(checked, seen)[checked.class_index], -1)


def _renumbered_lists(checked, seen) -> dict:
    """{key: per image (json order) list of renumbered ids (rank + 1) of the seen classes in it}."""
    rank_of_index = _rank_of_index(checked, seen)
    out = {}
    for key, per_image in checked.category_lists.items():
        ranks = [rank_of_index[np.asarray(c, dtype=np.int64)] for c in per_image]
        out[key] = [sorted((r[r >= 0] + 1).tolist()) for r in ranks]
    return out


def _image(image: dict, image_id: int, lists: dict, position: int) -> dict:
    out = {k: v for k, v in image.items() if k not in CATEGORY_LIST_KEYS}
    out["id"] = image_id
    for key, per_image in lists.items():
        out[key] = per_image[position]
    return out


def _renumbered_categories(d, seen, meta) -> list:
    """The seen classes as categories: json id = rank + 1, ``source_id``, and the source's training counts."""
    by_id = {int(c["id"]): c for c in d["categories"]}
    index = np.searchsorted(np.asarray(meta.category_ids), seen)
    return [
        dict(
            by_id[int(c)],
            id=r + 1,
            source_id=int(c),
            image_count=int(meta.image_count[i]),
            instance_count=int(meta.instance_count[i]),
            frequency=str(meta.frequency[i]),
        )
        for r, (c, i) in enumerate(zip(seen.tolist(), index.tolist()))
    ]


def _with(d, **fields) -> dict:
    from .derived import RECORD_KEY

    out = {k: v for k, v in d.items() if k not in ("images", "annotations", "categories", RECORD_KEY)}
    out.update(fields)
    return out
