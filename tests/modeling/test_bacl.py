"""BACL: the sigmoid classifier with a background channel, FCBL, and the feature hallucination module
(reference/bacl.md section 7, items 1-5, 7, 9, 10, and the build-time errors)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from detectron2.config import LazyCall as L
from detectron2.config import instantiate

from ltdet2.memory import CumulativeCount, ImageFrequency, MeanScore, SoftConfusionMatrix, TruePositiveRate
from ltdet2.modeling import LongTailOutputLayers, dense_boxes, dense_boxes_per_image, sigmoid_background_probs
from ltdet2.modeling.classifiers import CosineClassifier
from ltdet2.modeling.feature_sources import FeatureHallucination
from ltdet2.modeling.losses import (
    ForegroundBalanceLoss,
    confusion_margins,
    foreground_balance_loss,
    foreground_balance_weights,
    indicator_strengths,
    margin_balanced_loss,
    sigmoid_background_loss,
    strength_margins,
)

from fixtures.models import NUM_CLASSES, long_tail_cfg, make_batch, small_model_cfg, train_losses

FEATURE_DIM = 256  # the small model's box-head output


def random_rows(num_rows=40, num_classes=4, seed=0, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, num_classes + 1, generator=generator, dtype=torch.float64) * scale
    labels = torch.randint(0, num_classes + 1, (num_rows,), generator=generator)
    labels[:3] = num_classes  # background rows for sure
    labels[3] = 0
    return logits, labels


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def row_bce(z, target):
    """-log p_hat for one channel (Eq. 3-4), in float64 Python."""
    return -log_sigmoid(z) if target else -log_sigmoid(-z)


# --- 1. the sigmoid loss with a background channel --------------------------------------------


def test_sigmoid_background_loss_equals_the_per_row_loop():
    logits, labels = random_rows()
    num_rows, num_columns = logits.shape
    expected = sum(
        row_bce(logits[n, c].item(), c == labels[n].item()) for n in range(num_rows) for c in range(num_columns)
    )
    assert sigmoid_background_loss(logits, labels).item() == pytest.approx(expected / num_rows, rel=1e-12)
    # per-row weights multiply each row's sum; the divisor stays N
    weights = torch.linspace(0.5, 2.0, num_rows, dtype=torch.float64)
    weighted = sum(
        weights[n].item() * sum(row_bce(logits[n, c].item(), c == labels[n].item()) for c in range(num_columns))
        for n in range(num_rows)
    )
    assert sigmoid_background_loss(logits, labels, weights).item() == pytest.approx(weighted / num_rows, rel=1e-12)
    empty = logits[:0].clone().requires_grad_()
    loss = sigmoid_background_loss(empty, labels[:0])
    assert loss.item() == 0 and loss.requires_grad


# --- 2. test-time scoring and the predictor's mode ---------------------------------------------


def sigmoid_predictor(**kwargs):
    cfg = small_model_cfg().roi_heads.box_predictor
    cfg._target_ = LongTailOutputLayers
    cfg.num_classes = NUM_CLASSES
    cfg.class_scoring = "sigmoid_background"
    for key, value in kwargs.items():
        cfg[key] = value
    return instantiate(cfg)


def test_sigmoid_background_probs_argmax_and_bias_init():
    logits, _ = random_rows(num_rows=200, num_classes=NUM_CLASSES)
    probs = sigmoid_background_probs(logits)
    p = torch.sigmoid(logits)
    torch.testing.assert_close(probs[:, :-1], p[:, :-1] * (1 - p[:, -1:]), rtol=1e-12, atol=0)
    torch.testing.assert_close(probs[:, -1], p[:, -1], rtol=1e-15, atol=0)
    assert torch.equal(probs[:, :-1].argmax(1), logits[:, :-1].argmax(1))
    # a saturated background logit keeps the foreground scores exact (1 - sigmoid(40) is 0 in float64)
    saturated = torch.tensor([[0.0, 40.0]], dtype=torch.float64)
    assert sigmoid_background_probs(saturated)[0, 0].item() == pytest.approx(0.5 * math.exp(-40), rel=1e-12)

    predictor = sigmoid_predictor()
    assert torch.equal(predictor.cls_score.bias, torch.full((NUM_CLASSES + 1,), -math.log(999.0)))
    assert predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.1)  # Detectron2's N(0, 0.01)
    assert torch.equal(predictor.predict_class_probabilities(logits.float()), sigmoid_background_probs(logits.float()))
    assert torch.equal(sigmoid_predictor(cls_bias_init=0.0).cls_score.bias, torch.zeros(NUM_CLASSES + 1))
    # the default scoring is untouched: Detectron2's zero biases and softmax
    softmax = sigmoid_predictor(class_scoring="softmax")
    assert torch.equal(softmax.cls_score.bias, torch.zeros(NUM_CLASSES + 1))
    torch.testing.assert_close(softmax.predict_class_probabilities(logits.float()), logits.float().softmax(1))


def test_sigmoid_predictor_trains_with_the_background_channel_loss():
    predictor = sigmoid_predictor()
    logits, labels = random_rows(num_rows=30, num_classes=NUM_CLASSES)
    logits = logits.float()
    assert predictor.classification_loss(logits, labels) == sigmoid_background_loss(logits, labels)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(use_sigmoid_ce=True), "use_sigmoid_ce is another one"),
        (
            dict(class_scoring="softmax", cls_loss=ForegroundBalanceLoss()),
            "is a loss for class_scoring='sigmoid_background'",
        ),
        (dict(class_scoring="sigmoid"), "class_scoring must be one of"),
        (
            dict(classifier=CosineClassifier(input_dim=FEATURE_DIM, num_classes=NUM_CLASSES), cls_bias_init=-1.0),
            "the classifier CosineClassifier initialises itself",
        ),
    ],
)
def test_inconsistent_predictor_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        sigmoid_predictor(**options)


# --- 3-5. FCBL ---------------------------------------------------------------------------------

C = 4
HAND_CONFUSION = torch.tensor(
    [
        [0.60, 0.30, 0.00, 0.10],
        [0.05, 0.90, 0.05, 0.00],
        [0.00, 0.50, 0.20, 0.30],
        [0.00, 0.00, 0.00, 0.00],  # a class never seen
    ]
)


def test_confusion_margins_entry_by_entry():
    margins = confusion_margins(HAND_CONFUSION)
    for i in range(C):
        for j in range(C):
            expected = 0.85 * math.log(max(HAND_CONFUSION[i, j].item(), 1e-3) / max(HAND_CONFUSION[j, i].item(), 1e-3))
            assert margins[i, j].item() == pytest.approx(expected, abs=1e-6), (i, j)
    assert torch.equal(margins.diagonal(), torch.zeros(C))
    # vector indicators: delta_ij = alpha * log(l_j / l_i) (clamped alike)
    strengths = torch.tensor([0.5, 0.0, 0.25, 1.0])
    vector = strength_margins(strengths)
    assert vector[0, 2].item() == pytest.approx(0.85 * math.log(0.5), abs=1e-6)
    assert vector[0, 1].item() == pytest.approx(0.85 * math.log(1e-3 / 0.5), abs=1e-6)


def eq6_loop(logits, labels, confusion, alpha=0.85, threshold=0.7, weight_term=True):
    """FCBL written row by row from the paper (Eq. 6-9) with the official code's clamp; Eq. 2 for background."""
    total = 0.0
    for n in range(logits.shape[0]):
        z = logits[n].tolist()
        i = labels[n].item()
        if i == C:
            total += sum(row_bce(z[c], c == C) for c in range(C + 1))
            continue
        p_bg = 1 / (1 + math.exp(-z[C]))
        p_tilde = [(1 - p_bg) / (1 + math.exp(-z[j])) for j in range(C)]
        total += row_bce(z[i], True) + row_bce(z[C], False)  # -log p_i - log(1 - p_{C+1})
        for j in range(C):
            if j == i:
                continue
            delta = alpha * math.log(max(confusion[i, j].item(), 1e-3) / max(confusion[j, i].item(), 1e-3))
            w = 1.0 if not weight_term or p_tilde[j] >= p_tilde[i] or p_tilde[j] >= threshold else 0.0
            total += w * row_bce(z[j] + delta, False)  # -w_j log(1 - p'_j)
    return total / logits.shape[0]


@pytest.mark.parametrize("weight_term", [True, False])
def test_fcbl_equals_the_eq6_loop(weight_term):
    logits, labels = random_rows(num_rows=60, num_classes=C, seed=3)
    loss = foreground_balance_loss(logits, labels, HAND_CONFUSION.double(), weight_term=weight_term)
    assert loss.item() == pytest.approx(eq6_loop(logits, labels, HAND_CONFUSION, weight_term=weight_term), rel=1e-6)
    # the margin only touches the non-ground-truth foreground logits of foreground rows
    no_margin = foreground_balance_loss(logits, labels, HAND_CONFUSION, alpha=0.0, weight_term=False)
    assert no_margin.item() == pytest.approx(sigmoid_background_loss(logits, labels).item(), rel=1e-12)
    assert loss.item() != pytest.approx(no_margin.item(), rel=1e-3)


def test_fcbl_margin_gradient_is_zero_only_where_the_margin_is():
    """d loss / d z equals sigmoid(z + delta) - y with delta 0 on the GT column, background column and
    background rows (no weight term)."""
    logits, labels = random_rows(num_rows=12, num_classes=C, seed=5)
    logits.requires_grad_()
    foreground_balance_loss(logits, labels, HAND_CONFUSION.double(), weight_term=False).backward()
    margins = confusion_margins(HAND_CONFUSION).double()
    expected_delta = torch.zeros_like(logits)
    for n, i in enumerate(labels.tolist()):
        if i < C:
            expected_delta[n, :C] = margins[i]
            assert expected_delta[n, i] == 0
    targets = torch.nn.functional.one_hot(labels, C + 1).double()
    expected = (torch.sigmoid(logits.detach() + expected_delta) - targets) / logits.shape[0]
    torch.testing.assert_close(logits.grad, expected, rtol=1e-10, atol=1e-12)


def test_weight_term_cases():
    # background logit very low: p~_j ~ sigmoid(z_j). GT 0 at 0.88; class 1 above it; class 2 at 0.73 >= 0.7
    # but below the GT; class 3 at 0.5, neither
    logits = torch.tensor([[2.0, 3.0, 1.0, 0.0, -20.0], [2.0, 3.0, 1.0, 0.0, -20.0]])
    labels = torch.tensor([0, C])
    weights = foreground_balance_weights(logits, labels, threshold=0.7)
    assert weights[0].tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]  # GT, above GT, >= 0.7, neither, background
    assert weights[1].tolist() == [1.0] * (C + 1)  # background rows: all 1
    # a GT scored lowest: every foreground column weighs 1
    low_gt = foreground_balance_weights(logits, torch.tensor([3, C]))
    assert low_gt[0].tolist() == [1.0] * (C + 1)
    # the weights come from the margin-free, detached scores: a margin does not change which terms count
    loss_margin = foreground_balance_loss(logits, labels, HAND_CONFUSION)
    assert loss_margin.item() == pytest.approx(eq6_loop(logits.double(), labels, HAND_CONFUSION), rel=1e-5)


# --- the loss module and its indicators ---------------------------------------------------------


def bacl_model(indicators=None, sources=(), loss=None, mask=False, **predictor_options):
    indicators = indicators or {"confusion": L(SoftConfusionMatrix)(num_classes=NUM_CLASSES)}
    cfg = long_tail_cfg(small_model_cfg(mask=mask), indicators=indicators, feature_sources=list(sources))
    cfg.roi_heads.box_predictor.class_scoring = "sigmoid_background"
    cfg.roi_heads.box_predictor.cls_loss = loss
    for key, value in predictor_options.items():
        cfg.roi_heads.box_predictor[key] = value
    torch.manual_seed(0)
    return instantiate(cfg)


@pytest.mark.parametrize(
    "indicator",
    [
        L(SoftConfusionMatrix)(num_classes=NUM_CLASSES),
        L(TruePositiveRate)(num_classes=NUM_CLASSES),
        L(MeanScore)(num_classes=NUM_CLASSES),
        L(CumulativeCount)(num_classes=NUM_CLASSES),
        L(ImageFrequency)(counts=[200, 50, 10, 3, 1, 0]),
    ],
    ids=lambda c: c._target_.__name__,
)
def test_fcbl_module_reads_any_long_term_indicator(indicator):
    model = bacl_model(
        {"status": indicator}, loss=L(ForegroundBalanceLoss)(indicator="status", num_classes=NUM_CLASSES)
    )
    loss = model.roi_heads.box_predictor.cls_loss
    status = model.roi_heads.indicators["status"]
    train_losses(model, make_batch(num_images=1, boxes_per_image=4))
    logits, labels = random_rows(num_rows=25, num_classes=NUM_CLASSES, seed=9)
    logits = logits.float()
    if isinstance(status, SoftConfusionMatrix):
        expected = foreground_balance_loss(logits, labels, status.matrix())
    else:
        strengths = status.vector()[:NUM_CLASSES].float()
        if isinstance(status, (ImageFrequency, CumulativeCount)):  # counts: scaled by their maximum
            strengths = strengths / strengths.max()
        assert torch.equal(indicator_strengths(status, NUM_CLASSES), strengths)
        expected = margin_balanced_loss(logits, labels, strength_margins(strengths))
    assert loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert not torch.equal(loss.margins(NUM_CLASSES), torch.zeros(NUM_CLASSES, NUM_CLASSES))


def test_missing_or_mis_sized_indicators_are_build_errors():
    with pytest.raises(ValueError, match=r"box_predictor.cls_loss \(ForegroundBalanceLoss\) reads indicator\(s\) "):
        bacl_model({"tpr": L(TruePositiveRate)(num_classes=NUM_CLASSES)}, loss=L(ForegroundBalanceLoss)())
    with pytest.raises(
        ValueError, match=r"feature_sources.0 \(FeatureHallucination\) reads indicator\(s\) \['confusion'\]"
    ):
        bacl_model(
            {"tpr": L(TruePositiveRate)(num_classes=NUM_CLASSES)},
            sources=[L(FeatureHallucination)(num_classes=NUM_CLASSES, feature_dim=FEATURE_DIM)],
        )
    wrong = {"confusion": L(SoftConfusionMatrix)(num_classes=NUM_CLASSES + 2)}
    with pytest.raises(ValueError, match=r"indicator 'confusion' \(SoftConfusionMatrix\) is built for 8 classes, "):
        bacl_model(wrong, loss=L(ForegroundBalanceLoss)(num_classes=NUM_CLASSES))
    with pytest.raises(ValueError, match=r"feature_sources.0.*is built for 8 classes, FeatureHallucination for 6"):
        bacl_model(wrong, sources=[L(FeatureHallucination)(num_classes=NUM_CLASSES, feature_dim=FEATURE_DIM)])
    # without num_classes the loss finds the mismatch at its first use, naming the indicator
    model = bacl_model(wrong, loss=L(ForegroundBalanceLoss)())
    with pytest.raises(
        ValueError, match=r"indicator 'confusion' \(SoftConfusionMatrix\) has a \(8, 8\) matrix; the box"
    ):
        train_losses(model, make_batch())
    with pytest.raises(ValueError, match=r"confusion must be \[4, 4\]"):
        foreground_balance_loss(torch.zeros(3, C + 1), torch.zeros(3, dtype=torch.int64), torch.zeros(C + 1, C + 1))


# --- 7. dense boxes with the official shared offsets ----------------------------------------------


def test_dense_boxes_shared_eta_reuses_the_offsets_across_boxes():
    gt = torch.tensor([[20.0, 30.0, 80.0, 90.0], [40.0, 40.0, 52.0, 64.0]])
    shared = dense_boxes(gt, (200, 200), generator=torch.Generator().manual_seed(1), shared_eta=True)
    scale = torch.stack([gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]] * 2, dim=1)[:, None] / 6.0  # [G, 1, 4]
    eta = (shared.reshape(2, 16, 4) - gt[:, None]) / scale
    torch.testing.assert_close(eta[0], eta[1])
    assert (eta.abs() <= 1 + 1e-6).all() and len({tuple(s) for s in torch.sign(eta[0]).tolist()}) == 16
    per_box = dense_boxes(gt, (200, 200), generator=torch.Generator().manual_seed(1))
    per_box_eta = (per_box.reshape(2, 16, 4) - gt[:, None]) / scale
    assert not torch.allclose(per_box_eta[0], per_box_eta[1])
    clipped = dense_boxes(torch.tensor([[0.0, 0.0, 30.0, 30.0]]), (20, 25), shared_eta=True)
    assert clipped[:, 0::2].max() <= 25 and clipped[:, 1::2].max() <= 20 and clipped.min() >= 0


# --- 9. FHM class draws -----------------------------------------------------------------------


def fhm_with_confusion(diagonal, seen, **options):
    source = FeatureHallucination(num_classes=len(diagonal), feature_dim=3, **options)
    confusion = SoftConfusionMatrix(len(diagonal))
    confusion.numerator.copy_(torch.diag(torch.tensor(diagonal, dtype=torch.float64)))
    confusion.positives.fill_(1)
    source.bind_indicators({"confusion": confusion})
    features = torch.randn(2 * len(seen), 3, generator=torch.Generator().manual_seed(0))
    source.bank.update(features, torch.tensor(seen).repeat(2))
    return source


def test_fhm_draws_classes_with_p_proportional_to_one_minus_the_diagonal_among_seen_classes():
    diagonal = [0.9, 0.5, 0.2, 0.0, 0.7, 0.4]
    seen = [0, 1, 2, 4, 5]  # class 3 never seen: never drawn, although its weight 1 - 0 is the largest
    source = fhm_with_confusion(diagonal, seen, num_sampled_classes=100_000)
    torch.manual_seed(0)
    drawn = source.sample_classes()
    counts = torch.bincount(drawn, minlength=len(diagonal)).numpy()
    assert counts[3] == 0
    weights = np.array([1 - d for d in diagonal])[seen]
    expected = weights / weights.sum() * drawn.numel()
    assert stats.chisquare(counts[seen], expected).pvalue > 0.01

    # every draw gives 12 rows of its class
    source.num_sampled_classes = 8
    torch.manual_seed(1)
    classes = source.sample_classes()
    torch.manual_seed(1)
    sample = source.bank.sample(source.sample_classes(), source.per_class)
    assert len(sample) == 8 * 12 and torch.equal(sample.labels, classes.repeat_interleave(12))


def test_fhm_official_draw_over_all_classes_drops_unseen_draws():
    diagonal = [0.9, 0.5, 0.2, 0.0, 0.7, 0.4]
    source = fhm_with_confusion(diagonal, [0, 1, 2, 4, 5], num_sampled_classes=100_000, class_draw="all")
    torch.manual_seed(0)
    drawn = source.sample_classes()
    counts = torch.bincount(drawn, minlength=len(diagonal)).numpy()
    weights = np.array([1 - d for d in diagonal])
    assert stats.chisquare(counts, weights / weights.sum() * drawn.numel()).pvalue > 0.01
    sample = source.bank.sample(drawn[:50], 12)
    kept = drawn[:50][drawn[:50] != 3]
    assert len(sample) == 12 * kept.numel() and torch.equal(sample.labels, kept.repeat_interleave(12))
    assert torch.equal(sample.skipped, drawn[:50][drawn[:50] == 3])


def test_fhm_count_indicators_are_scaled_by_their_maximum():
    frequency = ImageFrequency([100, 50, 10, 0])  # sum-normalised vector
    source = FeatureHallucination(num_classes=4, feature_dim=3, indicator="frequency", class_draw="all")
    source.bind_indicators({"frequency": frequency})
    torch.testing.assert_close(source.sampling_weights(), torch.tensor([0.0, 0.5, 0.9, 1.0]))
    source.normalize = "none"
    torch.testing.assert_close(source.sampling_weights(), 1 - torch.tensor([100, 50, 10, 0]) / 160.0)


# --- 10. hallucinated rows in the ROI heads -----------------------------------------------------


class Capture:
    """What the box predictor and the FHM saw in the last training step."""

    def __init__(self, model):
        self.seen = {}
        heads = model.roi_heads
        heads.box_predictor.register_forward_hook(lambda m, args, out: self.seen.update(scores=out[0]))
        for source in heads.feature_sources:
            source.register_forward_pre_hook(
                lambda m, args: self.seen.update(context=args[0], rng=torch.get_rng_state())
            )
            source.register_forward_hook(lambda m, args, out: self.seen.update(rows=out))


def fhm_source(**options):
    return L(FeatureHallucination)(num_classes=NUM_CLASSES, feature_dim=FEATURE_DIM, **options)


def test_fhm_statistics_are_the_box_head_features_of_the_dense_boxes():
    model = bacl_model(sources=[fhm_source()], loss=L(ForegroundBalanceLoss)(num_classes=NUM_CLASSES))
    capture = Capture(model)
    train_losses(model, make_batch(seed=0))
    context, rng = capture.seen["context"], capture.seen["rng"]
    # replay the dense boxes from the generator state the source started with
    torch.set_rng_state(rng)
    boxes = dense_boxes_per_image([t.gt_boxes.tensor for t in context.targets], [t.image_size for t in context.targets])
    labels = torch.cat([t.gt_classes.repeat_interleave(16) for t in context.targets])
    with torch.no_grad():
        features = context.box_head(context.pool(boxes))
    bank = model.roi_heads.feature_sources[0].bank
    present = labels.unique()
    assert torch.equal(bank.seen.nonzero().squeeze(1), present)
    for c in present.tolist():  # first batch of each class: copied, unbiased variance
        torch.testing.assert_close(bank.means[c], features[labels == c].mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bank.variances[c], features[labels == c].var(0, unbiased=True), rtol=1e-4, atol=1e-7)


def test_hallucinated_rows_train_the_classifier_only_and_count_in_the_divisor():
    loss = L(ForegroundBalanceLoss)(num_classes=NUM_CLASSES)
    model = bacl_model(sources=[fhm_source(num_sampled_classes=4, per_class=3)], loss=loss)
    train_losses(model, make_batch(seed=0), seed=0)  # fills the bank and the confusion matrix
    confusion = model.roi_heads.indicators["confusion"]
    state = {k: v.clone() for k, v in confusion.state_dict().items()}
    margins = confusion_margins(confusion.matrix())
    capture = Capture(model)
    losses = train_losses(model, make_batch(seed=1), seed=1)

    rows, scores = capture.seen["rows"], capture.seen["scores"]
    assert len(rows) == 12 and rows.proposal_boxes is None  # 4 draws x 3, classification only
    labels = torch.cat([p.gt_classes for p in capture.seen["context"].proposals] + [rows.labels])
    assert labels.numel() == scores.shape[0]
    # FCBL over the N RoIs and the R hallucinated rows, divided by N + R, with the previous step's matrix
    expected = margin_balanced_loss(scores, labels, margins)
    assert losses["loss_cls"].item() == pytest.approx(expected.item(), rel=1e-6)
    num_rois = scores.shape[0] - len(rows)
    assert losses["loss_cls"].item() != pytest.approx(
        margin_balanced_loss(scores[:num_rois], labels[:num_rois], margins).item(), rel=1e-4
    )
    # the confusion matrix counts the hallucinated rows (after the loss)
    counted = confusion.positives - state["positives"]
    assert torch.equal(counted, torch.bincount(labels[labels < NUM_CLASSES], minlength=NUM_CLASSES))

    # the same step without FHM: same RoIs and regression loss, another classification loss
    plain = bacl_model(loss=loss)
    plain.load_state_dict(model.state_dict(), strict=False)
    plain.roi_heads.indicators["confusion"].load_state_dict(state)
    plain_losses = train_losses(plain, make_batch(seed=1), seed=1)
    assert torch.equal(plain_losses["loss_box_reg"], losses["loss_box_reg"])
    assert plain_losses["loss_cls"].item() != pytest.approx(losses["loss_cls"].item(), rel=1e-4)
    assert plain_losses["loss_cls"].item() == pytest.approx(
        margin_balanced_loss(scores[:num_rois], labels[:num_rois], margins).item(), rel=1e-6
    )
