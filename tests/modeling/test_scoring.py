"""Class scorings (ltdet2.modeling.box_predictors.scoring): each one's probabilities, default loss and bias
initialisation equal a direct computation; LongTailOutputLayers scores, trains and initialises with the scoring
it is given (a custom one included), and the ``class_scoring`` names build the same predictors as before."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ltdet2.modeling.box_predictors import (
    ClassScoring,
    SigmoidBackgroundScoring,
    SigmoidCEScoring,
    SoftmaxScoring,
)
from ltdet2.modeling.classifiers import CosineClassifier
from ltdet2.modeling.extra_rows import ExtraRowsBatch
from ltdet2.modeling.losses import ForegroundBalanceLoss

from fixtures.models import (
    NUM_CLASSES,
    SMALL_BOX_FEATURE_DIM,
    TEST_DEVICE,
    long_tail_cfg,
    make_batch,
    predictor_rows_with_extras,
    small_model_cfg,
    train_losses,
)


def random_rows(num_rows=30, num_classes=4, seed=0, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, num_classes + 1, generator=generator, dtype=torch.float64) * scale
    labels = torch.randint(0, num_classes + 1, (num_rows,), generator=generator)
    labels[:3] = num_classes  # background rows for sure
    labels[3] = 0
    weights = torch.rand(num_rows, generator=generator, dtype=torch.float64) * 2
    return logits, labels, weights


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def bce(z, target):
    return -log_sigmoid(z) if target else -log_sigmoid(-z)


def sigmoid(x):
    return math.exp(log_sigmoid(x))


# --- each scoring against a direct computation -----------------------------------------------------------------


def test_softmax_scoring_equals_a_direct_computation():
    scoring = SoftmaxScoring()
    logits, labels, weights = random_rows()
    n, columns = logits.shape
    for row in range(n):
        z = logits[row].tolist()
        norm = sum(math.exp(v) for v in z)
        assert scoring.probabilities(logits)[row].tolist() == pytest.approx([math.exp(v) / norm for v in z], rel=1e-12)
    per_row = [
        -logits[row, labels[row]].item() + math.log(sum(math.exp(v) for v in logits[row].tolist())) for row in range(n)
    ]
    assert scoring.loss(logits, labels).item() == pytest.approx(sum(per_row) / n, rel=1e-12)
    weighted = sum(w * v for w, v in zip(weights.tolist(), per_row)) / n
    assert scoring.loss(logits, labels, weights).item() == pytest.approx(weighted, rel=1e-12)
    # Detectron2's mean cross-entropy without weights
    torch.testing.assert_close(scoring.loss(logits, labels), F.cross_entropy(logits, labels), rtol=1e-12, atol=0)
    bias = torch.zeros(columns)
    scoring.init_bias(bias)
    assert torch.equal(bias, torch.zeros(columns))  # Detectron2's zeros, left
    empty = logits[:0].clone().requires_grad_()
    loss = scoring.loss(empty, labels[:0])
    assert loss.item() == 0 and loss.requires_grad


def test_sigmoid_ce_scoring_equals_a_direct_computation_and_detectron2s_loss():
    scoring = SigmoidCEScoring()
    logits, labels, weights = random_rows()
    n, columns = logits.shape
    num_classes = columns - 1
    expected = [[sigmoid(v) for v in row] for row in logits.tolist()]
    for row in range(n):
        assert scoring.probabilities(logits)[row].tolist() == pytest.approx(expected[row], rel=1e-12)
    # BCE over the K foreground columns only: background rows have all-zero targets, column K is never trained
    per_row = [sum(bce(logits[r, c].item(), c == labels[r].item()) for c in range(num_classes)) for r in range(n)]
    assert scoring.loss(logits, labels).item() == pytest.approx(sum(per_row) / n, rel=1e-12)
    weighted = sum(w * v for w, v in zip(weights.tolist(), per_row)) / n
    assert scoring.loss(logits, labels, weights).item() == pytest.approx(weighted, rel=1e-12)
    # exactly Detectron2's sigmoid_cross_entropy_loss (without federated classes), value and gradient
    stock = FastRCNNOutputLayers.__new__(FastRCNNOutputLayers)
    stock.use_fed_loss = False
    ours_input, stock_input = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours_loss = scoring.loss(ours_input, labels)
    stock_loss = FastRCNNOutputLayers.sigmoid_cross_entropy_loss(stock, stock_input, labels)
    assert torch.equal(ours_loss, stock_loss)
    ours_loss.backward(), stock_loss.backward()
    assert torch.equal(ours_input.grad, stock_input.grad)
    assert ours_input.grad[:, -1].eq(0).all()
    assert scoring.loss(logits[:0], labels[:0]).item() == 0


@pytest.mark.parametrize("prior_prob", [0.001, 0.01])
def test_sigmoid_background_scoring_equals_a_direct_computation(prior_prob):
    scoring = SigmoidBackgroundScoring(prior_prob=prior_prob)
    logits, labels, weights = random_rows()
    n, columns = logits.shape
    for row in range(n):
        z = logits[row].tolist()
        background = sigmoid(z[-1])
        expected = [sigmoid(v) * (1 - background) for v in z[:-1]] + [background]
        assert scoring.probabilities(logits)[row].tolist() == pytest.approx(expected, rel=1e-9)
    # BCE over all K+1 channels, target 1 on the label's (background rows: on channel K)
    per_row = [sum(bce(logits[r, c].item(), c == labels[r].item()) for c in range(columns)) for r in range(n)]
    assert scoring.loss(logits, labels).item() == pytest.approx(sum(per_row) / n, rel=1e-12)
    weighted = sum(w * v for w, v in zip(weights.tolist(), per_row)) / n
    assert scoring.loss(logits, labels, weights).item() == pytest.approx(weighted, rel=1e-12)
    bias = torch.zeros(columns)
    scoring.init_bias(bias)
    assert torch.equal(bias, torch.full((columns,), -math.log((1 - prior_prob) / prior_prob)))
    assert torch.sigmoid(bias.double()).tolist() == pytest.approx([prior_prob] * columns, rel=1e-6)


def test_sigmoid_background_default_bias_is_minus_ln_999():
    bias = torch.zeros(3)
    SigmoidBackgroundScoring().init_bias(bias)
    assert torch.equal(bias, torch.full((3,), -6.906754778648554))
    with pytest.raises(ValueError, match="prior_prob must be in"):
        SigmoidBackgroundScoring(prior_prob=1.0)


# --- a custom scoring plugged into the predictor ------------------------------------------------------------------


class TemperatureScoring(ClassScoring):
    """A scoring of its own: softmax of ``z / temperature``, cross-entropy of the same, biases at ``bias``; counts
    its calls."""

    name = "temperature"

    def __init__(self, *, temperature=2.0, bias=0.25):
        super().__init__()
        self.temperature = temperature
        self.bias = bias
        self.calls = {"probabilities": 0, "loss": 0, "init_bias": 0}

    def probabilities(self, logits):
        self.calls["probabilities"] += 1
        return F.softmax(logits / self.temperature, dim=-1)

    def loss(self, logits, labels, weights=None):
        self.calls["loss"] += 1
        per_row = F.cross_entropy(logits / self.temperature, labels, reduction="none")
        if weights is not None:
            per_row = per_row * weights
        return per_row.sum() / max(logits.shape[0], 1)

    def init_bias(self, bias):
        self.calls["init_bias"] += 1
        nn.init.constant_(bias, self.bias)


def custom_model(**predictor_options):
    cfg = long_tail_cfg(small_model_cfg())
    cfg.roi_heads.box_predictor.scoring = L(TemperatureScoring)(temperature=2.0, bias=0.25)
    cfg.roi_heads.box_predictor.test_score_thresh = 0.0  # keep detections of an untrained model
    for key, value in predictor_options.items():
        cfg.roi_heads.box_predictor[key] = value
    torch.manual_seed(0)
    return instantiate(cfg).to(TEST_DEVICE)


def test_a_custom_scoring_initialises_scores_and_trains_the_predictor():
    model = custom_model()
    predictor = model.roi_heads.box_predictor
    scoring = predictor.scoring
    assert isinstance(scoring, TemperatureScoring) and predictor.class_scoring == "temperature"
    assert torch.equal(predictor.cls_score.bias, torch.full((NUM_CLASSES + 1,), 0.25, device=TEST_DEVICE))
    assert not any(k.startswith("roi_heads.box_predictor.scoring") for k in model.state_dict())

    # training: loss_cls is the scoring's loss of the predictor's logits over the sampled RoIs
    seen = {}
    hooks = [
        predictor.register_forward_hook(lambda m, args, out: seen.update(logits=out[0])),
        model.roi_heads.register_forward_hook(lambda m, args, out: seen.update(proposals=out[0])),
    ]
    losses = train_losses(model, make_batch())
    labels = torch.cat([p.gt_classes for p in seen["proposals"]])
    assert scoring.calls["loss"] == 1
    expected = F.cross_entropy(seen["logits"] / 2.0, labels, reduction="none").sum() / len(labels)
    torch.testing.assert_close(losses["loss_cls"], expected, rtol=1e-6, atol=0)

    # inference: the detections' scores are the scoring's probabilities
    seen.clear()
    model.eval()
    for hook in hooks:
        hook.remove()
    hooks = [
        model.roi_heads.register_forward_pre_hook(lambda m, args: seen.update(proposals=args[2])),
        predictor.register_forward_hook(lambda m, args, out: seen.update(predictions=out)),
        model.roi_heads.register_forward_hook(lambda m, args, out: seen.update(detections=out[0])),
    ]
    with torch.no_grad():
        model(make_batch())
    for hook in hooks:
        hook.remove()
    assert scoring.calls["probabilities"] == 1
    proposals, (logits, deltas), detections = seen["proposals"], seen["predictions"], seen["detections"]
    counts = [len(p) for p in proposals]
    probabilities = F.softmax(logits / 2.0, dim=-1)
    assert not torch.allclose(probabilities, F.softmax(logits, dim=-1))
    expected, _ = fast_rcnn_inference(
        predictor.predict_boxes((logits, deltas), proposals),
        probabilities.split(counts),
        [p.image_size for p in proposals],
        predictor.test_score_thresh,
        predictor.test_nms_thresh,
        predictor.test_topk_per_image,
    )
    assert sum(len(d) for d in detections) > 0
    for got, want in zip(detections, expected):
        assert torch.equal(got.scores, want.scores) and torch.equal(got.pred_classes, want.pred_classes)
        assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor)


def test_a_custom_scoring_trains_on_extra_rows_with_their_weights():
    predictor = custom_model().roi_heads.box_predictor
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(7, NUM_CLASSES + 1, generator=generator).to(TEST_DEVICE)
    labels, rows, proposals, deltas = predictor_rows_with_extras()
    with EventStorage(0):
        losses = predictor.losses((logits, deltas), [proposals], ExtraRowsBatch([rows]))
    all_labels = torch.cat([labels, rows.labels])
    weights = torch.cat([torch.ones(4, device=TEST_DEVICE), rows.weights])
    expected = (F.cross_entropy(logits / 2.0, all_labels, reduction="none") * weights).sum() / 7
    torch.testing.assert_close(losses["loss_cls"], expected, rtol=1e-6, atol=0)


def test_a_cls_bias_init_or_a_classifier_module_takes_the_scorings_place_at_initialisation():
    assert custom_model().roi_heads.box_predictor.scoring.calls["init_bias"] == 1
    predictor = custom_model(cls_bias_init=-1.0).roi_heads.box_predictor
    assert torch.equal(predictor.cls_score.bias, torch.full((NUM_CLASSES + 1,), -1.0, device=TEST_DEVICE))
    assert predictor.scoring.calls["init_bias"] == 0
    classifier = L(CosineClassifier)(input_dim=SMALL_BOX_FEATURE_DIM, num_classes=NUM_CLASSES)
    predictor = custom_model(classifier=classifier).roi_heads.box_predictor
    assert isinstance(predictor.cls_score, CosineClassifier) and predictor.class_scoring == "temperature"
    assert predictor.scoring.calls["init_bias"] == 0  # the classifier initialises itself


# --- what a loss requires, and the predictor's checks -----------------------------------------------------------


class NeedsTemperature(nn.Module):
    class_scoring = TemperatureScoring  # a scoring class: checked with isinstance

    def forward(self, logits, labels, weights=None):
        return logits.sum() * 0.0


class NeedsNamedTemperature(NeedsTemperature):
    class_scoring = "temperature"  # a scoring's name


@pytest.mark.parametrize("loss", [NeedsTemperature, NeedsNamedTemperature])
def test_a_loss_declaring_its_scoring_is_checked_against_the_scoring_object(loss):
    def predictor(**options):
        cfg = long_tail_cfg(small_model_cfg()).roi_heads.box_predictor
        for key, value in options.items():
            cfg[key] = value
        return instantiate(cfg)

    assert isinstance(predictor(cls_loss=L(loss)(), scoring=L(TemperatureScoring)()).cls_loss, loss)
    with pytest.raises(ValueError, match="is a loss for"):
        predictor(cls_loss=L(loss)())
    with pytest.raises(ValueError, match="is a loss for"):
        predictor(cls_loss=L(loss)(), class_scoring="sigmoid_background")
    # BACL's FCBL declares "sigmoid_background": a SigmoidBackgroundScoring subclass is one
    subclass = type("PriorScoring", (SigmoidBackgroundScoring,), {})
    fcbl = predictor(cls_loss=L(ForegroundBalanceLoss)(), scoring=L(subclass)(prior_prob=0.01))
    assert isinstance(fcbl.cls_loss, ForegroundBalanceLoss)


@pytest.mark.parametrize(
    "options, error, message",
    [
        (dict(scoring=L(SoftmaxScoring)(), class_scoring="softmax"), ValueError, "give scoring or class_scoring"),
        (dict(scoring=L(nn.Identity)()), TypeError, "scoring must be a ClassScoring"),
        (dict(scoring=L(SoftmaxScoring)(), use_sigmoid_ce=True), ValueError, "use_sigmoid_ce is another one"),
        (dict(class_scoring="sigmoid_ce"), ValueError, "class_scoring must be one of"),
    ],
)
def test_inconsistent_scorings_are_refused(options, error, message):
    cfg = long_tail_cfg(small_model_cfg())
    for key, value in options.items():
        cfg.roi_heads.box_predictor[key] = value
    with pytest.raises(error, match=message):
        instantiate(cfg)


# --- the names, and Detectron2's own scorings --------------------------------------------------------------------


def predictor_state(**options):
    cfg = long_tail_cfg(small_model_cfg())
    for key, value in options.items():
        cfg.roi_heads.box_predictor[key] = value
    torch.manual_seed(0)
    model = instantiate(cfg)
    return model.roi_heads.box_predictor, model.state_dict()


@pytest.mark.parametrize(
    "named, given, scoring_type",
    [
        (dict(), dict(scoring=L(SoftmaxScoring)()), SoftmaxScoring),
        (dict(class_scoring="softmax"), dict(scoring=L(SoftmaxScoring)()), SoftmaxScoring),
        (dict(class_scoring="softmax", use_sigmoid_ce=True), dict(scoring=L(SigmoidCEScoring)()), SigmoidCEScoring),
        (dict(use_sigmoid_ce=True), dict(scoring=L(SigmoidCEScoring)(), use_sigmoid_ce=True), SigmoidCEScoring),
        (
            dict(class_scoring="sigmoid_background"),
            dict(scoring=L(SigmoidBackgroundScoring)()),
            SigmoidBackgroundScoring,
        ),
    ],
)
def test_a_scorings_name_builds_the_predictor_its_object_builds(named, given, scoring_type):
    by_name, named_state = predictor_state(**named)
    by_object, given_state = predictor_state(**given)
    for predictor in (by_name, by_object):
        assert type(predictor.scoring) is scoring_type
        assert predictor.use_sigmoid_ce == (scoring_type is SigmoidCEScoring)
        assert predictor.class_scoring == scoring_type.name
    assert named_state.keys() == given_state.keys()
    assert all(torch.equal(named_state[k], given_state[k]) for k in named_state)


@pytest.mark.parametrize("use_sigmoid_ce", [False, True])
def test_detectron2s_scorings_draw_the_stock_predictors_weights_and_compute_its_outputs(use_sigmoid_ce):
    """Same seed: the stock model's parameters, drawn in the same order; same losses and probabilities."""
    stock_cfg = small_model_cfg()
    stock_cfg.roi_heads.box_predictor.use_sigmoid_ce = use_sigmoid_ce
    torch.manual_seed(0)
    stock = instantiate(stock_cfg).to(TEST_DEVICE)
    _, ours_state = predictor_state(use_sigmoid_ce=use_sigmoid_ce)
    assert list(ours_state) == list(stock.state_dict())
    assert all(torch.equal(v.to(TEST_DEVICE), stock.state_dict()[k]) for k, v in ours_state.items())
    # the rows of a predictor given as an object (SigmoidCEScoring turns use_sigmoid_ce on)
    scoring = L(SigmoidCEScoring)() if use_sigmoid_ce else L(SoftmaxScoring)()
    cfg = long_tail_cfg(small_model_cfg(), feature_sources=[])
    cfg.roi_heads.box_predictor.scoring = scoring
    ours = instantiate(cfg).to(TEST_DEVICE)
    ours.load_state_dict(stock.state_dict())
    batch = make_batch()
    stock_losses, our_losses = train_losses(stock, batch), train_losses(ours, batch)
    assert stock_losses.keys() == our_losses.keys()
    assert all(torch.equal(stock_losses[k], our_losses[k]) for k in stock_losses)
    logits = torch.randn(5, NUM_CLASSES + 1, device=TEST_DEVICE)
    proposals = [Instances((8, 8), proposal_boxes=Boxes(torch.zeros(5, 4, device=TEST_DEVICE)))]
    stock_probs = stock.roi_heads.box_predictor.predict_probs((logits, None), proposals)[0]
    assert torch.equal(ours.roi_heads.box_predictor.predict_probs((logits, None), proposals)[0], stock_probs)


def test_a_config_with_a_scoring_object_saves_and_loads(tmp_path):
    cfg = long_tail_cfg(small_model_cfg())
    cfg.roi_heads.box_predictor.scoring = L(SigmoidBackgroundScoring)(prior_prob=0.01)
    path = str(tmp_path / "config.yaml")
    LazyConfig.save(cfg, path)
    predictor = instantiate(LazyConfig.load(path).roi_heads.box_predictor)
    assert type(predictor.scoring) is SigmoidBackgroundScoring and predictor.scoring.prior_prob == 0.01
    assert torch.equal(predictor.cls_score.bias, torch.full((NUM_CLASSES + 1,), -math.log(99.0)))
