"""BACL's sigmoid classifier with a background channel: its test-time scoring and its loss (paper Eq. 2-5)."""

import torch
import torch.nn.functional as F

__all__ = ["sigmoid_background_probs", "sigmoid_background_loss", "one_hot_targets", "compute_dtype"]


def compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """At least float32 (under AMP, float16 BCE sums and log-ratios lose too much)."""
    return torch.promote_types(logits.dtype, torch.float32)


def sigmoid_background_probs(logits: torch.Tensor) -> torch.Tensor:
    """Test-time class probabilities of a sigmoid classifier whose last channel is background (BACL Eq. 5).

    Args:
        logits: [N, C+1], background column C.

    Returns:
        [N, C+1]: ``sigmoid(z_j) * (1 - sigmoid(z_C))`` for the C foreground classes and ``sigmoid(z_C)``
        in the last column (which Detectron2's inference drops, as it drops softmax's background).
    """
    foreground, background = logits[:, :-1], logits[:, -1:]
    # 1 - sigmoid(z) == sigmoid(-z), without the cancellation for large z
    return torch.cat([foreground.sigmoid() * torch.sigmoid(-background), background.sigmoid()], dim=1)


def one_hot_targets(labels: torch.Tensor, num_columns: int, dtype: torch.dtype) -> torch.Tensor:
    """[N, num_columns] one-hot rows: 1 on each row's label (background rows: on the background column C)."""
    return F.one_hot(labels, num_columns).to(dtype)


def sigmoid_background_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy over all C+1 channels against the one-hot label, summed, divided by N (Eq. 2).

    A background row (label C) has target 1 on the background channel C and 0 elsewhere; a foreground
    row of class i has target 1 on channel i and 0 elsewhere, background channel included. (Detectron2's
    ``use_sigmoid_ce`` is another classifier: it gives background rows all-zero targets and never
    trains the last column.)

    Args:
        logits: [N, C+1] classification logits, background column C.
        labels: [N] int64 in [0, C].
        weights: optional [N] per-row weights: the loss is ``sum_n w_n * sum_c BCE_nc / N``.

    Returns:
        scalar in ``logits``' dtype (0 for N == 0, still connected to ``logits``).
    """
    if logits.numel() == 0:
        return logits.sum() * 0.0
    dtype = compute_dtype(logits)
    logits32 = logits.to(dtype)
    targets = one_hot_targets(labels, logits.shape[1], dtype)
    per_row = F.binary_cross_entropy_with_logits(logits32, targets, reduction="none").sum(dim=1)
    if weights is not None:
        per_row = per_row * weights.to(dtype)
    return (per_row.sum() / logits.shape[0]).to(logits.dtype)
