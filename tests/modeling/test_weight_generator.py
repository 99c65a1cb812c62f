"""LST's meta weight generator (Eq. 3, Gidaris & Komodakis' attention design), its episodic training term over a
DistillationContext and the phase-end step that writes the generated weights into the classifier."""

import pytest
import torch
import torch.nn.functional as F

from ltdet2.modeling.weight_generator import MetaWeightGenerator

D, B = 8, 5


@pytest.fixture
def generator():
    torch.manual_seed(0)
    g = MetaWeightGenerator(D, B)
    with torch.no_grad():  # gains away from their init of 1, so that a and b are tested
        g.feature_gain.copy_(torch.linspace(0.5, 1.5, D))
        g.attention_gain.copy_(torch.linspace(2.0, 0.2, D))
    return g


def test_init_and_attention_sums_to_one(generator):
    torch.manual_seed(1)
    g = MetaWeightGenerator(D, B)
    assert torch.allclose(g.query.weight, torch.eye(D), atol=0.005) and not torch.equal(g.query.weight, torch.eye(D))
    assert torch.equal(g.query.bias, torch.zeros(D))
    assert float(g.attention_scale) == 10.0 and isinstance(g.attention_scale, torch.nn.Parameter)
    assert torch.equal(g.feature_gain, torch.ones(D)) and torch.equal(g.attention_gain, torch.ones(D))
    m = generator.attention(torch.randn(7, D))
    assert m.shape == (7, B) and (m > 0).all()
    assert torch.allclose(m.sum(1), torch.ones(7), atol=1e-6)


def test_eq3_against_manual_computation(generator):
    torch.manual_seed(2)
    x, wb = torch.randn(4, D), torch.randn(B, D)
    got = generator(x, wb)
    for n in range(4):  # one RoI at a time, written out
        xn = x[n] / x[n].norm()
        q = generator.query.weight @ xn + generator.query.bias
        cos = torch.stack([q @ k / (q.norm() * k.norm()) for k in generator.keys])
        m = torch.exp(10.0 * cos) / torch.exp(10.0 * cos).sum()
        attended = sum(m[j] * wb[j] / wb[j].norm() for j in range(B))
        expected = generator.feature_gain * xn + generator.attention_gain * attended
        assert torch.allclose(got[n], expected, atol=1e-5), n


def test_class_average():
    w = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 7.0]])
    mean, counts = MetaWeightGenerator.class_average(w, torch.tensor([2, 0, 2, 2]), 4)
    assert counts.tolist() == [1, 0, 3, 0]
    assert torch.equal(mean, torch.tensor([[3.0, 2.0], [0.0, 0.0], [13 / 3, 11 / 3], [0.0, 0.0]]))


def test_bad_shapes(generator):
    with pytest.raises(ValueError, match=r"features must be \[N, 8\], got \[3, 7\]"):
        generator.attention(torch.randn(3, 7))
    with pytest.raises(ValueError, match=r"base_weights must be \[5, 8\].*got \[4, 8\]"):
        generator(torch.randn(3, D), torch.randn(4, D))


def test_gradients_reach_every_parameter(generator):
    x = torch.randn(6, D, requires_grad=True)
    wb = torch.randn(B, D, requires_grad=True)
    F.mse_loss(generator(x, wb), torch.randn(6, D)).backward()
    for name, p in [*generator.named_parameters(), ("x", x), ("base", wb)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
