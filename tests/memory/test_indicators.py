"""Learning-status indicators against direct numpy computations."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ltdet2.memory import (
    CumulativeCount,
    ImageFrequency,
    InstanceFrequency,
    LearningStatusIndicator,
    MeanScore,
    PredictorBatch,
    SoftConfusionMatrix,
    TruePositiveRate,
)

C = 5


def batches(seed=0, steps=5):
    """Labels in [0, C] (C = background) with logits [N, C+1]."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        num = int(rng.integers(0, 40))
        labels = rng.integers(0, C + 1, num)
        labels[labels == 3] = C  # class 3 is never seen
        logits = rng.normal(size=(num, C + 1)).astype(np.float32)
        logits[np.arange(num), np.minimum(labels, C)] += 1.0
        out.append((labels, logits))
    return out


def test_static_frequencies_from_meta():
    meta = SimpleNamespace(image_count=np.array([10, 0, 30]), instance_count=np.array([12, 0, 88]))
    image = ImageFrequency.from_lvis_meta(meta)
    assert isinstance(image, LearningStatusIndicator)
    np.testing.assert_allclose(image.vector().numpy(), [0.25, 0, 0.75])
    instance = InstanceFrequency.from_lvis_meta(meta, normalize="none")
    assert instance.vector().tolist() == [12, 0, 88]
    assert InstanceFrequency.from_lvis_meta(meta, normalize="max").vector()[2] == 1
    instance.update(torch.tensor([0]))  # no-op
    with pytest.raises(NotImplementedError):
        image.matrix()
    with pytest.raises(ValueError, match="instance_count"):
        InstanceFrequency.from_lvis_meta(SimpleNamespace(image_count=np.ones(3)))
    with pytest.raises(ValueError, match=r"finite and >= 0; class indices \[1, 3\] hold \[nan, -2.0\]"):
        InstanceFrequency([1.0, np.nan, 3.0, -2.0])  # NaN would reach EBL / MFS unnoticed
    with pytest.raises(ValueError, match=r"non-empty 1-D array, got shape \(2, 2\)"):
        ImageFrequency(np.ones((2, 2)))


def test_cumulative_count():
    indicator = CumulativeCount(C)
    expected = np.zeros(C)
    for labels, _ in batches():
        indicator.update(torch.tensor(labels))
        expected += np.bincount(labels, minlength=C + 1)[:C]
    np.testing.assert_array_equal(indicator.vector().numpy(), expected)
    with pytest.raises(ValueError, match="labels must lie in"):
        indicator.update(torch.tensor([C + 1]))


def test_mean_score_alpha_power_update():
    indicator = MeanScore(C, alpha=0.9)
    np.testing.assert_allclose(indicator.vector().numpy(), np.full(C + 1, 0.01))
    expected = np.full(C + 1, 0.01)
    rng = np.random.default_rng(1)
    for labels, _ in batches(1):
        scores = rng.uniform(size=labels.size)
        indicator.update(torch.tensor(labels), torch.tensor(scores, dtype=torch.float32))
        for c in range(C):  # sequential definition: n single-entry EMAs with the batch mean
            entries = scores[labels == c]
            if entries.size:
                decay = 0.9**entries.size
                expected[c] = decay * expected[c] + (1 - decay) * entries.mean()
    vector = indicator.vector()
    assert vector.shape == (C + 1,) and vector[C] == pytest.approx(0.01) and vector[3] == pytest.approx(0.01)
    np.testing.assert_allclose(vector.numpy(), expected, rtol=1e-6)


def test_mean_score_equals_repeated_single_updates_for_equal_entries():
    a, b = MeanScore(3), MeanScore(3)
    a.update(torch.tensor([1, 1, 1]), torch.tensor([0.5, 0.5, 0.5]))
    for _ in range(3):
        b.update(torch.tensor([1]), torch.tensor([0.5]))
    torch.testing.assert_close(a.vector(), b.vector())


def test_true_positive_rate():
    indicator = TruePositiveRate(C)
    tp, pos = np.zeros(C), np.zeros(C)
    for labels, logits in batches(2):
        indicator.update(torch.tensor(labels), torch.tensor(logits))
        fg = labels < C
        pred = logits[fg].argmax(1)
        np.add.at(tp, labels[fg], pred == labels[fg])
        np.add.at(pos, labels[fg], 1)
    expected = np.where(pos > 0, tp / np.maximum(pos, 1), 0)
    np.testing.assert_allclose(indicator.vector().numpy(), expected, rtol=1e-6)
    assert indicator.vector()[3] == 0


def test_soft_confusion_matrix():
    indicator = SoftConfusionMatrix(C)
    numerator, pos = np.zeros((C, C)), np.zeros(C)
    for labels, logits in batches(3):
        indicator.update(torch.tensor(labels), torch.tensor(logits))
        fg = labels < C
        z = logits[fg, :C].astype(np.float64)  # foreground softmax: background logit left out
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        np.add.at(numerator, labels[fg], p)
        np.add.at(pos, labels[fg], 1)
    expected = numerator / np.maximum(pos, 1)[:, None]
    matrix = indicator.matrix()
    assert matrix.shape == (C, C)
    np.testing.assert_allclose(matrix.numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(indicator.vector().numpy(), np.diag(expected), rtol=1e-5, atol=1e-7)
    assert matrix[3].abs().sum() == 0  # never-seen row
    seen = pos > 0
    np.testing.assert_allclose(matrix.numpy()[seen].sum(1), 1.0, rtol=1e-5)
    # [N, C] logits (no background column) give the same rows
    other = SoftConfusionMatrix(C)
    labels, logits = batches(3)[0]
    fg = labels < C
    other.update(torch.tensor(labels[fg]), torch.tensor(logits[fg, :C]))
    ref = SoftConfusionMatrix(C)
    ref.update(torch.tensor(labels), torch.tensor(logits))
    torch.testing.assert_close(other.matrix(), ref.matrix())


@pytest.mark.parametrize("cls", [CumulativeCount, MeanScore, TruePositiveRate, SoftConfusionMatrix])
def test_indicator_state_dict_round_trip_and_dtype(cls):
    def feed(indicator, labels, logits):
        if cls is CumulativeCount:
            indicator.update(labels)
        elif cls is MeanScore:
            indicator.update(labels, logits.softmax(1)[torch.arange(len(labels)), labels])
        elif cls is TruePositiveRate:
            indicator.update(labels, logits)
        else:
            indicator.update(labels, logits)

    data = [(torch.tensor(labels), torch.tensor(z)) for labels, z in batches(4)]
    indicator = cls(C)
    for labels, logits in data[:3]:
        feed(indicator, labels, logits)
    restored = cls(C)
    restored.load_state_dict(indicator.state_dict())
    restored.half()  # dtype casts leave the state alone
    for labels, logits in data[3:]:
        feed(indicator, labels, logits)
        feed(restored, labels, logits)
    assert torch.equal(indicator.vector(), restored.vector())
    for name, buf in indicator.named_buffers():
        assert restored.get_buffer(name).dtype == buf.dtype
        assert torch.equal(restored.get_buffer(name), buf)
    indicator.reset()
    assert torch.equal(indicator.vector(), cls(C).vector())


# --- updates from the box predictor's rows --------------------------------------------------------


def background_sigmoid(logits):
    """A non-softmax scoring (BACL's): [sigmoid(z_i) * (1 - sigmoid(z_C)), sigmoid(z_C)]."""
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    return np.concatenate([p[:, :C] * (1 - p[:, C:]), p[:, C:]], axis=1).astype(np.float32)


def predictor_batches(seed=0, steps=4):
    """Rows of objects (one class each, several rows) and background rows (id -1), with logits and
    non-softmax probabilities, as numpy arrays."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        object_classes = rng.integers(0, C, 7)
        object_classes[object_classes == 3] = 4  # class 3 is never seen
        num = int(rng.integers(1, 30))
        object_ids = rng.integers(-1, 7, num)  # -1: background
        labels = np.where(object_ids >= 0, object_classes[np.maximum(object_ids, 0)], C)
        object_ids[object_ids >= 0] += 100 * len(out)  # ids need not be contiguous
        logits = rng.normal(size=(num, C + 1)).astype(np.float32) * 2
        out.append((labels, object_ids, logits, background_sigmoid(logits)))
    return out


def as_batch(labels, object_ids, logits, probabilities):
    return PredictorBatch(
        logits=torch.tensor(logits),
        labels=torch.tensor(labels),
        object_ids=torch.tensor(object_ids),
        probabilities=torch.tensor(probabilities),
    )


def test_static_and_count_indicators_update_from_predictions():
    static = ImageFrequency([4, 0, 2, 9, 1])
    count = CumulativeCount(C)
    expected = np.zeros(C)
    for rows in predictor_batches(5):
        static.update_from_predictions(as_batch(*rows))
        count.update_from_predictions(as_batch(*rows))
        expected += np.bincount(rows[0], minlength=C + 1)[:C]
    np.testing.assert_allclose(static.vector().numpy(), np.array([4, 0, 2, 9, 1]) / 16)
    np.testing.assert_array_equal(count.vector().numpy(), expected)
    assert expected[3] == 0 and expected.sum() > 10


def test_mean_score_updates_per_object_from_predictor_probabilities():
    indicator = MeanScore(C, alpha=0.8)
    expected = np.full(C + 1, 0.01)
    for labels, object_ids, logits, probabilities in predictor_batches(6):
        indicator.update_from_predictions(as_batch(labels, object_ids, logits, probabilities))
        entries = {c: [] for c in range(C)}
        for obj in np.unique(object_ids[object_ids >= 0]):  # one entry per object: mean over its rows
            rows = object_ids == obj
            entries[labels[rows][0]].append(probabilities[rows, labels[rows][0]].astype(np.float64).mean())
        for c, values in entries.items():  # sequential definition: n single-entry EMAs with their mean
            if values:
                decay = 0.8 ** len(values)
                expected[c] = decay * expected[c] + (1 - decay) * np.mean(values)
    np.testing.assert_allclose(indicator.vector().numpy(), expected, rtol=1e-6)
    assert expected[3] == 0.01 and (expected[[0, 1, 2, 4]] != 0.01).all()
    with pytest.raises(ValueError, match="MeanScore reads the predictor's class probabilities"):
        indicator.update_from_predictions(PredictorBatch(torch.zeros(1, C + 1), torch.tensor([0]), torch.tensor([0])))


def test_true_positive_rate_updates_by_foreground_argmax_of_probabilities():
    indicator = TruePositiveRate(C)
    tp, pos = np.zeros(C), np.zeros(C)
    for labels, object_ids, logits, probabilities in predictor_batches(7):
        indicator.update_from_predictions(as_batch(labels, object_ids, logits, probabilities))
        fg = labels < C
        np.add.at(tp, labels[fg], probabilities[fg, :C].argmax(1) == labels[fg])
        np.add.at(pos, labels[fg], 1)
    np.testing.assert_allclose(indicator.vector().numpy(), tp / np.maximum(pos, 1), rtol=1e-6)
    assert tp.sum() > 0 and pos[3] == 0


def test_true_positive_rate_counts_a_background_winner_by_its_best_foreground_class():
    # C = 5; background (column 5) has the highest probability in every row
    probabilities = torch.tensor(
        [
            [0.20, 0.05, 0.0, 0.0, 0.0, 0.75],  # label 0: best foreground 0 -> hit
            [0.20, 0.05, 0.0, 0.0, 0.0, 0.75],  # label 1: best foreground 0 -> miss
            [0.00, 0.10, 0.3, 0.0, 0.0, 0.60],
        ]
    )  # label 2: hit
    labels = torch.tensor([0, 1, 2])
    batch = PredictorBatch(
        logits=probabilities.log(), labels=labels, object_ids=torch.arange(3), probabilities=probabilities
    )
    indicator = TruePositiveRate(C)
    indicator.update_from_predictions(batch)
    assert indicator.vector().tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    over_all_columns = TruePositiveRate(C)
    over_all_columns.update(labels, probabilities)  # ``update`` with C+1 columns: background wins are misses
    assert over_all_columns.vector().tolist() == [0.0] * C


def test_soft_confusion_matrix_updates_from_foreground_logits_not_probabilities():
    indicator = SoftConfusionMatrix(C)
    numerator, pos = np.zeros((C, C)), np.zeros(C)
    for labels, object_ids, logits, probabilities in predictor_batches(8):
        indicator.update_from_predictions(as_batch(labels, object_ids, logits, probabilities))
        fg = labels < C
        z = logits[fg, :C].astype(np.float64)
        p = np.exp(z - z.max(1, keepdims=True))
        np.add.at(numerator, labels[fg], p / p.sum(1, keepdims=True))
        np.add.at(pos, labels[fg], 1)
    np.testing.assert_allclose(
        indicator.matrix().numpy(), numerator / np.maximum(pos, 1)[:, None], rtol=1e-5, atol=1e-7
    )
    assert not SoftConfusionMatrix.reads_probabilities


def test_predictor_batch_checks_shapes():
    logits = torch.zeros(3, C + 1)
    with pytest.raises(ValueError, match=r"labels must be \[3\]"):
        PredictorBatch(logits, torch.zeros(2, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=rf"probabilities must be \[3, {C + 1}\]"):
        PredictorBatch(
            logits,
            torch.zeros(3, dtype=torch.int64),
            torch.zeros(3, dtype=torch.int64),
            probabilities=torch.zeros(3, C),
            num_classes=C,  # the batch checks the probabilities against C+1 (whatever the logits' width)
        )
