"""Indicators with a scoring whose logits are not ``K+1`` wide (Seesaw's objectness-aware scoring, ``K+2`` logits):
the predictor batch holds ``[N, K+2]`` logits and ``[N, K+1]`` probabilities, it checks the probabilities against
``K+1`` (and the logits against the scoring's ``num_logits``), and the indicators that read scores (LOCE's mean score,
the true-positive rate, BACL's confusion matrix) update from the ``K+1`` probabilities (the ``K`` class logits) of a
Seesaw model as a direct computation does."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from detectron2.config import LazyCall as L
from detectron2.config import instantiate

from ltdet2.config.loce import add_mean_score, add_mfs
from ltdet2.config.seesaw import add_seesaw
from ltdet2.memory import MeanScore, PredictorBatch, SoftConfusionMatrix, TruePositiveRate
from ltdet2.modeling.box_predictors.scoring import ObjectnessSoftmaxScoring
from ltdet2.modeling.indicator_links import predictor_batch, update_indicators

from fixtures.indicators import BatchRecorder
from fixtures.models import NUM_CLASSES, TEST_DEVICE, make_batch, small_model_cfg, train_losses

K = 5


def objectness_rows(num_rows=12, num_classes=K, seed=0):
    """[N, K+2] float32 logits, labels in [0, K] (every class and background present), object ids (-1: background)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, num_classes + 2, generator=generator) * 2
    labels = torch.randint(0, num_classes + 1, (num_rows,), generator=generator)
    labels[: num_classes + 1] = torch.arange(num_classes + 1)
    # up to 4 objects per class (an object has one class), several rows each
    object_ids = torch.where(labels < num_classes, labels * 10 + torch.arange(num_rows) % 4, -1)
    return logits, labels, object_ids


def direct_objectness_probabilities(logits):
    """softmax(z[:K])_j * p_fg for the K classes, p_bg in column K; (p_fg, p_bg) = softmax(z[K:]). Python floats."""
    num_classes = logits.shape[1] - 2
    rows = []
    for z in logits.double().tolist():
        classes = [math.exp(v) for v in z[:num_classes]]
        fg, bg = math.exp(z[num_classes]), math.exp(z[num_classes + 1])
        rows.append([c / sum(classes) * fg / (fg + bg) for c in classes] + [bg / (fg + bg)])
    return torch.tensor(rows, dtype=torch.float64)


# --- the predictor batch: K+1 probabilities whatever the logits' width -----------------------------------------------


def test_predictor_batch_takes_k_plus_1_probabilities_with_k_plus_2_logits():
    logits, labels, object_ids = objectness_rows()
    probabilities = ObjectnessSoftmaxScoring().probabilities(logits)
    assert probabilities.shape == (len(logits), K + 1)
    batch = PredictorBatch(logits, labels, object_ids, probabilities, num_classes=K, num_logits=K + 2)
    assert batch.class_probabilities("reader", K) is probabilities
    assert torch.equal(batch.class_logits("reader", K), logits[:, :K])  # the class logits, not the objectness pair
    # the checks are init-only: a copy of the batch need not repeat them, and the fields are the data only
    assert [f.name for f in dataclasses.fields(batch)] == ["logits", "labels", "object_ids", "probabilities"]
    copy = dataclasses.replace(batch, labels=labels.clone())
    assert copy.probabilities is probabilities
    # without K and L the batch checks rows only (its readers check their own K)
    PredictorBatch(logits, labels, object_ids, probabilities)


def test_predictor_batch_refuses_probabilities_that_are_not_k_plus_1_columns():
    logits, labels, object_ids = objectness_rows()
    probabilities = ObjectnessSoftmaxScoring().probabilities(logits)
    for wrong in (probabilities[:, :K], torch.cat([probabilities, probabilities[:, :1]], 1)):  # K and K+2 columns
        with pytest.raises(
            ValueError,
            match=rf"PredictorBatch: probabilities must be \[12, {K + 1}\] \(the C classes, then background in column "
            rf"C, whatever the logits' width: {K + 2} here\), got \(12, {wrong.shape[1]}\)",
        ):
            PredictorBatch(logits, labels, object_ids, wrong, num_classes=K, num_logits=K + 2)
    with pytest.raises(ValueError, match=r"probabilities must be \[12, C\+1\]"):
        PredictorBatch(logits, labels, object_ids, probabilities[:5])  # wrong rows: refused without K too
    with pytest.raises(ValueError, match=rf"logits must be \[12, {K + 1}\] \(the scoring's num_logits\)"):
        PredictorBatch(logits, labels, object_ids, probabilities, num_classes=K, num_logits=K + 1)
    with pytest.raises(ValueError, match=rf"logits must start with the {K} classes' columns"):
        PredictorBatch(logits[:, : K - 1], labels, object_ids, num_classes=K)
    # built without K, the reader checks its own: a clear error naming it
    batch = PredictorBatch(logits, labels, object_ids, probabilities[:, :K])
    with pytest.raises(ValueError, match=rf"MeanScore reads \[N, {K + 1}\] class probabilities \({K} classes, then"):
        MeanScore(K).update_from_predictions(batch)
    with pytest.raises(ValueError, match=rf"TruePositiveRate reads \[N, {K + 1}\] class probabilities"):
        TruePositiveRate(K).update_from_predictions(batch)
    with pytest.raises(ValueError, match=rf"SoftConfusionMatrix reads the {K + 3} classes' logits"):
        SoftConfusionMatrix(K + 3).update_from_predictions(batch)
    # predictor_batch with a scoring that gives K columns (no background): refused when the batch is built
    indicators = {"mean_score": MeanScore(K)}
    with pytest.raises(ValueError, match=rf"probabilities must be \[12, {K + 1}\]"):
        predictor_batch(
            indicators, logits, labels, object_ids, lambda z: z[:, :K].softmax(1), num_classes=K, num_logits=K + 2
        )


def test_indicators_read_the_k_plus_1_probabilities_and_the_k_class_logits_of_k_plus_2_logits():
    logits, labels, object_ids = objectness_rows(num_rows=40, seed=1)
    indicators = {
        "mean_score": MeanScore(K, alpha=0.8),
        "tpr": TruePositiveRate(K),
        "confusion": SoftConfusionMatrix(K),
    }
    scoring = ObjectnessSoftmaxScoring()
    batch = predictor_batch(
        indicators, logits, labels, object_ids, scoring.probabilities, num_classes=K, num_logits=K + 2
    )
    update_indicators(indicators, batch)
    probabilities = direct_objectness_probabilities(logits)
    torch.testing.assert_close(batch.probabilities.double(), probabilities, rtol=1e-5, atol=1e-7)
    foreground = labels < K
    # mean score: one entry per object, the mean of its rows' probability of its class
    expected = np.full(K + 1, 0.01)
    for c in range(K):
        entries = [
            probabilities[object_ids == obj, c].mean().item() for obj in torch.unique(object_ids[labels == c]).tolist()
        ]
        if entries:
            decay = 0.8 ** len(entries)
            expected[c] = decay * 0.01 + (1 - decay) * np.mean(entries)
    np.testing.assert_allclose(indicators["mean_score"].vector().numpy(), expected, rtol=1e-5)
    # true-positive rate: the argmax over the K class probabilities
    hits = probabilities[foreground, :K].argmax(1) == labels[foreground]
    positives = torch.bincount(labels[foreground], minlength=K)
    np.testing.assert_allclose(
        indicators["tpr"].vector().numpy(),
        (torch.bincount(labels[foreground][hits], minlength=K) / positives.clamp(min=1)).numpy(),
    )
    # confusion matrix: the softmax over the K class logits (the objectness pair left out)
    softmax = logits[foreground, :K].double().softmax(1)
    numerator = torch.zeros(K, K, dtype=torch.float64).index_add_(0, labels[foreground], softmax)
    torch.testing.assert_close(
        indicators["confusion"].matrix().double(), numerator / positives.clamp(min=1)[:, None], rtol=1e-5, atol=1e-7
    )


# --- a Seesaw model with score-reading indicators trains -------------------------------------------------------------


def seesaw_cfg_with_indicators():
    cfg = small_model_cfg()
    add_seesaw(cfg)
    add_mean_score(cfg)  # LOCE's mean score (the guide of EBL and MFS), before the loss
    indicators = dict(cfg.roi_heads.indicators)
    indicators["tpr"] = L(TruePositiveRate)(num_classes=NUM_CLASSES)
    indicators["confusion"] = L(SoftConfusionMatrix)(num_classes=NUM_CLASSES)
    indicators["recorder"] = L(BatchRecorder)(num_classes=NUM_CLASSES)
    cfg.roi_heads.indicators = indicators
    return cfg


def expected_mean_scores(batch, probabilities, before, alpha=0.9):
    """MeanScore after one update from ``batch`` starting at ``before``, object by object (LOCE)."""
    expected = before.astype(np.float64).copy()
    labels, object_ids = batch.labels.numpy(), batch.object_ids.numpy()
    for c in range(NUM_CLASSES):
        entries = [
            probabilities[object_ids == obj, c].mean().item()
            for obj in np.unique(object_ids[(labels == c) & (object_ids >= 0)])
        ]
        if entries:
            decay = alpha ** len(entries)
            expected[c] = decay * expected[c] + (1 - decay) * np.mean(entries)
    return expected


def test_seesaw_with_mean_score_and_score_reading_indicators_trains():
    cfg = seesaw_cfg_with_indicators()
    torch.manual_seed(0)
    model = instantiate(cfg).to(TEST_DEVICE)
    assert model.roi_heads.box_predictor.num_logits == NUM_CLASSES + 2
    indicators = model.roi_heads.indicators
    mean_score = indicators["mean_score"]
    initial = mean_score.vector().cpu().numpy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for iteration in range(3):
        before = mean_score.vector().cpu().numpy()
        losses = train_losses(model, make_batch(seed=iteration), seed=iteration + 1)
        assert all(torch.isfinite(v).all() for v in losses.values()), losses
        if iteration == 0:
            recorded = indicators["recorder"].batches[0]
            assert recorded.logits.shape[1] == NUM_CLASSES + 2 and recorded.probabilities.shape[1] == NUM_CLASSES + 1
            # the probabilities are the objectness-aware ones of the K+2 logits, and the indicators read them
            probabilities = direct_objectness_probabilities(recorded.logits.float())
            torch.testing.assert_close(recorded.probabilities.double(), probabilities, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(
                mean_score.vector().cpu().numpy(), expected_mean_scores(recorded, probabilities, before), rtol=1e-5
            )
            foreground = recorded.labels < NUM_CLASSES
            labels = recorded.labels[foreground]
            hits = probabilities[foreground, :NUM_CLASSES].argmax(1) == labels
            positives = torch.bincount(labels, minlength=NUM_CLASSES)
            np.testing.assert_allclose(
                indicators["tpr"].vector().cpu().numpy(),
                (torch.bincount(labels[hits], minlength=NUM_CLASSES) / positives.clamp(min=1)).numpy(),
            )
            softmax = recorded.logits[foreground, :NUM_CLASSES].double().softmax(1)
            numerator = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.float64).index_add_(0, labels, softmax)
            torch.testing.assert_close(
                indicators["confusion"].matrix().cpu().double(),
                numerator / positives.clamp(min=1)[:, None],
                rtol=1e-5,
                atol=1e-7,
            )
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    after = mean_score.vector().cpu().numpy()
    seen = indicators["seesaw_count"].counts.cpu().numpy() > 0
    assert seen.any() and (after[:NUM_CLASSES][seen] != initial[:NUM_CLASSES][seen]).all()
    assert after[NUM_CLASSES] == initial[NUM_CLASSES] == pytest.approx(0.01)  # the background entry is a constant
    assert ((after >= 0) & (after <= 1)).all()


def test_seesaw_with_loces_memory_feature_sampler_trains():
    """MFS (LOCE) samples classes by the mean scores of the Seesaw predictor's K+1 probabilities."""
    cfg = small_model_cfg()
    add_seesaw(cfg)
    add_mfs(cfg, capacity=8, num_sampled_classes=3, per_class=2)
    torch.manual_seed(0)
    model = instantiate(cfg).to(TEST_DEVICE)
    for iteration in range(2):
        losses = train_losses(model, make_batch(seed=iteration), seed=iteration + 1)
        assert all(torch.isfinite(v).all() for v in losses.values()), losses
    scores = model.roi_heads.indicators["mean_score"].vector()
    assert (scores[:NUM_CLASSES] != 0.01).any()
