"""EQLv2 (ltdet2.modeling.losses.eqlv2, ltdet2.memory.GradientRatio, ltdet2.config.eqlv2, projects/eqlv2.py): the
weights and the loss equal a direct computation of the paper's equations on small seeded inputs, the gradients are
accumulated after the loss with the step's weights (background column left out) as a direct computation over two
steps, the state comes back exactly from a checkpoint and is the same on every rank under ``sync="global"``, the
helper refuses what cannot work, and the LT-Shapes project trains a few iterations."""

import math
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyCall as L
from detectron2.config import instantiate

from ltdet2.config.eqlv2 import add_eqlv2
from ltdet2.config.long_tail import use_long_tail_heads
from ltdet2.config.seesaw import add_seesaw
from ltdet2.memory import CumulativeCount, GradientRatio, PredictorBatch
from ltdet2.modeling.box_predictors.scoring import SigmoidBackgroundScoring, SoftmaxScoring
from ltdet2.modeling.losses import EQLv2Loss, eqlv2_loss, eqlv2_weights, weighted_sigmoid_loss

from fixtures.distributed import free_port
from fixtures.models import (
    NUM_CLASSES,
    TEST_DEVICE,
    TINY_LT_SHAPES,
    make_batch,
    small_model_cfg,
    train_losses,
    train_short_one_phase_project,
)

K = 5
GAMMA, MU, ALPHA = 12.0, 0.8, 4.0


def random_rows(num_rows=24, num_classes=K, seed=0, scale=3.0):
    """[N, K+1] float64 logits, labels in [0, K] (every class and background present), [N] weights."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, num_classes + 1, generator=generator, dtype=torch.float64) * scale
    labels = torch.randint(0, num_classes + 1, (num_rows,), generator=generator)
    labels[: num_classes + 1] = torch.arange(num_classes + 1)
    weights = torch.rand(num_rows, generator=generator, dtype=torch.float64) * 2
    return logits, labels, weights


# --- the paper's equations, directly (Python floats) ----------------------------------------------------------------


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def direct_weights(pos, neg, gamma=GAMMA, mu=MU, alpha=ALPHA):
    """g_j = pos_j / (neg_j + 1e-10), r_j = 1 / (1 + exp(-gamma (g_j - mu))), q_j = 1 + alpha (1 - r_j): lists."""
    q, r = [], []
    for p, n in zip(pos, neg):
        g = p / (n + 1e-10)
        r_j = 1.0 / (1.0 + math.exp(-gamma * (g - mu)))
        r.append(r_j)
        q.append(1.0 + alpha * (1.0 - r_j))
    return q, r


def direct_loss(logits, labels, q, r, weights=None):
    """sum_n w_n sum_j weight_nj BCE(z_nj, y_nj) / N over the K+1 columns; weight q_j on the row's own column, r_j on
    the others, 1 on the background column (q and r: the K classes')."""
    num_rows, columns = logits.shape
    total = 0.0
    for n in range(num_rows):
        w = 1.0 if weights is None else float(weights[n])
        for j in range(columns):
            z, y = float(logits[n, j]), 1.0 if int(labels[n]) == j else 0.0
            p = sigmoid(z)
            bce = -(y * math.log(p) + (1 - y) * math.log(1 - p))
            weight = 1.0 if j == columns - 1 else (q[j] if y else r[j])
            total += w * weight * bce
    return total / num_rows


def direct_accumulate(pos, neg, logits, labels, q, r):
    """The step's gradient magnitudes added to pos / neg (lists), K class columns only: a row of class i adds
    q_i |sigmoid(z_i) - 1| to pos_i, every other class j (background rows: every class) r_j sigmoid(z_j) to neg_j."""
    pos, neg = list(pos), list(neg)
    num_classes = len(pos)
    for n in range(logits.shape[0]):
        for j in range(num_classes):
            p = sigmoid(float(logits[n, j]))
            if int(labels[n]) == j:
                pos[j] += q[j] * abs(p - 1.0)
            else:
                neg[j] += r[j] * abs(p)
    return pos, neg


# --- weights and loss ----------------------------------------------------------------------------------------------

POS = [0.0, 3.0, 40.0, 8.0, 1e-3]
NEG = [50.0, 4.0, 45.0, 10.5, 0.0]  # ratios 0, 0.75, 0.89, 0.76, 1e7 (neg 0: eps)


@pytest.mark.parametrize("gamma, mu, alpha", [(12.0, 0.8, 4.0), (6.0, 0.5, 1.0), (20.0, 0.9, 0.0)])
def test_weights_and_loss_equal_the_papers_equations(gamma, mu, alpha):
    pos, neg = torch.tensor(POS, dtype=torch.float64), torch.tensor(NEG, dtype=torch.float64)
    q, r = eqlv2_weights(pos, neg, gamma=gamma, mu=mu, alpha=alpha)
    q_ref, r_ref = direct_weights(POS, NEG, gamma, mu, alpha)
    assert r.tolist() == pytest.approx(r_ref, rel=1e-12, abs=1e-300)
    assert q.tolist() == pytest.approx(q_ref, rel=1e-12)
    if (gamma, mu) == (GAMMA, MU):  # a class without positives is suppressed: r = f(0) = 6.8e-5, q close to 1 + alpha
        assert r[0].item() == pytest.approx(1 / (1 + math.exp(9.6)), rel=1e-12)
    logits, labels, weights = random_rows()
    loss = eqlv2_loss(logits, labels, pos, neg, gamma=gamma, mu=mu, alpha=alpha)
    assert loss.item() == pytest.approx(direct_loss(logits, labels, q_ref, r_ref), rel=1e-12)
    weighted = eqlv2_loss(logits, labels, pos, neg, gamma=gamma, mu=mu, alpha=alpha, weights=weights)
    assert weighted.item() == pytest.approx(direct_loss(logits, labels, q_ref, r_ref, weights), rel=1e-12)


def test_with_unit_weights_the_loss_is_the_sigmoid_background_loss_and_the_gradient_is_the_weighted_bce_one():
    logits, labels, weights = random_rows(seed=1)
    ones = torch.ones(K + 1, dtype=torch.float64)
    assert weighted_sigmoid_loss(logits, labels, ones, ones, weights).item() == pytest.approx(
        SigmoidBackgroundScoring().loss(logits, labels, weights).item(), rel=1e-12
    )
    # dL/dz_nj = w_n * weight_nj * (sigmoid(z_nj) - y_nj) / N: the weights are constants, only the logits get one
    q, r = eqlv2_weights(torch.tensor(POS, dtype=torch.float64), torch.tensor(NEG, dtype=torch.float64))
    q, r = torch.cat([q, ones[:1]]).requires_grad_(), torch.cat([r, ones[:1]]).requires_grad_()
    z = logits.clone().requires_grad_()
    weighted_sigmoid_loss(z, labels, q, r, weights).backward()
    assert q.grad is None and r.grad is None
    for n in range(len(labels)):
        for j in range(K + 1):
            y = 1.0 if int(labels[n]) == j else 0.0
            weight = float(q[j] if y else r[j])
            expected = float(weights[n]) * weight * (sigmoid(float(logits[n, j])) - y) / len(labels)
            assert z.grad[n, j].item() == pytest.approx(expected, rel=1e-10, abs=1e-15)


def test_empty_batches_and_inconsistent_inputs():
    z = torch.zeros(0, K + 1, requires_grad=True)
    loss = eqlv2_loss(z, torch.zeros(0, dtype=torch.int64), torch.zeros(K), torch.zeros(K))
    assert loss.item() == 0 and loss.requires_grad
    logits, labels, _ = random_rows()
    with pytest.raises(ValueError, match=r"positive_weights must be \[6\]"):
        weighted_sigmoid_loss(logits, labels, torch.ones(K), torch.ones(K + 1))
    with pytest.raises(ValueError, match=r"must both be \[K\]"):
        eqlv2_weights(torch.zeros(K), torch.zeros(K + 1))
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        GradientRatio(K, alpha=-1.0)
    with pytest.raises(ValueError, match="gamma must be a finite number"):
        GradientRatio(K, gamma=float("inf"))


# --- the accumulated gradients ---------------------------------------------------------------------------------------


def test_gradients_are_accumulated_with_each_steps_weights_over_two_steps():
    indicator = GradientRatio(K, sync="local")
    assert indicator.update_timing == "after_loss"
    # before any update: weights 1 (official), background column 1 always
    q0, r0 = indicator.weights()
    assert q0.tolist() == [1.0] * (K + 1) and r0.tolist() == [1.0] * (K + 1)

    logits1, labels1, _ = random_rows(seed=2)
    logits2, labels2, _ = random_rows(num_rows=17, seed=3)
    indicator.update_from_predictions(PredictorBatch(logits1, labels1, torch.full_like(labels1, -1)))
    pos, neg = direct_accumulate([0.0] * K, [0.0] * K, logits1, labels1, [1.0] * K, [1.0] * K)
    first_pos, first_neg = pos, neg
    assert indicator.pos_grad.tolist() == pytest.approx(pos, rel=1e-12)
    assert indicator.neg_grad.tolist() == pytest.approx(neg, rel=1e-12)

    # the second step's weights are those of the state after the first; the loss of that step uses them
    q1, r1 = direct_weights(pos, neg)
    q, r = indicator.weights()
    assert q.tolist() == pytest.approx(q1 + [1.0], rel=1e-12) and r.tolist() == pytest.approx(r1 + [1.0], rel=1e-12)
    assert weighted_sigmoid_loss(logits2, labels2, q, r).item() == pytest.approx(
        direct_loss(logits2, labels2, q1, r1), rel=1e-12
    )
    indicator.update(labels2, logits2)
    pos, neg = direct_accumulate(pos, neg, logits2, labels2, q1, r1)
    assert indicator.pos_grad.tolist() == pytest.approx(pos, rel=1e-12)
    assert indicator.neg_grad.tolist() == pytest.approx(neg, rel=1e-12)
    assert int(indicator.num_updates) == 2
    ratio = [p / (n + 1e-10) for p, n in zip(pos, neg)]
    assert indicator.vector().tolist() == pytest.approx(ratio, rel=1e-6)
    assert indicator.vector().dtype == torch.float32

    # the accumulated magnitudes are those of the loss's own gradient, times N (the official code does not divide)
    z = logits2.clone().requires_grad_()
    weighted_sigmoid_loss(z, labels2, q, r).backward()
    grad = z.grad[:, :K].abs() * len(labels2)
    own = torch.nn.functional.one_hot(labels2, K + 1)[:, :K].double()
    assert (grad * own).sum(0).tolist() == pytest.approx([a - b for a, b in zip(pos, first_pos)], rel=1e-10)
    assert (grad * (1 - own)).sum(0).tolist() == pytest.approx([a - b for a, b in zip(neg, first_neg)], rel=1e-10)

    indicator.reset()
    assert indicator.pos_grad.abs().sum() == 0 and int(indicator.num_updates) == 0


def test_the_background_column_is_not_accumulated():
    logits, labels, _ = random_rows(seed=4)
    first, second = GradientRatio(K, sync="local"), GradientRatio(K, sync="local")
    first.update(labels, logits)
    moved = logits.clone()
    moved[:, K] += torch.linspace(-5, 5, len(labels), dtype=torch.float64)  # only the background logits change
    second.update(labels, moved)
    assert torch.equal(first.pos_grad, second.pos_grad) and torch.equal(first.neg_grad, second.neg_grad)
    assert first.pos_grad.shape == (K,) and first.weights()[0].shape == (K + 1,)
    assert first.weights()[0][K].item() == 1.0 and first.weights()[1][K].item() == 1.0
    # background rows add no positive gradient, and to every class's negative sum r_j sigmoid(z_j)
    background_rows = GradientRatio(K, sync="local")
    keep = labels == K
    background_rows.update(labels[keep], logits[keep])
    assert background_rows.pos_grad.abs().sum() == 0
    expected = [sum(sigmoid(float(logits[n, j])) for n in keep.nonzero().flatten().tolist()) for j in range(K)]
    assert background_rows.neg_grad.tolist() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match=r"logits of a sigmoid classifier with a background column"):
        background_rows.update_from_predictions(PredictorBatch(torch.zeros(2, K + 2), labels[:2], labels[:2]))


# --- in the model: timing, checkpoint ------------------------------------------------------------------------------


def eqlv2_model(**options):
    """The small model (NUM_CLASSES classes) with ``add_eqlv2(model, **options)``."""
    cfg = small_model_cfg()
    add_eqlv2(cfg, **options)
    torch.manual_seed(0)
    return instantiate(cfg).to(TEST_DEVICE)


def test_add_eqlv2_builds_the_sigmoid_predictor_and_the_indicator():
    model = eqlv2_model()
    predictor = model.roi_heads.box_predictor
    scoring = predictor.scoring
    assert isinstance(scoring, SigmoidBackgroundScoring) and predictor.num_logits == NUM_CLASSES + 1
    assert scoring.prior_prob is None and scoring.test_with_objectness
    assert torch.equal(predictor.cls_score.bias, torch.zeros(NUM_CLASSES + 1, device=TEST_DEVICE))  # official init
    indicator = model.roi_heads.indicators["eqlv2_gradients"]
    assert isinstance(indicator, GradientRatio) and indicator.sync == "global"
    assert (indicator.gamma, indicator.mu, indicator.alpha) == (12.0, 0.8, 4.0)
    assert isinstance(predictor.cls_loss, EQLv2Loss) and predictor.cls_loss.bound_indicator is indicator
    # test-time scores: class sigmoid x (1 - background sigmoid); the official test_with_obj=False: plain sigmoid
    logits, _, _ = random_rows(seed=5)
    probabilities = scoring.probabilities(logits)
    for n in range(3):
        z = logits[n].tolist()
        expected = [sigmoid(v) * (1 - sigmoid(z[K])) for v in z[:K]] + [sigmoid(z[K])]
        assert probabilities[n].tolist() == pytest.approx(expected, rel=1e-12)
    plain = eqlv2_model(test_with_objectness=False).roi_heads.box_predictor.scoring
    torch.testing.assert_close(plain.probabilities(logits), logits.sigmoid())
    local = eqlv2_model(sync="local", gamma=6.0, mu=0.5, alpha=1.0).roi_heads.indicators["eqlv2_gradients"]
    assert (local.sync, local.gamma, local.mu, local.alpha) == ("local", 6.0, 0.5, 1.0)


def sampled_labels(model):
    return torch.cat([p.gt_classes for p in model.roi_heads.latest_sampled_proposals]).cpu()


def test_the_loss_reads_the_previous_state_and_the_state_comes_back_from_a_checkpoint(tmp_path):
    model = eqlv2_model()
    predictor = model.roi_heads.box_predictor
    indicator = model.roi_heads.indicators["eqlv2_gradients"]
    read, seen = [], {}
    weights = predictor.cls_loss.weights
    predictor.cls_loss.weights = lambda num_classes: read.append(weights(num_classes)) or read[-1]
    hook = predictor.register_forward_hook(lambda m, args, out: seen.update(logits=out[0].detach().double().cpu()))

    losses = train_losses(model, make_batch(seed=0))
    labels = sampled_labels(model)
    assert read[0][0].tolist() == [1.0] * (NUM_CLASSES + 1)  # the first step: weights 1
    assert losses["loss_cls"].item() == pytest.approx(
        direct_loss(seen["logits"], labels, [1.0] * NUM_CLASSES, [1.0] * NUM_CLASSES), rel=1e-5
    )
    ones = [1.0] * NUM_CLASSES
    pos, neg = direct_accumulate([0.0] * NUM_CLASSES, [0.0] * NUM_CLASSES, seen["logits"], labels, ones, ones)
    assert indicator.pos_grad.tolist() == pytest.approx(pos, rel=1e-5)
    assert indicator.neg_grad.tolist() == pytest.approx(neg, rel=1e-5)

    losses = train_losses(model, make_batch(seed=1), seed=2)
    labels = sampled_labels(model)
    q, r = direct_weights(pos, neg)  # the loss of step 2 read the state after step 1
    assert read[1][0][:NUM_CLASSES].tolist() == pytest.approx(q, rel=1e-5)
    assert read[1][1][:NUM_CLASSES].tolist() == pytest.approx(r, rel=1e-4)
    assert losses["loss_cls"].item() == pytest.approx(direct_loss(seen["logits"], labels, q, r), rel=1e-5)
    pos, neg = direct_accumulate(pos, neg, seen["logits"], labels, q, r)
    assert indicator.pos_grad.tolist() == pytest.approx(pos, rel=1e-5)
    assert indicator.neg_grad.tolist() == pytest.approx(neg, rel=1e-5)
    hook.remove()

    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_test")
    saved = torch.load(tmp_path / "model_test.pth", weights_only=False)["model"]
    prefix = "roi_heads.indicators.eqlv2_gradients."
    assert {k for k in saved if k.startswith(prefix)} == {prefix + n for n in ("pos_grad", "neg_grad", "num_updates")}
    assert saved[prefix + "pos_grad"].dtype == torch.float64 and int(saved[prefix + "num_updates"]) == 2
    restored = eqlv2_model()
    restored_indicator = restored.roi_heads.indicators["eqlv2_gradients"]
    assert restored_indicator.neg_grad.sum() == 0
    DetectionCheckpointer(restored).load(str(tmp_path / "model_test.pth"))
    for name in ("pos_grad", "neg_grad", "num_updates"):
        assert torch.equal(getattr(restored_indicator, name), getattr(indicator, name))  # exactly
    # and the restored model computes the same loss, and the same state, on the next batch
    torch.testing.assert_close(
        train_losses(restored, make_batch(seed=3), seed=4)["loss_cls"],
        train_losses(model, make_batch(seed=3), seed=4)["loss_cls"],
    )
    assert torch.equal(restored_indicator.pos_grad, indicator.pos_grad)


def test_refusals_of_the_helper_the_predictor_and_the_loss():
    for key, value in (
        ("cls_loss", L(EQLv2Loss)()),
        ("scoring", L(SoftmaxScoring)()),
        ("class_scoring", "sigmoid_background"),
        ("use_sigmoid_ce", True),
        ("use_fed_loss", True),
    ):
        cfg = small_model_cfg()
        use_long_tail_heads(cfg)
        cfg.roi_heads.box_predictor[key] = value
        with pytest.raises(ValueError, match=r"add_eqlv2: .*(already has|use_sigmoid_ce)"):
            add_eqlv2(cfg)
    cfg = small_model_cfg()
    add_seesaw(cfg)  # another method's classification
    with pytest.raises(ValueError, match="already has a classification loss"):
        add_eqlv2(cfg)
    cfg = small_model_cfg()
    use_long_tail_heads(cfg)
    cfg.roi_heads.indicators = {"eqlv2_gradients": L(CumulativeCount)(num_classes=NUM_CLASSES)}
    with pytest.raises(ValueError, match="already has an indicator named 'eqlv2_gradients'"):
        add_eqlv2(cfg)
    cfg = small_model_cfg()
    use_long_tail_heads(cfg)
    cfg.roi_heads.box_predictor.class_scoring = "softmax"  # Detectron2's default, by name: replaced
    add_eqlv2(cfg)
    assert "class_scoring" not in cfg.roi_heads.box_predictor

    # the predictor refuses the loss with another scoring; the loss another indicator or class count
    cfg = small_model_cfg()
    add_eqlv2(cfg)
    cfg.roi_heads.box_predictor.scoring = L(SoftmaxScoring)()
    with pytest.raises(ValueError, match="EQLv2Loss is a loss for class_scoring='sigmoid_background'"):
        instantiate(cfg)
    cfg = small_model_cfg()
    add_eqlv2(cfg)
    cfg.roi_heads.indicators["eqlv2_gradients"] = L(CumulativeCount)(num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="EQLv2 reads the accumulated gradients of a GradientRatio"):
        train_losses(instantiate(cfg).to(TEST_DEVICE), make_batch())
    cfg = small_model_cfg()
    add_eqlv2(cfg)
    cfg.roi_heads.box_predictor.cls_loss.num_classes = NUM_CLASSES + 1
    with pytest.raises(ValueError, match="they must all be K"):
        train_losses(instantiate(cfg).to(TEST_DEVICE), make_batch())


# --- sync="global": the same state on every rank ---------------------------------------------------------------------

WORLD_SIZE = 2


def rank_batch(step, rank):
    """Unequal batch sizes; rank 1 has no rows at step 1."""
    generator = torch.Generator().manual_seed(100 * step + rank)
    num = 0 if (rank, step) == (1, 1) else 4 + 3 * rank + step
    return torch.randint(0, K + 1, (num,), generator=generator), torch.randn(num, K + 1, generator=generator) * 3


def _sync_worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        indicator = GradientRatio(K, sync="global")
        for step in range(3):
            indicator.update(*rank_batch(step, rank))
        torch.save(indicator.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed (gloo)")
def test_global_sync_sums_the_ranks_gradients(tmp_path, monkeypatch):
    """Every rank holds the state of one process that saw the ranks' rows of each step together (the official
    all-reduce)."""
    if sys.platform.startswith("linux") and "GLOO_SOCKET_IFNAME" not in os.environ:
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_sync_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    single = GradientRatio(K, sync="global")  # one process: no communication
    for step in range(3):
        batches = [rank_batch(step, r) for r in range(WORLD_SIZE)]
        single.update(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    for name in ("pos_grad", "neg_grad", "num_updates"):
        assert torch.equal(states[0][name], states[1][name])
        torch.testing.assert_close(states[0][name], getattr(single, name), rtol=1e-12, atol=1e-12)


# --- the LT-Shapes project ------------------------------------------------------------------------------------------


def test_eqlv2_project_trains_a_few_iterations(tmp_path, tiny_dataset):
    num_classes = TINY_LT_SHAPES.num_classes
    # EQLv2's pieces hold a copy of the class count (ltdet2.config.eqlv2)
    overrides = [
        f"model.roi_heads.indicators.eqlv2_gradients.num_classes={num_classes}",
        f"model.roi_heads.box_predictor.cls_loss.num_classes={num_classes}",
    ]
    _, final = train_short_one_phase_project("eqlv2.py", tiny_dataset, str(tmp_path / "run"), overrides)
    prefix = "roi_heads.indicators.eqlv2_gradients."
    assert final[prefix + "pos_grad"].shape == (num_classes,) and int(final[prefix + "num_updates"]) == 3
    assert (final[prefix + "neg_grad"] > 0).all() and final[prefix + "pos_grad"].sum() > 0
    assert final["roi_heads.box_predictor.cls_score.weight"].shape[0] == num_classes + 1
