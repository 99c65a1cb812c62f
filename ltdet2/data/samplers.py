"""Repeat-factor sampling (RFS, LVIS paper appendix B.2) on Detectron2's own sampler.

The factors are computed here, vectorized with numpy over a flat array of unique (image, class)
pairs (:func:`ltdet2.data.categories.dataset_dict_pairs`), and handed to
:class:`detectron2.data.samplers.RepeatFactorTrainingSampler`, which already shards the infinite
index stream across ranks with a shared seed and rounds fractional factors stochastically each epoch.

Definitions (``f_c``: fraction of the training images that contain class ``c``):

* class factor  ``r_c = max(1, (t / f_c) ** p)`` with threshold ``t`` (0.001) and power ``p``;
  ``p = 0.5`` is LVIS' square-root rule (used by RIO and Detectron2's default), ``p = 1`` its
  ``sqrt=False`` variant; other powers serve the step-wise method's re-sampling.
* image factor ``r_I = max_{c in I} r_c`` (1 for an image without annotations).

Class indices are Detectron2's contiguous ``category_id`` of the dataset dicts; for LVIS-format
data this is the contiguous index of :class:`ltdet2.data.LVISMeta` (json id order).

Step-wise RFS (issue #12, reference §2.4): :func:`stepwise_repeat_factor_sampler` gives each class its
(threshold, power) -- or a fixed factor -- by its image count in the *full* source dataset (``groups``,
e.g. :data:`STEPWISE_HEAD_GROUPS` / :data:`STEPWISE_TAIL_GROUPS`), counts ``f_c`` on the (smooth-tail) set
itself, rounds ``r_I`` up (official, deterministic) or stochastically (Detectron2), and keeps the epoch at
``len(dataset)`` indices (official): RFS changes an epoch's composition, not its length
(:class:`StepwiseRepeatFactorSampler`).

LST's balanced replay resampled each epoch (issue #13, official code): :class:`ReplayDrawSampler` trains epoch e
on a phase set's untagged entries and its replay draw ``e mod E`` (:func:`replay_draw_sampler`).

Class-aware (class-balanced) image sampling (cRT's stage 2, issue #30): :class:`ClassAwareSampler` draws a class, each
class equally often, then an image that holds it (:func:`class_aware_sampler`).
"""

import logging
from collections.abc import Sequence

import numpy as np
import torch

from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler

from .categories import _fmt_ids, dataset_dict_pairs, unique_image_class_pairs
from .category_meta import LVISMeta
from .incremental import REPLAY_DRAW_KEY
from .lvis_meta import lvis_meta_from_dataset

__all__ = [
    "class_repeat_factors",
    "image_repeat_factors",
    "repeat_factors_from_dataset_dicts",
    "repeat_factor_sampler",
    "STEPWISE_HEAD_GROUPS",
    "STEPWISE_TAIL_GROUPS",
    "grouped_class_repeat_factors",
    "stepwise_repeat_factors",
    "StepwiseRepeatFactorSampler",
    "stepwise_repeat_factor_sampler",
    "ReplayDrawSampler",
    "replay_draw_sampler",
    "ClassAwareSampler",
    "class_aware_sampler",
]

logger = logging.getLogger(__name__)


def class_repeat_factors(image_fraction, *, threshold: float = 0.001, power: float = 0.5) -> np.ndarray:
    """``r_c = max(1, (t / f_c) ** p)`` per class.

    Args:
        image_fraction: [C] ``f_c`` in [0, 1]. A class in no image (``f_c = 0``) gets 1: it never
            decides an image's factor.
        threshold: t. power: p (0.5: square root, LVIS / RIO).
    Returns:
        [C] float64 array, all >= 1.
    """
    if threshold <= 0 or power < 0:
        raise ValueError(f"need threshold > 0 and power >= 0, got {threshold}, {power}")
    f = np.asarray(image_fraction, dtype=np.float64)
    factors = np.ones_like(f)
    seen = f > 0
    factors[seen] = np.maximum(1.0, (threshold / f[seen]) ** power)
    return factors


def image_repeat_factors(image_index, class_index, num_images: int, class_factors) -> np.ndarray:
    """``r_I = max_{c in I} r_c`` from flat (image, class) pairs; 1 for images with no pair.

    Returns:
        [num_images] float64 array.
    """
    factors = np.ones(num_images, dtype=np.float64)
    class_factors = np.asarray(class_factors, dtype=np.float64)
    if len(image_index):
        np.maximum.at(factors, np.asarray(image_index), class_factors[np.asarray(class_index)])
    return factors


def repeat_factors_from_dataset_dicts(
    dataset_dicts: Sequence[dict],
    *,
    threshold: float = 0.001,
    power: float = 0.5,
    image_count: None | np.ndarray | Sequence[int] | LVISMeta = None,
    num_images: int | None = None,
) -> torch.Tensor:
    """Per-image repeat factors of a Detectron2 dataset.

    Args:
        dataset_dicts: Detectron2 dataset dicts (list[dict] with ``annotations`` / ``category_id``),
            in the order the sampler indexes them.
        threshold, power: see :func:`class_repeat_factors`.
        image_count: per-class number of training images ([C] array or an :class:`LVISMeta`); by
            default counted from ``dataset_dicts``. Give the LVIS json's counts to use the
            dataset's official frequencies (e.g. when the dicts are a filtered or merged subset).
        num_images: the denominator of ``f_c``; default ``len(dataset_dicts)`` (as Detectron2).
    Returns:
        [len(dataset_dicts)] float32 tensor, what :class:`RepeatFactorTrainingSampler` takes.
    """
    images, classes = dataset_dict_pairs(dataset_dicts)
    num_images = len(dataset_dicts) if num_images is None else int(num_images)
    if num_images <= 0:
        raise ValueError("repeat factors need at least one image")
    if image_count is None:
        counts = np.bincount(classes, minlength=int(classes.max()) + 1 if len(classes) else 0)
    else:
        counts = np.asarray(
            image_count.image_count if isinstance(image_count, LVISMeta) else image_count, dtype=np.float64
        )
        if len(classes) and classes.max() >= len(counts):
            raise ValueError(
                f"dataset dicts hold category_id {int(classes.max())} but image_count has only {len(counts)} classes"
            )
    class_factors = class_repeat_factors(counts / num_images, threshold=threshold, power=power)
    factors = image_repeat_factors(images, classes, len(dataset_dicts), class_factors)
    return torch.as_tensor(factors, dtype=torch.float32)


def repeat_factor_sampler(
    dataset_dicts: Sequence[dict],
    *,
    threshold: float = 0.001,
    power: float = 0.5,
    image_count: None | np.ndarray | Sequence[int] | LVISMeta = None,
    num_images: int | None = None,
    shuffle: bool = True,
    seed: int | None = None,
):
    """Detectron2's :class:`RepeatFactorTrainingSampler` with ltdet2's repeat factors.

    LazyConfig use (the sampler must index the same dicts as the loader's dataset)::

        dataloader.train.sampler = L(repeat_factor_sampler)(dataset_dicts="${..dataset}")

    The interpolation copies the dataset's LazyCall, so the dicts are built a second time for the
    sampler (same names and filters: same order); overrides of ``dataloader.train.dataset`` reach
    both.

    Args:
        dataset_dicts: the dataset dicts (list[dict]).
        threshold, power, image_count, num_images: see :func:`repeat_factors_from_dataset_dicts`.
        shuffle, seed: of :class:`RepeatFactorTrainingSampler` (seed None: a random seed shared by
            all ranks, reproducible under ``train.seed``).
    """
    factors = repeat_factors_from_dataset_dicts(
        dataset_dicts, threshold=threshold, power=power, image_count=image_count, num_images=num_images
    )
    return RepeatFactorTrainingSampler(factors, shuffle=shuffle, seed=seed)


# --- step-wise RFS ------------------------------------------------------------------------------------------

# A group: the classes in at least "min_images" images of the full source dataset (and not in a group with a
# larger min_images) get either a fixed "factor" or r_c = max(1, (threshold / f_c) ** power). A class below
# every group's min_images gets 1. LVIS groups: frequent = more than 100 images, common[30, 100], the rest.
# Official DistributedRepeatFactorReSampler_0 (D_head): frequent 1; common[30, 100] t=0.003, p=0.3; others
# t=0.003, p=0.5.
STEPWISE_HEAD_GROUPS = (
    {"min_images": 101, "factor": 1.0},
    {"min_images": 30, "threshold": 0.003, "power": 0.3},
    {"min_images": 1, "threshold": 0.003, "power": 0.5},
)
# Official DistributedRepeatFactorReSampler_1 (D_tail): head (>= 30 images) 1; tail t=0.0015, p=1.
STEPWISE_TAIL_GROUPS = (
    {"min_images": 30, "factor": 1.0},
    {"min_images": 1, "threshold": 0.0015, "power": 1.0},
)

ROUNDING_MODES = ("ceil", "stochastic")
EPOCH_LENGTHS = ("dataset", "expanded")


def _checked_groups(groups) -> list:
    out = []
    for k, group in enumerate(groups):
        group = dict(group)
        keys = set(group) - {"min_images"}
        if "min_images" not in group or keys not in ({"factor"}, {"threshold", "power"}):
            raise ValueError(
                f"repeat-factor group {k} {group}: needs 'min_images' and either 'factor' or 'threshold' + 'power'"
            )
        if "factor" in group and group["factor"] < 1:
            raise ValueError(f"repeat-factor group {k} {group}: factor must be >= 1")
        out.append(group)
    return sorted(out, key=lambda g: -g["min_images"])


def grouped_class_repeat_factors(image_fraction, group_image_count, groups) -> np.ndarray:
    """Per-class ``r_c``, each class with the (threshold, power) or fixed factor of its group.

    Args:
        image_fraction: [C] ``f_c`` on the set the sampler draws from (0: the class is not in it, r_c = 1).
        group_image_count: [C] image counts that choose the group (the full source dataset's).
        groups: sequence of dicts ``{"min_images": m, "factor": r}`` or ``{"min_images": m, "threshold": t,
            "power": p}``; a class belongs to the group with the largest ``m <= group_image_count[c]``
            (none: r_c = 1).
    Returns:
        [C] float64, all >= 1.
    """
    f = np.asarray(image_fraction, dtype=np.float64)
    counts = np.asarray(group_image_count, dtype=np.int64)
    if f.shape != counts.shape:
        raise ValueError(f"{f.size} class fractions but {counts.size} class image counts")
    factors = np.ones_like(f)
    assigned = np.zeros(f.shape, dtype=bool)
    for group in _checked_groups(groups):  # a few groups, vectorised over classes
        members = (counts >= group["min_images"]) & ~assigned
        assigned |= members
        if "factor" in group:
            factors[members & (f > 0)] = float(group["factor"])
        else:
            factors[members] = class_repeat_factors(f[members], threshold=group["threshold"], power=group["power"])
    return factors


def stepwise_repeat_factors(dataset_dicts: Sequence[dict], *, groups, group_image_count) -> torch.Tensor:
    """Per-image ``r_I = max_{c in I} r_c`` (unrounded) with :func:`grouped_class_repeat_factors`; ``f_c`` =
    images of the set holding a *valid* annotation of c (``"valid": False`` annotations do not count) / images
    of the set.

    Returns:
        [len(dataset_dicts)] float64 tensor.
    """
    if not len(dataset_dicts):
        raise ValueError("repeat factors need at least one image")
    lengths = np.fromiter((len(d.get("annotations", ())) for d in dataset_dicts), np.int64, len(dataset_dicts))
    annotations = [a for d in dataset_dicts for a in d.get("annotations", ())]
    classes = np.fromiter((a["category_id"] for a in annotations), np.int64, len(annotations))
    valid = np.fromiter((a.get("valid", True) for a in annotations), bool, len(annotations))
    images = np.repeat(np.arange(len(dataset_dicts), dtype=np.int64), lengths)
    images, classes = unique_image_class_pairs(images[valid], classes[valid])
    group_image_count = np.asarray(group_image_count, dtype=np.int64)
    if len(classes) and classes.max() >= len(group_image_count):
        raise ValueError(
            f"dataset dicts hold category_id {int(classes.max())} but the group image counts have only "
            f"{len(group_image_count)} classes"
        )
    fraction = np.bincount(classes, minlength=len(group_image_count)) / len(dataset_dicts)
    class_factors = grouped_class_repeat_factors(fraction, group_image_count, groups)
    return torch.as_tensor(image_repeat_factors(images, classes, len(dataset_dicts), class_factors))


class StepwiseRepeatFactorSampler(RepeatFactorTrainingSampler):
    """Detectron2's :class:`RepeatFactorTrainingSampler` (an infinite index stream, seeded, sharded over ranks)
    with the official step-wise code's options.

    Each epoch: image i appears ``round(r_i)`` times, the indices are permuted, and (``epoch_length="dataset"``,
    official) only the first ``len(repeat_factors)`` are used, so an epoch keeps the dataset's length;
    ``epoch_length="expanded"`` uses them all (Detectron2).

    Args:
        repeat_factors: [N] per-image factors (>= 1).
        rounding: "ceil" (official ``ri_mode='ceil'``: deterministic) or "stochastic" (Detectron2: floor, plus
            one with probability the fractional part, drawn each epoch).
        epoch_length: "dataset" or "expanded" (see above).
        shuffle, seed: as :class:`RepeatFactorTrainingSampler` (seed None: shared random seed).
    """

    def __init__(self, repeat_factors, *, rounding="ceil", epoch_length="dataset", shuffle=True, seed=None):
        if rounding not in ROUNDING_MODES:
            raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}")
        if epoch_length not in EPOCH_LENGTHS:
            raise ValueError(f"epoch_length must be one of {EPOCH_LENGTHS}, got {epoch_length!r}")
        if epoch_length == "dataset" and not shuffle:
            raise ValueError('epoch_length="dataset" needs shuffle=True: unshuffled, the cut drops the last images')
        factors = torch.as_tensor(repeat_factors, dtype=torch.float64)
        super().__init__(torch.ceil(factors) if rounding == "ceil" else factors, shuffle=shuffle, seed=seed)
        self._epoch_length = len(factors) if epoch_length == "dataset" else None

    def _get_epoch_indices(self, generator):
        # as Detectron2's (same random draws), without its Python loop over images
        rands = torch.rand(len(self._frac_part), generator=generator, dtype=self._frac_part.dtype)
        repeats = (self._int_part + (rands < self._frac_part)).long()
        return torch.repeat_interleave(torch.arange(len(repeats)), repeats)

    def _infinite_indices(self):
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            indices = self._get_epoch_indices(g)
            if self._shuffle:
                indices = indices[torch.randperm(len(indices), generator=g)]
            yield from indices[: self._epoch_length].tolist()


def stepwise_repeat_factor_sampler(
    dataset_dicts: Sequence[dict],
    *,
    groups=STEPWISE_HEAD_GROUPS,
    image_count_from: str | None = None,
    image_count: None | np.ndarray | Sequence[int] | LVISMeta = None,
    rounding: str = "ceil",
    epoch_length: str = "dataset",
    shuffle: bool = True,
    seed: int | None = None,
) -> StepwiseRepeatFactorSampler:
    """Step-wise RFS sampler for a (derived) training set; LazyConfig use::

        dataloader.train.sampler = L(stepwise_repeat_factor_sampler)(
            dataset_dicts="${..dataset}", groups=STEPWISE_TAIL_GROUPS, image_count_from="lvis_v1_train")

    Args:
        dataset_dicts: the set's dataset dicts, in the loader's order.
        groups: see :func:`grouped_class_repeat_factors`; D_head: :data:`STEPWISE_HEAD_GROUPS`, D_tail:
            :data:`STEPWISE_TAIL_GROUPS`.
        image_count_from: the full source dataset whose per-class image counts choose the groups
            (:func:`ltdet2.data.lvis_meta_from_dataset`).
        image_count: or those counts directly ([C] or an :class:`LVISMeta`). Neither: the set's own counts.
        rounding, epoch_length, shuffle, seed: see :class:`StepwiseRepeatFactorSampler`.
    """
    if image_count_from is not None and image_count is not None:
        raise ValueError("give image_count_from or image_count, not both")
    if image_count_from is not None:
        image_count = lvis_meta_from_dataset(image_count_from)
    if isinstance(image_count, LVISMeta):
        image_count = image_count.image_count
    if image_count is None:
        images, classes = dataset_dict_pairs(dataset_dicts)
        image_count = np.bincount(classes, minlength=int(classes.max()) + 1 if len(classes) else 0)
    factors = stepwise_repeat_factors(dataset_dicts, groups=groups, group_image_count=image_count)
    rounded = torch.ceil(factors) if rounding == "ceil" else factors
    logger.info(
        "Step-wise RFS over %d images: %.1f indices per epoch after %s rounding (%s), max image factor %.2f",
        len(factors),
        float(rounded.sum()),
        rounding,
        f"cut to {len(factors)}" if epoch_length == "dataset" else "whole",
        float(factors.max()),
    )
    return StepwiseRepeatFactorSampler(
        factors, rounding=rounding, epoch_length=epoch_length, shuffle=shuffle, seed=seed
    )


# --- LST: balanced replay resampled each epoch -----------------------------------------------------------------


class ReplayDrawSampler(TrainingSampler):
    """Detectron2's :class:`TrainingSampler` (an infinite index stream, seeded, sharded over the ranks: rank r of
    W takes positions r, r + W, ... of the one stream all ranks compute) whose epoch e is a permutation of the
    entries drawn in every epoch and those of replay draw ``e mod E``, each once: the official LST code's replay
    resampled each epoch (a phase set of :class:`~ltdet2.data.IncrementalPhaseBuilder` with ``replay_draws``; the
    paper's fixed replay is Detectron2's own :class:`TrainingSampler` over a one-draw set).

    On resume the stream restarts from its seed (epoch 0), as :class:`TrainingSampler`'s; ltdet2's trainer then
    skips the batches already trained (``train.resume_data="replay"``, the default), or trains from the stream's
    start (``"restart"``).

    Args:
        replay_draws: [N] int per dataset entry: -1 = in every epoch (new-class entries), e in [0, E) = replay
            draw e; E = the largest + 1, and every draw 0..E-1 must have entries.
        shuffle: permute each epoch (False: every-epoch entries then the draw's, in index order).
        seed: as :class:`TrainingSampler` (None: a random seed shared by all ranks).
    """

    def __init__(self, replay_draws, *, shuffle=True, seed=None):
        draws = np.asarray(replay_draws, dtype=np.int64).reshape(-1)
        if not len(draws) or draws.max() < 0:
            raise ValueError(f"ReplayDrawSampler: no entry of the {len(draws)} has a replay draw (>= 0)")
        if draws.min() < -1:
            raise ValueError(f"ReplayDrawSampler: replay draws are -1 (every epoch) or >= 0, got {int(draws.min())}")
        num_draws = int(draws.max()) + 1
        sizes = np.bincount(draws + 1, minlength=num_draws + 1)  # [1 + E]: every epoch, then each draw
        if (sizes[1:] == 0).any():
            raise ValueError(
                f"ReplayDrawSampler: replay draws {_fmt_ids(np.flatnonzero(sizes[1:] == 0))} of 0..{num_draws - 1} "
                "have no entry"
            )
        super().__init__(len(draws), shuffle=shuffle, seed=seed)
        groups = np.split(np.argsort(draws, kind="stable"), np.cumsum(sizes)[:-1])
        self._every_epoch = torch.as_tensor(groups[0])
        self._draws = [torch.as_tensor(g) for g in groups[1:]]

    @property
    def num_draws(self) -> int:
        return len(self._draws)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """The entries of epoch ``epoch`` (unpermuted): every-epoch entries, then draw ``epoch mod E``'s."""
        return torch.cat([self._every_epoch, self._draws[epoch % self.num_draws]])

    def _infinite_indices(self):
        g = torch.Generator()
        g.manual_seed(self._seed)
        epoch = 0
        while True:
            indices = self.epoch_indices(epoch)
            if self._shuffle:
                indices = indices[torch.randperm(len(indices), generator=g)]
            yield from indices.tolist()
            epoch += 1


def replay_draw_sampler(dataset_dicts: Sequence[dict], *, shuffle: bool = True, seed: int | None = None):
    """:class:`ReplayDrawSampler` over a phase set's dataset dicts (their ``"replay_draw"``, absent: every
    epoch); LazyConfig use (ltdet2/config/lst.py: ``lst_phases(replay_resampling=...)``)::

        dataloader.train.sampler = L(replay_draw_sampler)(dataset_dicts="${..dataset}")

    Raises:
        ValueError: no dict has a ``"replay_draw"``: the set was built with one fixed draw (``replay_draws=1``),
            or its loader dropped the key.
    """
    draws = np.fromiter((d.get(REPLAY_DRAW_KEY, -1) for d in dataset_dicts), np.int64, len(dataset_dicts))
    if not (draws >= 0).any():
        raise ValueError(
            f"replay_draw_sampler: none of the {len(draws)} dataset dicts has a {REPLAY_DRAW_KEY!r}: the set was "
            "built without resampled replay draws (IncrementalPhaseBuilder(replay_draws=1)), or its loader dropped "
            "the key"
        )
    sampler = ReplayDrawSampler(draws, shuffle=shuffle, seed=seed)
    logger.info(
        "Replay resampled each epoch: %d entries in every epoch + one of %d replay draws (%d entries in all)",
        len(sampler._every_epoch),
        sampler.num_draws,
        len(draws),
    )
    return sampler


# --- class-aware (class-balanced) sampling: cRT's stage 2 ---------------------------------------------------------


def _grouped_permutations(group, shuffle, generator):
    """Positions ``0..len(group)-1`` ordered by ``group`` (ascending), within each group in random order (in index
    order unshuffled): a permutation of every group at once."""
    if not len(group):
        return torch.zeros(0, dtype=torch.long)
    perm = torch.randperm(len(group), generator=generator) if shuffle else torch.arange(len(group))
    return perm[torch.argsort(group[perm], stable=True)]


class ClassAwareSampler(TrainingSampler):
    """Class-aware sampling (Shen et al. 2016, "Relay backpropagation"; the class-balanced sampling of cRT, Kang et
    al. 2020): each draw is a class, then an image that holds it, so that every class is drawn equally often. As the
    EQLv2 code's ``CASDataset`` (tztztztztz/eqlv2, mmdet/datasets/class_balance_dataset_wrapper.py, its cRT's
    sampler): the classes come in rounds, each a permutation of the classes that have an image, and each class's
    images in a stream of its own, permutation after permutation, so a class's images are all drawn once before any
    is drawn again. A class without an image is never drawn; an image without an annotation neither.

    Detectron2's :class:`TrainingSampler` otherwise: an infinite index stream from the seed, the same on every rank,
    rank r of W taking positions r, r + W, ... . On resume the stream restarts from its seed; ltdet2's trainer then
    skips the batches already trained (``train.resume_data="replay"``, the default), as for the other samplers here.

    Args:
        image_index, class_index: [P] the (image, class) pairs: image ``image_index[p]`` (its position in the
            dataset) holds class ``class_index[p]``; duplicates count once.
        num_images: the dataset's length (the sampler's ``size``; default: the largest image index + 1).
        shuffle: permute the classes of each round and each class's images (False: ascending order).
        seed: as :class:`TrainingSampler` (None: a random seed shared by all ranks).
        rounds_per_block: rounds drawn at once (vectorized; default about 65536 draws). Part of the stream, as the
            seed: another value draws the random numbers in another order.
    """

    def __init__(self, image_index, class_index, num_images=None, *, shuffle=True, seed=None, rounds_per_block=None):
        images, classes = unique_image_class_pairs(image_index, class_index)
        if not len(images):
            raise ValueError("ClassAwareSampler: no (image, class) pair: no image holds an annotation")
        if images.min() < 0:
            raise ValueError(f"ClassAwareSampler: image indices must be >= 0, got {int(images.min())}")
        num_images = int(images.max()) + 1 if num_images is None else int(num_images)
        if images.max() >= num_images:
            raise ValueError(f"ClassAwareSampler: image index {int(images.max())} >= num_images {num_images}")
        super().__init__(num_images, shuffle=shuffle, seed=seed)
        order = np.argsort(classes, kind="stable")
        self.classes, counts = np.unique(classes, return_counts=True)  # [C'] the classes drawn, their image counts
        self._class_images = torch.as_tensor(images[order])  # [P] each class's images, class after class
        self._counts = torch.as_tensor(counts)
        self._offsets = torch.as_tensor(np.concatenate([[0], np.cumsum(counts)[:-1]]))
        self._rounds = int(rounds_per_block or max(1, 65536 // len(counts)))

    @property
    def num_classes(self) -> int:
        """The number of classes drawn (those with an image)."""
        return len(self._counts)

    def class_image_count(self) -> np.ndarray:
        """[C'] the number of images of each drawn class (``self.classes``)."""
        return self._counts.numpy().copy()

    def _new_permutations(self, needed, generator):
        """Fresh permutations of each class's images, ``needed[c]`` of them for class c: (flat images, start of
        class c's first one)."""
        blocks = torch.repeat_interleave(torch.arange(self.num_classes), needed)  # class of each (class, t) block
        sizes = self._counts[blocks]
        starts = torch.cumsum(sizes, 0) - sizes
        block_of = torch.repeat_interleave(torch.arange(len(blocks)), sizes)  # block of each new element
        within = torch.arange(int(sizes.sum())) - starts[block_of]
        flat = self._class_images[self._offsets[blocks][block_of] + within]
        flat = flat[_grouped_permutations(block_of, self._shuffle, generator)]
        first_block = torch.cumsum(needed, 0) - needed
        first_start = torch.zeros(self.num_classes, dtype=torch.long)
        has = needed > 0
        first_start[has] = starts[first_block[has]]
        return flat, first_start

    def _infinite_indices(self):
        g = torch.Generator()
        g.manual_seed(self._seed)
        num_classes, counts, offsets, rounds = self.num_classes, self._counts, self._offsets, self._rounds
        # each class's current permutation of its images (the segment at offsets[c]) and its stream position in it
        current, _ = self._new_permutations(torch.ones(num_classes, dtype=torch.long), g)
        position = torch.zeros(num_classes, dtype=torch.long)
        steps = torch.arange(rounds)
        while True:
            if self._shuffle:
                class_order = torch.argsort(torch.rand(rounds, num_classes, generator=g), dim=1)  # [R, C'] rounds
            else:
                class_order = torch.arange(num_classes).expand(rounds, num_classes)
            # class c's draw in round r: element position[c] + r of its stream, in permutation `which` (0: current)
            at = position[:, None] + steps  # [C', R]
            which, element = at // counts[:, None], at % counts[:, None]
            needed = which[:, -1]  # fresh permutations per class in this block
            fresh, fresh_start = self._new_permutations(needed, g)
            images = current[offsets[:, None] + element]
            later = which > 0
            rows = torch.nonzero(later, as_tuple=True)[0]
            images[later] = fresh[fresh_start[rows] + (which[later] - 1) * counts[rows] + element[later]]
            yield from images[class_order, steps[:, None]].reshape(-1).tolist()
            renewed = torch.nonzero(needed > 0, as_tuple=True)[0]
            if len(renewed):  # the last permutation drawn from becomes the class's current one
                sizes = counts[renewed]
                class_of = torch.repeat_interleave(renewed, sizes)
                within = torch.arange(int(sizes.sum())) - torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
                last = fresh_start + (needed - 1) * counts
                current[offsets[class_of] + within] = fresh[last[class_of] + within]
            position = position + rounds - needed * counts


def class_aware_sampler(dataset_dicts: Sequence[dict], *, shuffle: bool = True, seed: int | None = None):
    """:class:`ClassAwareSampler` over Detectron2 dataset dicts (their ``category_id``, contiguous); LazyConfig use
    (the sampler must index the same dicts as the loader's dataset)::

        dataloader.train.sampler = L(class_aware_sampler)(dataset_dicts="${..dataset}")
    """
    images, classes = dataset_dict_pairs(dataset_dicts)
    sampler = ClassAwareSampler(images, classes, len(dataset_dicts), shuffle=shuffle, seed=seed)
    logger.info(
        "Class-aware sampling over %d classes of %d images (%d with an annotation); the rarest class has %d images",
        sampler.num_classes,
        len(dataset_dicts),
        len(np.unique(images)),
        int(sampler.class_image_count().min()),
    )
    return sampler
