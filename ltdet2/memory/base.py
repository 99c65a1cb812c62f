"""Common base of the memory stores and indicators: state in buffers with fixed dtypes."""

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["StateModule", "MemorySample", "as_label_tensor"]


def check_choice(name: str, value: str, choices) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming the option."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


class StateModule(nn.Module):
    """An ``nn.Module`` whose whole state is registered buffers with a fixed dtype.

    The buffers are saved in ``state_dict``, restored exactly by ``load_state_dict`` and moved by
    ``.to(device)`` / ``.cuda()``. Dtype casts of the module (``.half()``, ``.double()``,
    ``.to(torch.float16)``) do NOT change them: a float16 feature store stays float16 under a float32
    model, and float64 accumulators or int64 counters never lose precision.
    """

    def _apply(self, fn, recurse=True):
        if recurse:
            for module in self.children():
                module._apply(fn)
        for name, buf in self._buffers.items():
            if buf is None:
                continue
            # Probe with an empty tensor to learn whether fn casts; if it does, keep the dtype and
            # take only the device, so a cast never materialises a copy of a large store.
            probe = fn(torch.empty(0, dtype=buf.dtype, device=buf.device))
            if probe.dtype == buf.dtype:
                self._buffers[name] = fn(buf)
            else:
                self._buffers[name] = buf.to(device=probe.device)
        if self._parameters:
            raise RuntimeError(f"{type(self).__name__} holds no parameters, found {list(self._parameters)}")
        return self

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    @property
    def device(self) -> torch.device:
        return next(iter(self._buffers.values())).device

    def _check_labels(self, labels, num_valid: int, what: str, *, allow_background: bool = False):
        """Labels as an int64 tensor on this module's device; errors name the offending values.

        Valid labels are ``0 .. num_valid-1``, plus the background index ``num_valid`` when
        ``allow_background``.
        """
        labels = as_label_tensor(labels, self.device)
        high = num_valid + 1 if allow_background else num_valid
        if labels.numel() and ((labels < 0) | (labels >= high)).any():  # one host sync
            bad = labels[(labels < 0) | (labels >= high)].unique()[:10].tolist()
            raise ValueError(
                f"{type(self).__name__}.{what}: labels must lie in [0, {high - 1}] "
                f"({num_valid} classes{', background = ' + str(num_valid) if allow_background else ''}); "
                f"got {bad}"
            )
        return labels


def as_label_tensor(labels: torch.Tensor | Sequence[int], device: torch.device) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels, dtype=torch.int64)
    labels = labels.to(device)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1:
        raise ValueError(f"labels must be a 1-D integer tensor, got dtype {labels.dtype} shape {tuple(labels.shape)}")
    return labels.long()


class MemorySample:
    """Rows drawn from a store.

    Attributes:
        labels: ``[S]`` int64 class of each row.
        fields: name -> ``[S, *shape]`` tensor; also readable as attributes (``sample.features``)
            and items (``sample["features"]``).
        skipped: ``[K']`` int64, the requested classes that had nothing to draw from (in request
            order, repeats kept).
    """

    __slots__ = ("labels", "fields", "skipped")

    def __init__(self, labels: torch.Tensor, fields: dict, skipped: torch.Tensor):
        self.labels = labels
        self.fields = fields
        self.skipped = skipped

    def __getattr__(self, name):
        try:
            return object.__getattribute__(self, "fields")[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name):
        return self.fields[name]

    def __len__(self):
        return self.labels.numel()

    def __repr__(self):
        shapes = {k: tuple(v.shape) for k, v in self.fields.items()}
        return f"MemorySample(rows={len(self)}, fields={shapes}, skipped={self.skipped.tolist()})"
