"""Distillation losses against direct loops; distillation terms; the teacher-student meta-architecture."""

import pytest
import torch

from ltdet2.modeling.losses import kl_distillation, logit_distillation, masked_feature_distillation

# --- losses ----------------------------------------------------------------------------------------


def _toy_pyramid(seed=0, batch=2, channels=3, sizes=((8, 10), (4, 5))):
    generator = torch.Generator().manual_seed(seed)
    student = [torch.randn(batch, channels, h, w, generator=generator, requires_grad=True) for h, w in sizes]
    teacher = [torch.randn(batch, channels, h, w, generator=generator) for h, w in sizes]
    masks = [torch.rand(batch, h, w, generator=generator) > 0.6 for h, w in sizes]
    return student, teacher, masks


def _masked_feature_loop(student, teacher, masks, empty):
    """Direct loop over levels, images, pixels and channels."""
    terms = []
    for s, t, m in zip(student, teacher, masks):
        for b in range(s.shape[0]):
            total, n = 0.0, 0
            for y in range(s.shape[2]):
                for x in range(s.shape[3]):
                    if m[b, y, x]:
                        n += 1
                        for c in range(s.shape[1]):
                            total += float(s[b, c, y, x] - t[b, c, y, x]) ** 2
            if n > 0:
                terms.append(total / (2 * n))
            elif empty == "zero":
                terms.append(0.0)
    return sum(terms) / len(terms)


@pytest.mark.parametrize("empty", ["exclude", "zero"])
def test_masked_feature_distillation_matches_loop_with_an_empty_mask(empty):
    student, teacher, masks = _toy_pyramid()
    masks[1][0] = False  # level 1, image 0: empty
    loss = masked_feature_distillation(student, teacher, masks, empty=empty)
    assert loss.item() == pytest.approx(_masked_feature_loop(student, teacher, masks, empty), rel=1e-5)
    if empty == "exclude":  # 3 of the 4 (level, image) pairs count
        with_zero = masked_feature_distillation(student, teacher, masks, empty="zero")
        assert with_zero.item() == pytest.approx(loss.item() * 3 / 4, rel=1e-5)


def test_masked_feature_distillation_gradient_only_to_the_student_and_zero_without_masks():
    student, teacher, masks = _toy_pyramid()
    teacher = [t.requires_grad_() for t in teacher]
    masked_feature_distillation(student, teacher, masks).backward()
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None for s in student)
    # outside the masks the student gets no gradient
    assert all((s.grad.abs().sum(1)[~m] == 0).all() for s, m in zip(student, masks))

    empty = [torch.zeros_like(m) for m in masks]
    loss = masked_feature_distillation(student, teacher, empty)
    assert loss.item() == 0.0 and loss.requires_grad
    assert masked_feature_distillation(student, teacher, empty, empty="zero").item() == 0.0


def _kl_loop(student, teacher, columns, temperature):
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        s = torch.tensor([s_row[c] for c in columns]) / temperature
        t = torch.tensor([t_row[c] for c in columns]) / temperature
        p_s, p_t = torch.softmax(s, 0), torch.softmax(t, 0)
        total += sum(float(p_t[k] * (p_t[k].log() - p_s[k].log())) for k in range(len(columns)))
    return total / len(student) * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_distillation_matches_loop_on_chosen_columns(temperature):
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(5, 7, generator=generator, requires_grad=True)
    teacher = torch.randn(5, 7, generator=generator, requires_grad=True)
    columns = [0, 2, 5]
    loss = kl_distillation(student, teacher, columns, temperature=temperature)
    assert loss.item() == pytest.approx(_kl_loop(student, teacher, columns, temperature), rel=1e-5)
    # all columns by default
    assert kl_distillation(student, teacher).item() == pytest.approx(
        _kl_loop(student, teacher, range(7), 1.0), rel=1e-5
    )
    loss.backward()
    assert teacher.grad is None
    assert (student.grad[:, [1, 3, 4, 6]] == 0).all() and (student.grad[:, columns] != 0).all()
    assert kl_distillation(teacher.detach(), teacher.detach(), columns).item() == pytest.approx(0.0, abs=1e-7)


def test_logit_distillation_modes():
    student = torch.tensor([[3.0, 4.0], [0.0, 1.0]], requires_grad=True)
    teacher = torch.zeros(2, 2, requires_grad=True)
    assert logit_distillation(student, teacher).item() == pytest.approx((5.0 + 1.0) / 2)
    assert logit_distillation(student, teacher, mode="squared").item() == pytest.approx((25.0 + 1.0) / 2)
    logit_distillation(student, teacher).backward()
    assert teacher.grad is None
    with pytest.raises(ValueError, match="mode"):
        logit_distillation(student, teacher, mode="l1")
