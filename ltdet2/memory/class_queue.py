"""Per-class ring buffers: the store behind RIO's object replay and LOCE's MFS memory."""

from collections.abc import Mapping, Sequence

import torch

from .base import MemorySample, StateModule
from .sync import all_gather_rows, check_sync, shared_generator

__all__ = ["ClassQueue", "STORAGE_DTYPES", "resolve_storage_dtype"]

_CAST_BLOCK_BYTES = 4 << 20

SAMPLE_MODES = ("random", "random_distinct", "recent")

FieldSpec = int | Sequence[int] | tuple[Sequence[int], torch.dtype]

# a reduced-precision store by name, as a config writes it (a LazyConfig's config.yaml cannot hold a torch.dtype);
# "" is no reduction (the yacs default)
STORAGE_DTYPES = {"": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_storage_dtype(value, where="storage_dtype"):
    """The torch dtype (or None) of a store's ``storage_dtype``: None, a name of :data:`STORAGE_DTYPES` or one of
    its dtypes."""
    if value is None or (isinstance(value, torch.dtype) and value in STORAGE_DTYPES.values()):
        return value
    if isinstance(value, str) and value in STORAGE_DTYPES:
        return STORAGE_DTYPES[value]
    raise ValueError(f"{where}={value!r}: expected None or one of {tuple(STORAGE_DTYPES)} (or their torch dtypes)")


def _parse_field(name: str, spec) -> tuple[tuple[int, ...], torch.dtype]:
    """``spec`` is a shape (``1024``, ``(256, 7, 7)``, ``()``) or ``(shape, dtype)``."""
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], torch.dtype):
        shape, dtype = spec
    else:
        shape, dtype = spec, torch.float32
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"field {name!r}: shape must be positive ints, got {spec!r}")
    return shape, dtype


class ClassQueue(StateModule):
    """``num_classes`` ring buffers of ``capacity`` entries each, one preallocated tensor per field.

    Field ``name`` is stored in the buffer ``store_<name>`` of shape ``[num_classes, capacity, *shape]``;
    ``write_ptr[c]`` is the slot the next entry of class ``c`` goes to and ``fill_counts[c]`` how many
    slots hold data. While a queue is not full its entries are slots ``0 .. fill-1``; once full, the
    oldest entry is at ``write_ptr``. Labels are foreground classes ``0 .. num_classes-1``.

    Args:
        num_classes: C.
        capacity: entries per class (M).
        fields: name -> per-entry shape, or ``(shape, dtype)``; dtype defaults to float32 and is the
            dtype ``sample`` returns (the caller's compute dtype).
        storage_dtype: if given, floating fields are stored in this dtype (``"float16"`` / ``torch.float16`` to
            halve LOCE's pre-FC memory, or ``"bfloat16"``; the name is what a config holds). Integer fields keep
            their dtype.
        sync: ``"local"`` or ``"global"`` (see :mod:`ltdet2.memory.sync`).

    Push and sample are vectorized: no Python loop over classes or entries.
    """

    def __init__(
        self,
        num_classes: int,
        capacity: int,
        fields: Mapping[str, FieldSpec],
        *,
        storage_dtype: torch.dtype | str | None = None,
        sync: str = "local",
    ):
        super().__init__()
        if num_classes <= 0 or capacity <= 0:
            raise ValueError(f"num_classes and capacity must be positive, got {num_classes}, {capacity}")
        if not fields:
            raise ValueError("ClassQueue needs at least one field")
        self.num_classes = int(num_classes)
        self.capacity = int(capacity)
        self.sync = check_sync(sync)
        storage_dtype = self.storage_dtype = resolve_storage_dtype(storage_dtype, "ClassQueue: storage_dtype")
        self.field_shapes: dict[str, tuple[int, ...]] = {}
        self.field_dtypes: dict[str, torch.dtype] = {}
        for name, spec in fields.items():
            if not name.isidentifier() or name in ("labels", "fields", "skipped"):
                raise ValueError(f"invalid field name {name!r}")
            shape, dtype = _parse_field(name, spec)
            self.field_shapes[name] = shape
            self.field_dtypes[name] = dtype
            stored = storage_dtype if (storage_dtype is not None and dtype.is_floating_point) else dtype
            self.register_buffer(f"store_{name}", torch.zeros((self.num_classes, self.capacity) + shape, dtype=stored))
        self.register_buffer("write_ptr", torch.zeros(self.num_classes, dtype=torch.int64))
        self.register_buffer("fill_counts", torch.zeros(self.num_classes, dtype=torch.int64))

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(self.field_shapes)

    def storage(self, name: str) -> torch.Tensor:
        """The ``[C, M, *shape]`` buffer of field ``name`` (physical slot order)."""
        return self._buffers[f"store_{name}"]

    @property
    def counts(self) -> torch.Tensor:
        """``[C]`` int64 fill level of every class queue (a copy)."""
        return self.fill_counts.clone()

    def reset(self):
        self.write_ptr.zero_()
        self.fill_counts.zero_()

    @torch.no_grad()
    def push(self, labels: torch.Tensor, **fields: torch.Tensor) -> None:
        """Enqueue a batch: ``labels [N]`` and one ``[N, *shape]`` tensor per field.

        Entries of a class go in batch order; the oldest entries are overwritten first. At most
        ``capacity`` entries per class are written per push: if more arrive, the last ``capacity`` of
        them (in batch order) are kept, as if pushed one by one (the official LOCE code keeps the first
        ``capacity`` of such a batch; ours is the queue's own order). Under ``global`` the batches of all
        ranks are pushed, rank 0's first (a collective: every rank must call it).
        """
        if set(fields) != set(self.field_shapes):
            missing = sorted(set(self.field_shapes) - set(fields))
            extra = sorted(set(fields) - set(self.field_shapes))
            raise ValueError(f"ClassQueue.push: missing fields {missing}, unexpected fields {extra}")
        labels = self._check_labels(labels, self.num_classes, "push")
        names = self.field_names
        values = []
        for name in names:
            value = torch.as_tensor(fields[name])
            expected = (labels.numel(),) + self.field_shapes[name]
            if tuple(value.shape) != expected:
                raise ValueError(f"ClassQueue.push: field {name!r} has shape {tuple(value.shape)}, expected {expected}")
            values.append(value if value.device == self.device else value.to(self.device))
        if self.sync == "global":
            values = [v.to(device=self.device, dtype=self.storage(n).dtype) for n, v in zip(names, values)]
            labels, *values = all_gather_rows([labels] + values)

        if labels.numel() == 0:
            return
        counts, order, sorted_labels, rank_in_class = self._ranks_among_kept(labels)
        keep = rank_in_class >= 0
        slots = (self.write_ptr[sorted_labels] + rank_in_class) % self.capacity
        flat_slots = torch.full_like(labels, -1)
        flat_slots[order] = torch.where(keep, sorted_labels * self.capacity + slots, -1)

        # On the CPU, write in blocks of rows, selecting the kept rows block by block: temporaries
        # stay cache-sized instead of as large as the batch (there a large temporary costs more in page
        # faults than the copy itself), for the dtype cast as for dropping rows past the cap. On a GPU,
        # one write of the whole batch: each block would cost kernel launches and a host sync.
        keep_all = bool(keep.all())
        for name, value in zip(names, values):
            store = self.storage(name).view((-1,) + self.field_shapes[name])
            if keep_all and value.dtype == store.dtype and value.device == store.device:
                store.index_copy_(0, flat_slots, value)
                continue
            if store.device.type != "cpu":
                if not keep_all:
                    kept = (flat_slots >= 0).nonzero().squeeze(1)
                    value, flat_slots_kept = value[kept], flat_slots[kept]
                else:
                    flat_slots_kept = flat_slots
                store.index_copy_(0, flat_slots_kept, value.to(device=store.device, dtype=store.dtype))
                continue
            block = max(1, _CAST_BLOCK_BYTES // max(1, value[0].numel() * value.element_size()))
            for start in range(0, value.shape[0], block):
                rows, slots = value[start : start + block], flat_slots[start : start + block]
                if not keep_all:
                    kept = slots >= 0
                    rows, slots = rows[kept], slots[kept]
                store.index_copy_(0, slots, rows.to(device=store.device, dtype=store.dtype))

        written = counts.clamp(max=self.capacity)
        self.write_ptr.add_(written).remainder_(self.capacity)
        self.fill_counts.add_(written).clamp_(max=self.capacity)

    def _ranks_among_kept(self, labels):
        """Per-class bookkeeping of a push: ``counts [C]``, the stable ``order`` sorting ``labels`` by
        class, the sorted labels, and each sorted row's rank among the rows of its class that the push
        keeps (the last ``capacity``), negative for rows it drops."""
        counts = torch.bincount(labels, minlength=self.num_classes)
        order = torch.argsort(labels, stable=True)
        sorted_labels = labels[order]
        starts = counts.cumsum(0) - counts
        rank_in_class = torch.arange(labels.numel(), device=labels.device) - starts[sorted_labels]
        rank_in_class -= (counts - self.capacity).clamp_(min=0)[sorted_labels]
        return counts, order, sorted_labels, rank_in_class

    @torch.no_grad()
    def kept_by_push(self, labels: torch.Tensor) -> torch.Tensor:
        """``[N]`` bool: the rows a (local) push of ``labels`` would write, the last ``capacity`` of each
        class in batch order. Pushing only those rows, in order and in any number of consecutive
        pushes, leaves the queue as one push of all of them."""
        labels = self._check_labels(labels, self.num_classes, "kept_by_push")
        kept = torch.zeros(labels.numel(), dtype=torch.bool, device=labels.device)
        if labels.numel():
            _, order, _, rank_in_class = self._ranks_among_kept(labels)
            kept[order] = rank_in_class >= 0
        return kept

    @torch.no_grad()
    def sample(
        self,
        classes: torch.Tensor,
        per_class: int,
        *,
        mode: str = "random",
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
    ) -> MemorySample:
        """Draw entries of ``classes`` (``[K]`` int64, repeats allowed).

        ``mode="random"``: ``per_class`` entries per class, uniformly with replacement among the
        stored ones (LOCE's MFS). ``mode="random_distinct"``: ``min(per_class, fill)`` distinct entries,
        uniformly without replacement (all stored entries, in random order, when ``fill <= per_class``;
        RIO's official random replay). ``mode="recent"``: the ``min(per_class, fill)`` most recent
        entries, newest first.
        Rows come grouped by class in request order. Empty classes are left out and reported in
        ``skipped``. Floating fields are returned in their declared dtype, or ``dtype`` if given.
        Under ``global`` with ``generator=None`` a seed is broadcast from rank 0 (a collective), so
        all ranks draw the same rows; with a generator, seed it identically on every rank.
        """
        if mode not in SAMPLE_MODES:
            raise ValueError(f"mode must be one of {SAMPLE_MODES}, got {mode!r}")
        if not isinstance(per_class, int) or per_class < 0:
            raise ValueError(f"per_class must be a non-negative int, got {per_class!r}")
        classes = self._check_labels(classes, self.num_classes, "sample")
        fill = self.fill_counts[classes]
        present = fill > 0
        skipped = classes[~present]
        classes, fill = classes[present], fill[present]

        if mode == "random":
            uniform = self._uniform((classes.numel(), per_class), generator)
            slots = torch.minimum((uniform * fill[:, None]).long(), fill[:, None] - 1)
            flat_slots = (classes[:, None] * self.capacity + slots).flatten()
            labels = classes.repeat_interleave(per_class)
        elif mode == "random_distinct":
            # a random key per slot, +inf past the fill; the smallest keys are a uniform draw without
            # replacement among the stored slots
            take = min(per_class, self.capacity)
            keys = self._uniform((classes.numel(), self.capacity), generator)
            keys.masked_fill_(torch.arange(self.capacity, device=self.device)[None, :] >= fill[:, None], float("inf"))
            slots = keys.topk(take, dim=1, largest=False).indices
            valid = torch.arange(take, device=self.device)[None, :] < fill[:, None]
            flat_slots = (classes[:, None] * self.capacity + slots)[valid]
            labels = classes[:, None].expand(-1, take)[valid]
        else:
            age = torch.arange(per_class, device=self.device)
            slots = (self.write_ptr[classes][:, None] - 1 - age).remainder(self.capacity)
            valid = age[None, :] < fill[:, None]
            flat_slots = (classes[:, None] * self.capacity + slots)[valid]
            labels = classes[:, None].expand(-1, per_class)[valid]

        out = {}
        for name in self.field_names:
            store = self.storage(name).view((-1,) + self.field_shapes[name])
            rows = store.index_select(0, flat_slots)
            out_dtype = self.field_dtypes[name]
            if dtype is not None and out_dtype.is_floating_point:
                out_dtype = dtype
            out[name] = rows.to(out_dtype)
        return MemorySample(labels, out, skipped)

    def _uniform(self, shape, generator):
        """U(0, 1) float64 of ``shape`` on this module's device, from ``generator`` (or the seed shared
        under ``global``, see :func:`shared_generator`)."""
        generator = shared_generator(self.sync, generator, self.device)
        rand_device = generator.device if generator is not None else self.device
        return torch.rand(shape, generator=generator, device=rand_device, dtype=torch.float64).to(self.device)

    def extra_repr(self) -> str:
        fields = ", ".join(f"{n}={self.field_shapes[n]}" for n in self.field_names)
        return (
            f"num_classes={self.num_classes}, capacity={self.capacity}, fields=({fields}), "
            f"storage_dtype={self.storage_dtype}, sync={self.sync!r}"
        )
