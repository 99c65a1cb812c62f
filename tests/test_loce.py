"""LOCE: equilibrium loss, dense box generator, mean-score and MFS state across checkpoints."""
import io
import math

import pytest
import torch

from ltdet2.memory import InstanceFrequency, MeanScore
from ltdet2.modeling import dense_boxes
from ltdet2.modeling.feature_sources import MemoryFeatureSampler
from ltdet2.modeling.losses import EquilibriumLoss, equilibrium_loss


def direct_ebl(logits, labels, scores):
    """Eq. 3-4 of the paper row by row: log(1 + sum_{j != y} exp(z_j - z_y + log(s_j / s_y)))."""
    total = 0.0
    for z, y in zip(logits.tolist(), labels.tolist()):
        inner = sum(math.exp(z[j] - z[y] + math.log(scores[j] / scores[y])) for j in range(len(z)) if j != y)
        total += math.log1p(inner)
    return total / len(labels)


def test_equilibrium_loss_matches_paper_formula():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=generator, dtype=torch.float64) * 3
    labels = torch.tensor([0, 1, 2, 3, 4, 4, 1])
    scores = torch.tensor([0.5, 0.02, 0.3, 1e-3, 0.01], dtype=torch.float64)
    expected = direct_ebl(logits, labels, scores.tolist())
    assert equilibrium_loss(logits, labels, scores).item() == pytest.approx(expected, rel=1e-12)


def test_equal_scores_give_plain_cross_entropy_and_weights_scale_rows():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3, 3, 0])
    scores = torch.full((4,), 0.2)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(equilibrium_loss(logits, labels, scores), ce)
    weights = torch.tensor([1.0, 0, 0, 0, 0, 2.0])
    rows = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert torch.allclose(equilibrium_loss(logits, labels, scores, weights), (rows[0] + 2 * rows[5]) / 6)


def test_equilibrium_loss_is_stable_for_tiny_scores_and_has_correct_gradient():
    logits = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 1])
    scores = torch.tensor([1e-12, 1e-13, 0.5, 0.01], dtype=torch.float64)  # 1e-13 is clamped to 1e-12
    loss = equilibrium_loss(logits, labels, scores)
    assert torch.isfinite(loss)
    assert torch.autograd.gradcheck(lambda z: equilibrium_loss(z, labels, scores), (logits,))
    loss32 = equilibrium_loss(logits.detach().float().requires_grad_(), labels, scores.float())
    loss32.backward()
    assert torch.isfinite(loss32)


def test_equilibrium_loss_module_reads_indicator_and_appends_background():
    frequency = InstanceFrequency([10, 30, 60], normalize="sum")
    loss = EquilibriumLoss(indicator="instance_frequency", background_score=0.01)
    loss.bind_indicators({"instance_frequency": frequency})
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 2, 3])
    expected = equilibrium_loss(logits, labels, torch.tensor([0.1, 0.3, 0.6, 0.01]))
    assert torch.allclose(loss(logits, labels), expected)
    with pytest.raises(RuntimeError, match="indicator 'mean_score' but none was bound"):
        EquilibriumLoss()(logits, labels)


def test_dense_boxes_sign_patterns_magnitudes_order_and_clipping():
    gt = torch.tensor([[20.0, 30.0, 80.0, 90.0], [0.0, 0.0, 12.0, 6.0]])
    boxes = dense_boxes(gt, (100, 100), generator=torch.Generator().manual_seed(0))
    assert boxes.shape == (32, 4)
    first = boxes[:16] - gt[0]  # inside the image: offsets are exactly the jitter
    limits = torch.tensor([60, 60, 60, 60]) / 6.0
    assert (first.abs() <= limits + 1e-5).all()
    signs = torch.sign(first)
    assert len({tuple(s) for s in signs.tolist()}) == 16  # one box per sign pattern
    # box 2 sits at the image corner: clipped to the image
    assert (boxes[16:, :2] >= 0).all() and (boxes[16:, 2] <= 100).all()
    again = dense_boxes(gt, (100, 100), generator=torch.Generator().manual_seed(0))
    assert torch.equal(boxes, again)


def test_mfs_and_mean_scores_survive_a_checkpoint_exactly():
    torch.manual_seed(0)
    source = MemoryFeatureSampler(num_classes=5, feature_shape=(4, 7, 7), capacity=6, num_sampled_classes=2,
                                  per_class=3)
    scores = MeanScore(5)
    labels = torch.tensor([0, 0, 3, 4, 4, 4, 4, 4, 4, 4])
    source.queue.push(labels, features=torch.randn(10, 4, 7, 7), proposal_boxes=torch.rand(10, 4),
                      gt_boxes=torch.rand(10, 4))
    scores.update(torch.tensor([0, 3, 4]), torch.tensor([0.9, 0.2, 0.5]))
    buffer = io.BytesIO()
    torch.save({"source": source.state_dict(), "scores": scores.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer)
    restored, restored_scores = (
        MemoryFeatureSampler(num_classes=5, feature_shape=(4, 7, 7), capacity=6, num_sampled_classes=2, per_class=3),
        MeanScore(5),
    )
    restored.load_state_dict(state["source"])
    restored_scores.load_state_dict(state["scores"])
    for key, value in source.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key
    assert torch.equal(scores.vector(), restored_scores.vector())
    source.bind_indicators({"mean_score": scores}), restored.bind_indicators({"mean_score": restored_scores})
    torch.manual_seed(5)
    a = source.sample_classes()
    torch.manual_seed(5)
    b = restored.sample_classes()
    assert torch.equal(a, b)


def test_equilibrium_loss_stays_finite_with_float16_logits():
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(4)).half()
    labels = torch.tensor([0, 1, 2, 0])
    scores = torch.tensor([1e-10, 0.5, 0.01])  # 1e-10 is 0 in float16
    loss = equilibrium_loss(logits, labels, scores)
    assert loss.dtype == torch.float16 and torch.isfinite(loss)
    expected = equilibrium_loss(logits.float(), labels, scores)
    assert loss.float().item() == pytest.approx(expected.item(), rel=1e-3)
