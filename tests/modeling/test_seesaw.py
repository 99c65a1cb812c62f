"""Seesaw loss (ltdet2.modeling.losses.seesaw, configs/seesaw.py, projects/seesaw.py): the loss equals a direct
computation of the paper's equations (with the official eps clamp and N clamped at 1) on small seeded inputs, its
gradients flow through the logits only, the class counts it reads are updated before it and come back from a
checkpoint, the objectness-aware scoring and the normalised linear classifier compute what the official code does,
and the LT-Shapes project trains a few iterations."""

import math

import pytest
import torch
from torch.nn import functional as F

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.utils.events import EventStorage

from ltdet2.config.long_tail import use_long_tail_heads
from ltdet2.config.seesaw import add_seesaw
from ltdet2.memory import CumulativeCount
from ltdet2.modeling.box_predictors.scoring import ObjectnessSoftmaxScoring, SoftmaxScoring
from ltdet2.modeling.classifiers import CosineClassifier
from ltdet2.modeling.losses import SeesawLoss, SeesawNormalizedLinear, objectness_softmax_loss, seesaw_loss
from ltdet2.modeling.losses.seesaw import objectness_softmax_probs, seesaw_loss_terms

from fixtures.models import (
    NUM_CLASSES,
    SMALL_BOX_FEATURE_DIM,
    TEST_DEVICE,
    TINY_LT_SHAPES,
    make_batch,
    predictor_rows_with_extras,
    small_model_cfg,
    train_losses,
    train_short_one_phase_project,
)

K = 5
COUNTS = [0, 3, 50, 1000, 7]  # class 0 never seen: N clamped at 1


def random_rows(num_rows=24, num_classes=K, seed=0, scale=3.0):
    """[N, K+2] float64 logits, labels in [0, K] (background rows and every class present), [N] weights."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, num_classes + 2, generator=generator, dtype=torch.float64) * scale
    labels = torch.randint(0, num_classes + 1, (num_rows,), generator=generator)
    labels[: num_classes + 1] = torch.arange(num_classes + 1)
    weights = torch.rand(num_rows, generator=generator, dtype=torch.float64) * 2
    return logits, labels, weights


# --- the paper's equations, directly ----------------------------------------------------------------------------


def direct_seesaw(logits, labels, counts, p, q, eps, weights=None):
    """The paper's sigma_hat_i = e^{z_i} / (sum_{j != i} S_ij e^{z_j} + e^{z_i}), S_ij = M_ij C_ij, over the K class
    logits of the foreground rows; M_ij = (N_j / N_i)^p if N_j < N_i (N clamped at 1, official); C_ij = (sigma_j /
    sigma_i)^q if sigma_j > sigma_i, sigma_i clamped at eps in the ratio (official; eps=0: the equation as written);
    plus the objectness cross-entropy on every row; sums divided by the number of rows. Python floats."""
    num_rows, num_classes = logits.shape[0], logits.shape[1] - 2
    n = [max(float(c), 1.0) for c in counts]
    total = 0.0
    for row in range(num_rows):
        z = logits[row].tolist()
        label = int(labels[row])
        w = 1.0 if weights is None else float(weights[row])
        fg, bg = z[num_classes], z[num_classes + 1]
        objectness_nll = -(fg if label < num_classes else bg) + math.log(math.exp(fg) + math.exp(bg))
        total += w * objectness_nll
        if label == num_classes:
            continue
        i = label
        norm = sum(math.exp(v) for v in z[:num_classes])
        sigma = [math.exp(v) / norm for v in z[:num_classes]]
        denominator = math.exp(z[i])
        for j in range(num_classes):
            if j == i:
                continue
            m = (n[j] / n[i]) ** p if n[j] < n[i] else 1.0
            ratio = sigma[j] / max(sigma[i], eps)
            c = ratio**q if ratio > 1.0 else 1.0
            denominator += m * c * math.exp(z[j])
        total += w * -math.log(math.exp(z[i]) / denominator)
    return total / num_rows


@pytest.mark.parametrize("p, q", [(0.8, 2.0), (0.8, 0.0), (0.0, 2.0), (0.0, 0.0), (1.5, 1.0)])
@pytest.mark.parametrize("eps", [1e-2, 0.0])
def test_seesaw_loss_equals_the_papers_equations(p, q, eps):
    logits, labels, weights = random_rows()
    counts = torch.tensor(COUNTS, dtype=torch.float32)
    # the clamp matters on these rows: some ground-truth probabilities are below 1e-2
    sigma = F.softmax(logits[:, :K], dim=1)
    foreground = labels < K
    assert (sigma[foreground].gather(1, labels[foreground][:, None]) < 1e-2).any()
    loss = seesaw_loss(logits, labels, counts, p=p, q=q, eps=eps)
    assert loss.item() == pytest.approx(direct_seesaw(logits, labels, COUNTS, p, q, eps), rel=1e-10)
    weighted = seesaw_loss(logits, labels, counts, p=p, q=q, eps=eps, weights=weights)
    assert weighted.item() == pytest.approx(direct_seesaw(logits, labels, COUNTS, p, q, eps, weights), rel=1e-10)


def test_seesaw_factors_do_what_the_paper_says_they_do():
    """Mitigation lowers the penalty a frequent class's rows put on rarer classes only; compensation raises the penalty
    of a class scoring above the ground truth."""
    logits = torch.zeros(1, K + 2, dtype=torch.float64)
    frequent = torch.tensor([3])  # N = 1000: every other class is rarer
    rare = torch.tensor([1])  # N = 3: classes 2, 3 and 4 are more frequent, class 0 (never seen) rarer
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    plain = seesaw_loss(logits, frequent, counts, p=0.0, q=0.0)
    assert seesaw_loss(logits, frequent, counts, p=0.8, q=0.0) < plain  # all negatives mitigated
    assert seesaw_loss(logits, rare, counts, p=0.8, q=0.0) < plain  # class 0 only (N=1 < 3)
    never_seen = torch.tensor([0])  # N = 1 (clamped): no class is rarer, nothing mitigated
    assert seesaw_loss(logits, never_seen, counts, p=0.8, q=0.0) == pytest.approx(plain.item(), rel=1e-12)
    confused = logits.clone()
    confused[0, 2] = 2.0  # class 2 scores above the ground truth
    assert seesaw_loss(confused, rare, counts, p=0.0, q=2.0) > seesaw_loss(confused, rare, counts, p=0.0, q=0.0)


def test_gradients_flow_through_the_logits_only():
    """The compensation factor uses the detached probabilities and N is a count: the gradient is that of a
    cross-entropy of ``z + log S`` with S a constant."""
    logits, labels, weights = random_rows(seed=1)
    counts = torch.tensor(COUNTS, dtype=torch.float64, requires_grad=True)
    z = logits.clone().requires_grad_()
    seesaw_loss(z, labels, counts, weights=weights).backward()
    assert counts.grad is None

    # the same loss with S computed once, by hand, as constants
    n = counts.detach().clamp(min=1)
    sigma = F.softmax(logits[:, :K], dim=1)
    log_s = torch.zeros(len(labels), K, dtype=torch.float64)
    for row, label in enumerate(labels.tolist()):
        if label == K:
            continue
        for j in range(K):
            if j == label:
                continue
            m = (n[j] / n[label]) ** 0.8 if n[j] < n[label] else 1.0
            ratio = sigma[row, j] / max(sigma[row, label], 1e-2)
            c = ratio**2.0 if ratio > 1 else 1.0
            log_s[row, j] = math.log(m * c)
    z_ref = logits.clone().requires_grad_()
    foreground = labels < K
    class_term = F.cross_entropy(z_ref[:, :K][foreground] + log_s[foreground], labels[foreground], reduction="none")
    objectness = F.cross_entropy(z_ref[:, K:], (~foreground).long(), reduction="none")
    reference = ((class_term * weights[foreground]).sum() + (objectness * weights).sum()) / len(labels)
    reference.backward()
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-12, atol=1e-15)


def test_empty_batches_and_inconsistent_inputs():
    z = torch.zeros(0, K + 2, requires_grad=True)
    loss = seesaw_loss(z, torch.zeros(0, dtype=torch.int64), torch.ones(K))
    assert loss.item() == 0 and loss.requires_grad
    logits, labels, _ = random_rows()
    with pytest.raises(ValueError, match=r"counts must be \[5\] for logits with 5 class columns"):
        seesaw_loss(logits, labels, torch.ones(K + 1))
    with pytest.raises(ValueError, match="needs the cumulative counts"):
        seesaw_loss(logits, labels, None)
    with pytest.raises(ValueError, match=r"must be \[N, K\+2\]"):
        seesaw_loss(logits[:, :2], labels, None, p=0.0)
    with pytest.raises(ValueError, match="p must be a finite number >= 0"):
        SeesawLoss(p=-1)
    # the terms: the class part over the foreground rows, objectness (column K foreground, K+1 background) over all,
    # each divided by N (the official avg_factor: every sampled row)
    classes, objectness = seesaw_loss_terms(logits, labels, torch.tensor(COUNTS))
    assert objectness.item() == pytest.approx(F.cross_entropy(logits[:, K:], (labels == K).long()).item(), rel=1e-12)
    foreground = labels < K
    class_sum = F.cross_entropy(logits[foreground, :K], labels[foreground], reduction="sum")
    plain_classes, _ = seesaw_loss_terms(logits, labels, None, p=0.0, q=0.0)
    assert plain_classes.item() == pytest.approx(class_sum.item() / len(labels), rel=1e-12)
    assert (classes + objectness).item() == pytest.approx(direct_seesaw(logits, labels, COUNTS, 0.8, 2.0, 1e-2))


# --- the objectness-aware scoring and the normalised linear classifier -------------------------------------------


def test_objectness_scoring_probabilities_loss_and_logit_count():
    scoring = ObjectnessSoftmaxScoring()
    assert scoring.num_logits(K) == K + 2 and SoftmaxScoring().num_logits(K) == K + 1
    logits, labels, weights = random_rows()
    probabilities = scoring.probabilities(logits)
    assert probabilities.shape == (len(logits), K + 1)
    for row in range(len(logits)):
        z = logits[row].tolist()
        classes = [math.exp(v) for v in z[:K]]
        fg, bg = math.exp(z[K]), math.exp(z[K + 1])
        expected = [c / sum(classes) * fg / (fg + bg) for c in classes] + [bg / (fg + bg)]
        assert probabilities[row].tolist() == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(len(logits), dtype=torch.float64))
    torch.testing.assert_close(probabilities, objectness_softmax_probs(logits))
    # the default loss: Seesaw without its factors
    assert scoring.loss(logits, labels, weights).item() == pytest.approx(
        direct_seesaw(logits, labels, COUNTS, 0.0, 0.0, 0.0, weights), rel=1e-12
    )
    torch.testing.assert_close(scoring.loss(logits, labels), objectness_softmax_loss(logits, labels))


def test_normalized_linear_is_mmdetections_normed_linear_with_k_plus_2_outputs():
    torch.manual_seed(0)
    classifier = SeesawNormalizedLinear(8, K)
    assert classifier.weight.shape == (K + 2, 8) and classifier.bias.shape == (K + 2,)
    assert classifier.num_classes == K and not classifier.scale.requires_grad and float(classifier.scale) == 20.0
    assert torch.equal(classifier.bias, torch.zeros(K + 2))
    with torch.no_grad():
        classifier.bias.copy_(torch.arange(K + 2, dtype=torch.float32) / 10)
    x = torch.randn(4, 8)
    # NormedLinear: x / (||x|| + eps) * temperature, w / (||w|| + eps), then F.linear with the bias
    x_ = x / (x.norm(dim=1, keepdim=True) + 1e-6) * 20
    w_ = classifier.weight / (classifier.weight.norm(dim=1, keepdim=True) + 1e-6)
    torch.testing.assert_close(classifier(x), F.linear(x_, w_, classifier.bias), rtol=1e-6, atol=1e-6)
    assert SeesawNormalizedLinear(8, K, bias=False).bias is None


def seesaw_model(**options):
    """The small model (NUM_CLASSES classes) with ``add_seesaw(model, **options)``."""
    cfg = small_model_cfg()
    add_seesaw(cfg, **options)
    torch.manual_seed(0)
    return instantiate(cfg).to(TEST_DEVICE)


def test_add_seesaw_builds_the_k_plus_2_predictor():
    model = seesaw_model()
    predictor = model.roi_heads.box_predictor
    assert isinstance(predictor.scoring, ObjectnessSoftmaxScoring) and predictor.num_logits == NUM_CLASSES + 2
    assert isinstance(predictor.cls_score, SeesawNormalizedLinear) and predictor.cls_score.num_classes == NUM_CLASSES
    assert (
        isinstance(predictor.cls_loss, SeesawLoss)
        and predictor.cls_loss.bound_indicator is (model.roi_heads.indicators["seesaw_count"])
    )
    indicator = model.roi_heads.indicators["seesaw_count"]
    assert isinstance(indicator, CumulativeCount) and indicator.update_timing == "before_loss"
    assert indicator.sync == "local"  # the official buffer is per GPU
    # without the normalised linear: the predictor's own linear cls_score, sized K+2, Detectron2's init
    predictor = seesaw_model(normalized_linear=False).roi_heads.box_predictor
    assert isinstance(predictor.cls_score, torch.nn.Linear) and predictor.cls_score.out_features == NUM_CLASSES + 2
    assert torch.equal(predictor.cls_score.bias, torch.zeros(NUM_CLASSES + 2, device=TEST_DEVICE))
    assert predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.1)


def test_a_classifier_with_another_logit_count_and_loss_scoring_mismatches_are_refused():
    cfg = small_model_cfg()
    add_seesaw(cfg)
    cfg.roi_heads.box_predictor.classifier = L(CosineClassifier)(
        input_dim=SMALL_BOX_FEATURE_DIM, num_classes=NUM_CLASSES
    )
    with pytest.raises(
        ValueError,
        match=r"CosineClassifier gives 7 logit columns, but the scoring "
        r"ObjectnessSoftmaxScoring \('objectness_softmax'\) takes 8 for 6 classes",
    ):
        instantiate(cfg)
    cfg = small_model_cfg()
    add_seesaw(cfg)
    cfg.roi_heads.box_predictor.scoring = L(SoftmaxScoring)()
    with pytest.raises(ValueError, match="SeesawLoss is a loss for class_scoring='objectness_softmax'"):
        instantiate(cfg)
    # the helper refuses a predictor whose classification is someone else's
    for key, value in (("cls_loss", L(SeesawLoss)()), ("classifier", L(CosineClassifier)(input_dim=1, num_classes=1))):
        cfg = small_model_cfg()
        use_long_tail_heads(cfg)
        cfg.roi_heads.box_predictor[key] = value
        with pytest.raises(ValueError, match=f"already has .* \\({key}\\)"):
            add_seesaw(cfg)


def sampled_foreground_counts(model):
    labels = torch.cat([p.gt_classes for p in model.roi_heads.latest_sampled_proposals])
    return torch.bincount(labels[labels < NUM_CLASSES], minlength=NUM_CLASSES).cpu()


def test_the_counts_are_updated_before_the_loss_and_restored_from_a_checkpoint(tmp_path):
    model = seesaw_model()
    loss = model.roi_heads.box_predictor.cls_loss
    indicator = model.roi_heads.indicators["seesaw_count"]
    read = []
    counts = loss.counts
    loss.counts = lambda num_classes: read.append(counts(num_classes).clone()) or read[-1]

    train_losses(model, make_batch(seed=0))
    first = sampled_foreground_counts(model)
    assert first.sum() > 0
    # the loss read N with this iteration's rows already counted
    assert torch.equal(read[0].cpu(), first.float()) and torch.equal(indicator.counts.cpu(), first)
    train_losses(model, make_batch(seed=1), seed=2)
    second = sampled_foreground_counts(model)
    assert torch.equal(read[1].cpu(), (first + second).float()) and torch.equal(indicator.counts.cpu(), first + second)

    # the counts are a buffer of the model: checkpointed and restored
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_test")
    key = "roi_heads.indicators.seesaw_count.counts"
    assert torch.equal(torch.load(tmp_path / "model_test.pth", weights_only=False)["model"][key].cpu(), first + second)
    restored = seesaw_model()
    assert restored.roi_heads.indicators["seesaw_count"].counts.sum() == 0
    DetectionCheckpointer(restored).load(str(tmp_path / "model_test.pth"))
    assert torch.equal(restored.roi_heads.indicators["seesaw_count"].counts, indicator.counts)
    # and the restored model computes the same loss on the next batch
    torch.testing.assert_close(
        train_losses(restored, make_batch(seed=3), seed=4)["loss_cls"],
        train_losses(model, make_batch(seed=3), seed=4)["loss_cls"],
    )


def test_an_indicator_updated_after_the_loss_gives_the_previous_iterations_counts():
    cfg = small_model_cfg()
    add_seesaw(cfg)
    cfg.roi_heads.indicators["seesaw_count"] = L(CumulativeCount)(num_classes=NUM_CLASSES)
    torch.manual_seed(0)
    model = instantiate(cfg).to(TEST_DEVICE)
    loss = model.roi_heads.box_predictor.cls_loss
    read = []
    counts = loss.counts
    loss.counts = lambda num_classes: read.append(counts(num_classes).clone()) or read[-1]
    train_losses(model, make_batch(seed=0))
    assert read[0].sum() == 0 and model.roi_heads.indicators["seesaw_count"].counts.sum() > 0


def test_training_loss_and_inference_of_the_seesaw_predictor():
    """loss_cls is :func:`seesaw_loss` of the predictor's K+2 logits over the sampled RoIs with the counts after
    this batch; inference scores detections with the objectness-aware probabilities."""
    model = seesaw_model()
    predictor = model.roi_heads.box_predictor
    seen = {}
    hook = predictor.register_forward_hook(lambda m, args, out: seen.update(logits=out[0]))
    losses = train_losses(model, make_batch())
    hook.remove()
    labels = torch.cat([p.gt_classes for p in model.roi_heads.latest_sampled_proposals])
    assert seen["logits"].shape == (len(labels), NUM_CLASSES + 2)
    counts = model.roi_heads.indicators["seesaw_count"].counts
    expected = seesaw_loss(seen["logits"], labels, counts.float())
    torch.testing.assert_close(losses["loss_cls"], expected, rtol=1e-6, atol=0)

    model.eval()
    predictor.test_score_thresh = 0.0
    with torch.no_grad():
        detections = model(make_batch())
    assert sum(len(d["instances"]) for d in detections) > 0
    for d in detections:
        scores = d["instances"].scores
        assert ((scores >= 0) & (scores <= 1)).all()


def test_predictor_losses_with_extra_rows_and_their_weights():
    predictor = seesaw_model(normalized_linear=False).roi_heads.box_predictor
    indicator_counts = torch.tensor([5, 0, 2, 9, 1, 3], device=TEST_DEVICE)
    predictor.cls_loss.bound_indicator.counts.copy_(indicator_counts)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(7, NUM_CLASSES + 2, generator=generator).to(TEST_DEVICE)
    from ltdet2.modeling.extra_rows import ExtraRowsBatch

    labels, rows, proposals, deltas = predictor_rows_with_extras()
    with EventStorage(0) as storage:
        losses = predictor.losses((logits, deltas), [proposals], ExtraRowsBatch([rows]))
    all_labels = torch.cat([labels, rows.labels])
    weights = torch.cat([torch.ones(4, device=TEST_DEVICE), rows.weights])
    expected = direct_seesaw(
        logits.double().cpu(), all_labels.cpu(), indicator_counts.tolist(), 0.8, 2.0, 1e-2, weights.double().cpu()
    )
    assert losses["loss_cls"].item() == pytest.approx(expected, rel=1e-5)
    # the logged accuracies are those of the test-time decisions (argmax of the K+1 probabilities)
    decisions = objectness_softmax_probs(logits[:4]).argmax(1)
    accuracy = (decisions == labels).float().mean().item()
    assert storage.latest()["fast_rcnn/cls_accuracy"][0] == pytest.approx(accuracy)


# --- the LT-Shapes project ------------------------------------------------------------------------------------------


def test_seesaw_project_trains_a_few_iterations(tmp_path, tiny_dataset):
    num_classes = TINY_LT_SHAPES.num_classes
    # Seesaw's pieces hold a copy of the class count (ltdet2.config.seesaw)
    overrides = [
        f"model.roi_heads.indicators.seesaw_count.num_classes={num_classes}",
        f"model.roi_heads.box_predictor.cls_loss.num_classes={num_classes}",
        f"model.roi_heads.box_predictor.classifier.num_classes={num_classes}",
    ]
    _, final = train_short_one_phase_project("seesaw.py", tiny_dataset, str(tmp_path / "run"), overrides)
    counts = final["roi_heads.indicators.seesaw_count.counts"]
    assert counts.shape == (num_classes,) and counts.sum() > 0
    assert final["roi_heads.box_predictor.cls_score.weight"].shape[0] == num_classes + 2
