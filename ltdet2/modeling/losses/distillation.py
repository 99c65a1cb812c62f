"""Distillation losses between a trainable student and a frozen teacher (step-wise knowledge transfer, LST).

Every loss detaches the teacher's tensors: gradients reach only the student's.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

EMPTY_MODES = ("exclude", "zero")
LOGIT_MODES = ("l2", "squared")


def masked_feature_distillation(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    *,
    empty: str = "exclude",
) -> torch.Tensor:
    """Squared feature difference inside masks (step-wise paper, Eq. 3).

    Per (level, image): ``sum over masked positions and channels of (s - t)^2 / (2 N)``, N = that level's and
    image's masked positions (pixels, not pixels x channels); then the mean over the (level, image) pairs.

    Args:
        student, teacher: per level, ``[B, C, H, W]`` features (the teacher's are detached).
        masks: per level, ``[B, H, W]`` bool.
        empty: pairs whose mask is empty are left out of the mean (``"exclude"``, ours: the paper's
            ``1 / (2 N_head)`` is undefined there) or count as 0 in it (``"zero"``, the official code's).

    Returns:
        scalar; 0 (still depending on the student's graph) when no pair has a masked position.
    """
    if empty not in EMPTY_MODES:
        raise ValueError(f"masked_feature_distillation: empty={empty!r}; expected one of {EMPTY_MODES}")
    if not (len(student) == len(teacher) == len(masks)) or not student:
        raise ValueError(
            "masked_feature_distillation: student, teacher and masks need the same (non-zero) number of levels; "
            f"got {len(student)}, {len(teacher)}, {len(masks)}"
        )
    sums, counts = [], []
    for level, (s, t, m) in enumerate(zip(student, teacher, masks)):
        if s.shape != t.shape or m.shape != (s.shape[0], *s.shape[2:]):
            raise ValueError(
                f"masked_feature_distillation: level {level} has student {tuple(s.shape)}, teacher "
                f"{tuple(t.shape)} and mask {tuple(m.shape)}; expected [B, C, H, W] twice and [B, H, W]"
            )
        m = m.to(dtype=s.dtype)
        squared = (s - t.detach()).pow(2).sum(dim=1)  # [B, H, W]
        sums.append((squared * m).flatten(1).sum(dim=1))
        counts.append(m.flatten(1).sum(dim=1))
    sums, counts = torch.cat(sums), torch.cat(counts)  # [L * B]
    per_pair = sums / (2 * counts.clamp(min=1))
    if empty == "zero":
        return per_pair.mean()
    non_empty = counts > 0
    if not non_empty.any():
        return sums.sum() * 0.0
    return per_pair[non_empty].mean()


def kl_distillation(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    columns: torch.Tensor | Sequence[int] | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Hinton's KL distillation on a subset of columns (step-wise paper, Eq. 4).

    Softmax over ``columns`` only (the other columns, e.g. background and tail classes, take no part), then
    ``KL(p_teacher || p_student)`` summed over the columns, the mean over rows, times ``temperature ** 2``.

    Args:
        student_logits, teacher_logits: ``[N, K]`` (the teacher's are detached).
        columns: ``[K']`` indices of the columns kept; None = all K.
        temperature: T, dividing both logits (1: the step-wise official code's).

    Returns:
        scalar; 0 (still depending on the student's graph) for N = 0.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"kl_distillation: student {tuple(student_logits.shape)} and teacher "
            f"{tuple(teacher_logits.shape)} logits must both be [N, K]"
        )
    if columns is not None:
        columns = torch.as_tensor(columns, dtype=torch.long, device=student_logits.device)
        student_logits, teacher_logits = student_logits[:, columns], teacher_logits[:, columns]
    if student_logits.shape[0] == 0 or student_logits.shape[1] == 0:
        return student_logits.sum() * 0.0
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True)
    return kl / student_logits.shape[0] * temperature**2


def logit_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mode: str = "l2") -> torch.Tensor:
    """Distance between student and teacher logits of the same rows (LST).

    Args:
        student_logits, teacher_logits: ``[N, K]`` (the teacher's are detached).
        mode: ``"l2"``: the mean over rows of the L2 distance (LST paper); ``"squared"``: the squared L2
            distance summed over columns, mean over rows (LST official code).

    Returns:
        scalar; 0 (still depending on the student's graph) for N = 0.
    """
    if mode not in LOGIT_MODES:
        raise ValueError(f"logit_distillation: mode={mode!r}; expected one of {LOGIT_MODES}")
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"logit_distillation: student {tuple(student_logits.shape)} and teacher "
            f"{tuple(teacher_logits.shape)} logits must both be [N, K]"
        )
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    difference = student_logits - teacher_logits.detach()
    if mode == "squared":
        return difference.pow(2).sum(dim=1).mean()
    return torch.linalg.vector_norm(difference, dim=1).mean()
