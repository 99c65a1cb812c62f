"""RIO's object-centric memory replay (OCS, Chang et al., ICML 2021) as a feature source."""

import logging
from collections.abc import Sequence

import numpy as np
import torch

from ltdet2.data.class_counts import dataset_class_image_count
from ltdet2.data.lvis_meta import LVISMeta
from ltdet2.memory import ClassQueue
from ltdet2.memory.class_queue import resolve_storage_dtype

from ..extra_rows import ExtraRows
from .base import FeatureSource

__all__ = ["ObjectReplay", "targeted_classes"]

logger = logging.getLogger(__name__)

REPLAY_MODES = ("recent", "random")


def targeted_classes(
    image_count: np.ndarray | Sequence[int] | LVISMeta | torch.Tensor, max_images: int = 30
) -> torch.Tensor:
    """Classes with ``1 <= image_count <= max_images`` (RIO: 30), as a sorted int64 tensor.

    Classes in no training image never appear in a batch and get no queue.
    """
    if isinstance(image_count, LVISMeta):
        image_count = image_count.image_count
    counts = torch.as_tensor(np.asarray(image_count), dtype=torch.int64)
    return torch.nonzero((counts >= 1) & (counts <= max_images)).flatten()


_targeted = targeted_classes  # the constructor's argument of the same name shadows it


class ObjectReplay(FeatureSource):
    """Object-centric memory replay (RIO sec. 3.2): per targeted class a queue of box-head features
    of foreground RoIs with their proposal and ground-truth boxes, replayed into the box predictor.

    Each training iteration, for the sampled RoIs of the batch:

    1. the targeted classes present among the foreground RoIs are found;
    2. for each of them ``per_class`` entries are drawn from its queue (before this batch is
       pushed, so an object never replays itself in the iteration it is seen; empty queues give
       nothing);
    3. the foreground RoIs of targeted classes are pushed (box-head features detached, in RoI
       order, oldest overwritten first).

    The drawn rows are returned as :class:`ExtraRows` with their boxes: they train the classifier
    and the box regressor (targets recomputed with the predictor's box transform), never the mask
    head. Everything is vectorized over RoIs and classes, and any number of RoIs per image works.

    Only targeted classes get storage: ``class_to_slot`` ([C+1], -1 for untargeted classes and
    background) maps a class to its compact queue index and ``slot_to_class`` ([K]) back, so on
    LVIS the store is K x capacity x D, not C x capacity x D.

    Paper vs official code: the paper replays stored objects of the classes in the batch; the
    official code takes the most recent ones (``mode="recent"``, newest first, the default here);
    ``mode="random"`` is the official ``RANDOM_SELECT`` option: ``per_class`` distinct entries drawn
    uniformly without replacement when more than ``per_class`` are stored, else every stored entry.

    Images without annotations (their RoIs are all background, with no ``gt_boxes``) add nothing
    and push nothing.

    Targeted classes (give exactly one of):
        targeted_classes: explicit class indices.
        image_count: [C] training images per class (array, tensor or :class:`LVISMeta`); targeted
            are classes with 1..``max_images`` images.
        dataset_name: a registered LVIS-format Detectron2 dataset (or several, counts summed); its
            counts are read by :func:`ltdet2.data.class_counts.dataset_class_image_count` when first
            needed (first training iteration or loading a checkpoint that holds the memory), so a
            config can be instantiated without the data.

    Args:
        num_classes: C.
        feature_dim: D, the box head's output size.
        max_images: targeting threshold on the image count (RIO: 30).
        capacity: entries per targeted class (RIO: 60).
        per_class: entries replayed per present targeted class (RIO: 20).
        mode: "recent" (official default) or "random" (official option, without replacement).
        storage_dtype: "float16" (or torch.float16) to halve the store; see ClassQueue.
        sync: "local" (per rank, as the official code) or "global" (see :class:`ClassQueue`).
    """

    stage = "box_head"

    def __init__(
        self,
        *,
        num_classes: int,
        feature_dim: int,
        targeted_classes: Sequence[int] | None = None,
        image_count=None,
        dataset_name: None | str | Sequence[str] = None,
        max_images: int = 30,
        capacity: int = 60,
        per_class: int = 20,
        mode: str = "recent",
        storage_dtype: torch.dtype | str | None = None,
        sync: str = "local",
    ):
        super().__init__()
        given = [x is not None for x in (targeted_classes, image_count, dataset_name)]
        if sum(given) != 1:
            raise ValueError("ObjectReplay: give exactly one of targeted_classes, image_count, dataset_name")
        if mode not in REPLAY_MODES:
            raise ValueError(f"ObjectReplay: mode must be one of {REPLAY_MODES}, got {mode!r}")
        self.num_classes = int(num_classes)
        self.feature_dim = int(feature_dim)
        self.max_images = int(max_images)
        self.capacity = int(capacity)
        self.per_class = int(per_class)
        self.mode = mode
        self.storage_dtype = resolve_storage_dtype(storage_dtype, "ObjectReplay: storage_dtype")
        self.sync = sync
        if dataset_name is not None and not isinstance(dataset_name, str):
            dataset_name = [str(name) for name in dataset_name]
        self.dataset_name = dataset_name
        self.register_buffer("class_to_slot", torch.full((self.num_classes + 1,), -1, dtype=torch.int64))
        self.register_module("queue", None)
        self._resolved = False
        if targeted_classes is not None:
            given = torch.as_tensor(list(targeted_classes))
            if given.is_floating_point() or given.is_complex() or given.dtype == torch.bool:
                raise TypeError(f"ObjectReplay: targeted_classes must be integer class indices, got {given.tolist()}")
            self._allocate(given.to(torch.int64))
        elif image_count is not None:
            self._allocate(_targeted(image_count, self.max_images))

    # --- targeted classes and storage ----------------------------------------------------------

    def _allocate(self, classes: torch.Tensor):
        device = self.class_to_slot.device
        classes = torch.unique(classes.to(torch.int64)).to(device)  # sorted, no repeats
        outside = classes[(classes < 0) | (classes >= self.num_classes)]
        if outside.numel():
            raise ValueError(
                f"ObjectReplay: targeted classes must lie in [0, {self.num_classes - 1}]; got {outside[:10].tolist()}"
                f"{' ...' if outside.numel() > 10 else ''}"
            )
        class_to_slot = torch.full((self.num_classes + 1,), -1, dtype=torch.int64, device=device)
        class_to_slot[classes] = torch.arange(classes.numel(), device=device)
        self.class_to_slot = class_to_slot
        self.register_buffer("slot_to_class", classes)
        queue = None
        if classes.numel():
            queue = ClassQueue(
                classes.numel(),
                self.capacity,
                {"features": (self.feature_dim,), "proposal_boxes": (4,), "gt_boxes": (4,)},
                storage_dtype=self.storage_dtype,
                sync=self.sync,
            ).to(device)
        self.register_module("queue", queue)
        self._resolved = True
        logger.info(
            "ObjectReplay: %d targeted classes, store %.1f MiB",
            classes.numel(),
            (queue.nbytes if queue is not None else 0) / 2**20,
        )

    def resolve(self):
        """Reads the targeted classes of ``dataset_name`` if not done yet (no-op otherwise)."""
        if not self._resolved:
            self._allocate(_targeted(dataset_class_image_count(self.dataset_name), self.max_images))

    @property
    def targeted_classes(self) -> torch.Tensor:
        """[K] sorted targeted classes (resolves ``dataset_name`` if needed)."""
        self.resolve()
        return self.slot_to_class

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # A checkpoint holding the memory fixes the targeted classes (and the store's size): allocate
        # them before the buffers are copied, so a source built from a dataset name resumes exactly.
        key = prefix + "slot_to_class"
        saved_map = state_dict.get(prefix + "class_to_slot")
        if key not in state_dict and saved_map is not None and bool((saved_map >= 0).any()) and self._resolved:
            # fvcore's checkpointer drops tensors whose shape differs from the model's before they
            # get here: a checkpoint with another number of targeted classes would load half-way
            raise ValueError(
                f"{prefix}: the checkpoint's replay memory targets a different number of classes "
                f"than this model ({self.slot_to_class.numel()}); build the model with the "
                "checkpoint's targeted classes"
            )
        if key in state_dict:
            saved = state_dict[key]
            if not self._resolved or not torch.equal(saved.to(self.slot_to_class.device), self.slot_to_class):
                if self._resolved:
                    logger.warning(
                        "ObjectReplay: the checkpoint targets other classes than this model; "
                        "using the checkpoint's %d classes",
                        saved.numel(),
                    )
                self._allocate(saved.clone())
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # --- one iteration -------------------------------------------------------------------------

    def forward(self, context):
        self.resolve()
        if context.num_classes != self.num_classes:
            raise ValueError(
                f"ObjectReplay built for {self.num_classes} classes, the ROI heads have {context.num_classes}"
            )
        if self.queue is None:
            return None
        proposals = context.proposals
        features = context.box_features
        classes = torch.cat([p.gt_classes for p in proposals]).to(self.class_to_slot.device)
        slots = self.class_to_slot[classes]  # background (C) and untargeted classes: -1
        keep = slots >= 0
        present = torch.unique(slots[keep])
        sample = self.replay(present, dtype=features.dtype)
        rows = keep.to(features.device)
        self.queue.push(
            slots[keep],
            features=features.detach()[rows],
            proposal_boxes=torch.cat([p.proposal_boxes.tensor for p in proposals])[rows],
            gt_boxes=context.roi_gt_boxes()[rows],
        )
        if sample.labels.numel() == 0:
            return None
        device = features.device
        return ExtraRows(
            features=sample.features.to(device),
            labels=self.slot_to_class[sample.labels].to(device),
            proposal_boxes=sample.proposal_boxes.to(device),
            gt_boxes=sample.gt_boxes.to(device),
        )

    @torch.no_grad()
    def replay(self, slots: torch.Tensor, dtype=None):
        """Draws ``per_class`` entries of each queue in ``slots`` ([K'] compact indices); labels of the
        returned :class:`MemorySample` are compact indices too (``slot_to_class`` maps them back)."""
        queue_mode = "random_distinct" if self.mode == "random" else self.mode
        return self.queue.sample(slots, self.per_class, mode=queue_mode, dtype=dtype)

    def extra_repr(self):
        targeted = int(self.slot_to_class.numel()) if self._resolved else f"from {self.dataset_name!r}"
        return (
            f"num_classes={self.num_classes}, targeted={targeted}, max_images={self.max_images}, "
            f"capacity={self.capacity}, per_class={self.per_class}, mode={self.mode!r}"
        )
