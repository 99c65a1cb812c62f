"""Per-class feature mean and variance: the store behind BACL's feature hallucination (FHM)."""

import torch

from .base import MemorySample, StateModule
from .sync import all_reduce_sum, check_sync, is_global, shared_generator

__all__ = ["PrototypeBank"]


class PrototypeBank(StateModule):
    """Running per-class mean (prototype) and per-dimension variance of ``dim``-d features.

    Convention: ``momentum`` is the weight of the OLD statistic, as BACL's beta (Eq. 11):
    ``stat <- momentum * stat + (1 - momentum) * batch_stat``, so BACL's beta=0.9 is
    ``momentum=0.9`` (the opposite of ``nn.BatchNorm``'s ``momentum``). The first batch that contains a
    class copies its batch statistics. Batch variance is the population variance (divide by n;
    ``unbiased=False``, the default) or, with ``unbiased=True`` (BACL's official code), the unbiased one
    (divide by n - 1 when n > 1); either way a class seen once in a batch has variance 0 there. BACL's
    paper writes ``sigma`` for the variance in Eq. 11 and multiplies ``eps`` by ``sigma`` in Eq. 13;
    ``sample`` uses the standard deviation ``sqrt(var)`` (the reparametrisation trick).

    Buffers: ``means [C, dim]``, ``variances [C, dim]`` (float32 unless ``dtype``), ``seen [C]`` bool.
    Under ``global`` the batch statistics are those of the union of all ranks' batches.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        momentum: float = 0.9,
        *,
        dtype: torch.dtype = torch.float32,
        sync: str = "local",
        unbiased: bool = False,
    ):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.momentum = float(momentum)
        self.sync = check_sync(sync)
        self.unbiased = bool(unbiased)
        self.register_buffer("means", torch.zeros(self.num_classes, self.dim, dtype=dtype))
        self.register_buffer("variances", torch.zeros(self.num_classes, self.dim, dtype=dtype))
        self.register_buffer("seen", torch.zeros(self.num_classes, dtype=torch.bool))

    def reset(self):
        self.means.zero_()
        self.variances.zero_()
        self.seen.zero_()

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Fold in ``features [N, dim]`` of foreground classes ``labels [N]``.

        Under ``global`` this is a collective (every rank calls it, possibly with N=0).
        """
        labels = self._check_labels(labels, self.num_classes, "update")
        if features.dim() != 2 or features.shape != (labels.numel(), self.dim):
            raise ValueError(
                f"PrototypeBank.update: features must be [{labels.numel()}, {self.dim}], got {tuple(features.shape)}"
            )
        features = features.detach().to(device=self.device, dtype=self.means.dtype)
        sync = is_global(self.sync)
        if labels.numel() == 0 and not sync:
            return
        if sync:  # dense over all classes: the ranks' class sets differ
            classes, inverse = torch.arange(self.num_classes, device=self.device), labels
        else:  # only the classes present in the batch
            classes, inverse = torch.unique(labels, return_inverse=True)
        counts = torch.bincount(inverse, minlength=classes.numel()).to(features.dtype)
        sums = features.new_zeros(classes.numel(), self.dim).index_add_(0, inverse, features)
        if sync:
            # one reduction for counts and sums; a second for the squares around the global mean
            packed = all_reduce_sum(torch.cat([counts[:, None], sums], dim=1))
            counts, sums = packed[:, 0], packed[:, 1:]
        batch_means = sums / counts.clamp(min=1)[:, None]
        centered = features - batch_means[inverse]
        sq_sums = features.new_zeros(classes.numel(), self.dim).index_add_(0, inverse, centered * centered)
        if sync:
            all_reduce_sum(sq_sums)
        divisor = (counts - 1 if self.unbiased else counts).clamp(min=1)
        batch_vars = sq_sums / divisor[:, None]

        index = classes
        if sync:  # dense over all classes: keep those some rank saw (locally every class in `classes` is present)
            present = (counts > 0).nonzero().squeeze(1)
            index, batch_means, batch_vars = classes[present], batch_means[present], batch_vars[present]
        keep = self.seen[index].to(features.dtype)[:, None] * self.momentum  # 0 for a class's first batch
        self.means[index] = keep * self.means[index] + (1 - keep) * batch_means
        self.variances[index] = keep * self.variances[index] + (1 - keep) * batch_vars
        self.seen[index] = True

    @torch.no_grad()
    def sample(
        self,
        classes: torch.Tensor,
        per_class: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
    ) -> MemorySample:
        """Hallucinate ``per_class`` features ``mean + eps * std`` (eps ~ N(0, 1)) per class.

        ``classes [K]`` int64, repeats allowed; classes never updated are skipped and reported.
        Returns a :class:`MemorySample` with ``labels [S]`` and ``features [S, dim]``.
        """
        if not isinstance(per_class, int) or per_class < 0:
            raise ValueError(f"per_class must be a non-negative int, got {per_class!r}")
        classes = self._check_labels(classes, self.num_classes, "sample")
        seen = self.seen[classes]
        skipped, classes = classes[~seen], classes[seen]
        generator = shared_generator(self.sync, generator, self.device)
        rand_device = generator.device if generator is not None else self.device
        eps = torch.randn(
            (classes.numel(), per_class, self.dim), generator=generator, device=rand_device, dtype=self.means.dtype
        ).to(self.device)
        features = self.means[classes][:, None] + eps * self.variances[classes].sqrt()[:, None]
        features = features.reshape(-1, self.dim)
        if dtype is not None:
            features = features.to(dtype)
        return MemorySample(classes.repeat_interleave(per_class), {"features": features}, skipped)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dim={self.dim}, momentum={self.momentum}, sync={self.sync!r}, "
            f"unbiased={self.unbiased}"
        )
