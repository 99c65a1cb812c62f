"""LongTailROIHeads / LongTailOutputLayers: stock-equal when all options are off; extra rows and
indicators behave as specified."""

import dataclasses
import logging

import numpy as np
import pytest
import torch

from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference

from ltdet2.memory import MeanScore, SoftConfusionMatrix, TruePositiveRate
from ltdet2.memory.indicators import object_mean_scores
from ltdet2.modeling import LongTailOutputLayers
from ltdet2.modeling.extra_rows import ExtraRows
from ltdet2.modeling.feature_sources import FeatureSource, MemoryFeatureSampler
from ltdet2.modeling.losses import EquilibriumLoss

from fixtures.indicators import BatchRecorder
from fixtures.logs import logged_messages
from fixtures.models import (
    NUM_CLASSES,
    long_tail_cfg,
    make_batch,
    paired_models,
    small_model_cfg,
    train_losses,
)


def assert_same_gradient(expected, actual, name):
    """Exact on the CPU. On CUDA, RoIAlign's backward accumulates with atomics in a nondeterministic order
    (and convolutions run in TF32), so two runs of one model differ there too: the gradients must agree
    to 1e-3 of their norm (a different loss would change them at order 1)."""
    if expected.device.type == "cpu":
        assert torch.equal(expected, actual), name
    else:
        difference = torch.linalg.vector_norm(actual - expected)
        assert difference <= 1e-3 * torch.linalg.vector_norm(expected) + 1e-12, (name, difference.item())


@pytest.mark.parametrize("mask", [False, True])
def test_matches_stock_heads_exactly(mask):
    stock, ours = paired_models(mask=mask)
    batch = make_batch(mask=mask)
    stock_losses, our_losses = train_losses(stock, batch), train_losses(ours, batch)
    assert stock_losses.keys() == our_losses.keys()
    for key in stock_losses:
        assert torch.equal(stock_losses[key], our_losses[key]), key
    # gradients too
    sum(stock_losses.values()).backward()
    sum(our_losses.values()).backward()
    stock_params, our_params = dict(stock.named_parameters()), dict(ours.named_parameters())
    for name, param in stock_params.items():
        if param.grad is not None:
            assert_same_gradient(param.grad, our_params[name].grad, name)

    stock.eval(), ours.eval()
    with torch.no_grad():
        stock_out, our_out = stock(batch), ours(batch)
    for a, b in zip(stock_out, our_out):
        a, b = a["instances"], b["instances"]
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)
        if mask:
            assert torch.equal(a.pred_masks, b.pred_masks)


class FixedRows(FeatureSource):
    """A source returning fixed box-head rows, recording what it saw."""

    stage = "box_head"

    def __init__(self, rows):
        super().__init__()
        self.rows = rows
        self.seen = None

    def forward(self, context):
        self.seen = context
        device = context.pooled_features.device
        self.rows = dataclasses.replace(
            self.rows,
            **{
                name: getattr(self.rows, name).to(device)
                for name in ("features", "labels", "proposal_boxes", "gt_boxes", "weights")
                if getattr(self.rows, name) is not None
            },
        )
        return self.rows


def test_extra_rows_train_classifier_and_regressor_but_not_mask():
    torch.manual_seed(0)
    dim = 256
    labels = torch.tensor([1, 1, 4])
    boxes = torch.tensor([[10.0, 10, 40, 40], [12, 8, 44, 41], [30, 30, 60, 70]])
    rows = ExtraRows(features=torch.randn(3, dim), labels=labels, proposal_boxes=boxes, gt_boxes=boxes + 2.0)
    source = FixedRows(rows)
    stock, ours = paired_models(mask=True, feature_sources=[])
    ours.roi_heads.feature_sources.append(source)
    batch = make_batch(mask=True)
    stock_losses, our_losses = train_losses(stock, batch), train_losses(ours, batch)
    # the mask loss sees only the sampled proposals
    assert torch.equal(stock_losses["loss_mask"], our_losses["loss_mask"])
    assert not torch.equal(stock_losses["loss_cls"], our_losses["loss_cls"])
    assert source.seen.box_features is not None and source.seen.box_features.shape[1] == dim

    # direct computation: stock CE and box loss over RoIs + rows
    proposals = source.seen.proposals
    num_rois = sum(len(p) for p in proposals)
    predictor = ours.roi_heads.box_predictor
    rows = source.rows  # on the model's device
    labels, boxes = rows.labels, rows.proposal_boxes
    scores, deltas = predictor(torch.cat([source.seen.box_features, rows.features]))
    all_labels = torch.cat([torch.cat([p.gt_classes for p in proposals]), labels])
    expected_cls = torch.nn.functional.cross_entropy(scores, all_labels)
    assert torch.allclose(our_losses["loss_cls"], expected_cls, atol=1e-6)
    proposal_boxes = torch.cat([torch.cat([p.proposal_boxes.tensor for p in proposals]), boxes])
    gt_boxes = torch.cat([torch.cat([p.gt_boxes.tensor for p in proposals]), boxes + 2.0])
    expected_reg = predictor.box_reg_loss(proposal_boxes, gt_boxes, deltas, all_labels)
    assert torch.allclose(our_losses["loss_box_reg"], expected_reg, atol=1e-6)
    assert num_rois + 3 == scores.shape[0]


def test_classification_only_rows_skip_regression():
    torch.manual_seed(0)
    rows = ExtraRows(features=torch.randn(2, 256), labels=torch.tensor([0, 2]))
    source = FixedRows(rows)
    stock, ours = paired_models()
    ours.roi_heads.feature_sources.append(source)
    batch = make_batch()
    stock_losses, our_losses = train_losses(stock, batch), train_losses(ours, batch)
    # regression: same rows as stock, normalised by the same count
    assert torch.allclose(stock_losses["loss_box_reg"], our_losses["loss_box_reg"], atol=1e-7)


def test_mean_score_entries_per_ground_truth_box_and_memory_class():
    # 2 classes (C=2, background 2); rows: gt object 0 (class 1) x2, gt object 1 (class 0) x1,
    # background x1, memory class 1 x2 (one entry)
    logits = torch.tensor(
        [[0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0]]
    )
    labels = torch.tensor([1, 1, 0, 2, 1, 1])
    object_ids = torch.tensor([0, 0, 1, -1, 10, 10])
    probs = torch.softmax(logits, 1)
    entry_labels, entry_scores = object_mean_scores(probs, labels, object_ids)
    assert entry_labels.tolist() == [1, 0, 1]
    expected = [(probs[0, 1] + probs[1, 1]) / 2, probs[2, 0], (probs[4, 1] + probs[5, 1]) / 2]
    assert torch.allclose(entry_scores, torch.stack(expected))


def test_mean_scores_update_from_roi_heads_with_any_roi_count():
    indicator, recorder = MeanScore(NUM_CLASSES, alpha=0.9), BatchRecorder(NUM_CLASSES)
    memory_labels = torch.tensor([1, 4, 1])
    source = FixedRows(
        ExtraRows(features=torch.randn(3, 256, generator=torch.Generator().manual_seed(0)), labels=memory_labels)
    )
    stock, ours = paired_models(indicators={"mean_score": indicator, "recorder": recorder}, feature_sources=[source])
    ours.roi_heads.box_predictor.cls_loss = EquilibriumLoss(indicator="mean_score")
    ours.roi_heads.bind_indicators()
    ours.roi_heads.batch_size_per_image = 17  # not a fixed per-image count
    batch = make_batch()
    before = indicator.vector().clone()
    losses = train_losses(ours, batch)
    after = indicator.vector()
    seen = torch.cat([b["instances"].gt_classes for b in batch]).unique()
    changed = (after != before).nonzero().flatten()
    assert set(changed.tolist()) <= set(seen.tolist()) | {4} and len(changed) > 0
    assert after[-1].item() == pytest.approx(0.01)
    assert torch.isfinite(losses["loss_cls"])
    # object ids: a foreground RoI's ground-truth box (numbered across images), one id per memory class
    recorded = recorder.batches[0]
    proposals, targets = source.seen.proposals, source.seen.targets
    num_rois = sum(len(p) for p in proposals)
    roi_ids, roi_labels = recorded.object_ids[:num_rois], recorded.labels[:num_rois]
    foreground = roi_labels < NUM_CLASSES
    assert torch.equal(foreground, roi_ids >= 0)
    gt_boxes = torch.cat([t.gt_boxes.tensor for t in targets]).cpu()
    roi_gt_boxes = torch.cat([p.gt_boxes.tensor for p in proposals]).cpu()
    assert torch.equal(gt_boxes[roi_ids[foreground]], roi_gt_boxes[foreground])
    assert torch.equal(torch.cat([t.gt_classes for t in targets]).cpu()[roi_ids[foreground]], roi_labels[foreground])
    memory_ids = recorded.object_ids[num_rois:]
    assert torch.equal(recorded.labels[num_rois:], memory_labels)
    assert memory_ids[0] == memory_ids[2] != memory_ids[1] and (memory_ids >= len(gt_boxes)).all()
    np.testing.assert_allclose(
        after.cpu().numpy(), expected_mean_scores(recorded, torch.softmax(recorded.logits, 1)), rtol=1e-6
    )


def test_mfs_rows_come_from_memory_and_keep_mask_loss():
    indicator = MeanScore(NUM_CLASSES)
    mfs = MemoryFeatureSampler(
        num_classes=NUM_CLASSES, feature_shape=(128, 7, 7), capacity=20, num_sampled_classes=3, per_class=2
    )
    stock, ours = paired_models(mask=True, feature_sources=[mfs], indicators={"mean_score": indicator})
    batch = make_batch(mask=True)
    stock_losses, our_losses = train_losses(stock, batch), train_losses(ours, batch)
    assert torch.equal(stock_losses["loss_mask"], our_losses["loss_mask"])
    gt_classes = torch.cat([b["instances"].gt_classes for b in batch])
    expected_counts = torch.bincount(gt_classes, minlength=NUM_CLASSES) * 16
    assert torch.equal(mfs.queue.counts.cpu(), expected_counts.clamp(max=20))
    # one draw's probability is 1/s over all classes (official; draws of empty queues are dropped after),
    # over the non-empty queues only with class_draw="distinct"
    indicator.mean_scores[:NUM_CLASSES] = torch.linspace(0.1, 0.6, NUM_CLASSES)
    present = mfs.queue.counts > 0
    assert 0 < present.sum() < NUM_CLASSES
    assert torch.allclose(mfs.sampling_weights(), 1 / indicator.mean_scores[:NUM_CLASSES])
    mfs.class_draw = "distinct"
    weights = mfs.sampling_weights()
    assert torch.allclose(weights[present], 1 / indicator.mean_scores[:NUM_CLASSES][present])
    assert (weights[~present] == 0).all()


# --- indicators: binding and updates from the predictor's own probabilities -----------------------


class BackgroundSigmoidOutputLayers(LongTailOutputLayers):
    """Overrides only the scoring: BACL's [sigmoid(z_i) * (1 - sigmoid(z_C)), sigmoid(z_C)]."""

    def predict_class_probabilities(self, scores):
        p = scores.sigmoid()
        return torch.cat([p[:, :-1] * (1 - p[:, -1:]), p[:, -1:]], dim=1)


def expected_mean_scores(batch, probabilities, alpha=0.9):
    """MeanScore after one update from ``batch``, object by object (LOCE)."""
    expected = np.full(NUM_CLASSES + 1, 0.01)
    labels, object_ids = batch.labels.numpy(), batch.object_ids.numpy()
    for c in range(NUM_CLASSES):
        entries = [
            probabilities[object_ids == obj, c].double().mean().item()
            for obj in np.unique(object_ids[(labels == c) & (object_ids >= 0)])
        ]
        if entries:
            decay = alpha ** len(entries)
            expected[c] = decay * 0.01 + (1 - decay) * np.mean(entries)
    return expected


def expected_true_positive_rate(batch, probabilities):
    fg = batch.labels < NUM_CLASSES
    labels = batch.labels[fg]
    hits = probabilities[fg, :NUM_CLASSES].argmax(1) == labels
    positives = torch.bincount(labels, minlength=NUM_CLASSES)
    return (torch.bincount(labels[hits], minlength=NUM_CLASSES) / positives.clamp(min=1)).numpy()


def scoring_model(predictor_class):
    cfg = long_tail_cfg(
        small_model_cfg(),
        indicators={
            "mean_score": L(MeanScore)(num_classes=NUM_CLASSES),
            "tpr": L(TruePositiveRate)(num_classes=NUM_CLASSES),
            "recorder": L(BatchRecorder)(num_classes=NUM_CLASSES),
        },
    )
    cfg.roi_heads.box_predictor._target_ = predictor_class
    cfg.roi_heads.box_predictor.test_score_thresh = 0.0  # keep detections of an untrained model
    torch.manual_seed(0)
    return instantiate(cfg)


def roi_head_detections(model, batch):
    """(proposals, box-predictor outputs, detections) of the ROI heads at inference."""
    seen = {}
    hooks = [
        model.roi_heads.register_forward_pre_hook(lambda m, args: seen.update(proposals=args[2])),
        model.roi_heads.box_predictor.register_forward_hook(lambda m, args, out: seen.update(predictions=out)),
        model.roi_heads.register_forward_hook(lambda m, args, out: seen.update(detections=out[0])),
    ]
    model.eval()
    with torch.no_grad():
        model(batch)
    for hook in hooks:
        hook.remove()
    return seen["proposals"], seen["predictions"], seen["detections"]


@pytest.mark.parametrize("predictor_class", [LongTailOutputLayers, BackgroundSigmoidOutputLayers])
def test_inference_and_indicators_share_the_predictors_scoring(predictor_class):
    def scoring(logits):
        if predictor_class is LongTailOutputLayers:
            return torch.softmax(logits, dim=1)
        p = logits.sigmoid()
        return torch.cat([p[:, :-1] * (1 - p[:, -1:]), p[:, -1:]], dim=1)

    model = scoring_model(predictor_class)
    stock_scoring = scoring_model(LongTailOutputLayers)
    stock_scoring.load_state_dict(model.state_dict())
    batch = make_batch(boxes_per_image=4)
    train_losses(model, batch)
    train_losses(stock_scoring, batch)
    indicators = model.roi_heads.indicators
    recorded = indicators["recorder"].batches[0]
    assert recorded.probabilities.dtype == torch.float32 and not recorded.probabilities.requires_grad
    probabilities = scoring(recorded.logits.float())
    assert torch.equal(recorded.probabilities, probabilities)
    np.testing.assert_allclose(
        indicators["mean_score"].vector().cpu().numpy(), expected_mean_scores(recorded, probabilities), rtol=1e-6
    )
    np.testing.assert_allclose(
        indicators["tpr"].vector().cpu().numpy(), expected_true_positive_rate(recorded, probabilities)
    )
    stock_indicators = stock_scoring.roi_heads.indicators
    assert torch.equal(stock_indicators["recorder"].batches[0].logits, recorded.logits)  # same rows, same logits
    if predictor_class is BackgroundSigmoidOutputLayers:
        assert not torch.allclose(stock_indicators["mean_score"].vector(), indicators["mean_score"].vector())

    # inference scores detections with the same function
    proposals, predictions, detections = roi_head_detections(model, batch)
    predictor = model.roi_heads.box_predictor
    expected, _ = fast_rcnn_inference(
        predictor.predict_boxes(predictions, proposals),
        scoring(predictions[0]).split([len(p) for p in proposals]),
        [p.image_size for p in proposals],
        0.0,
        predictor.test_nms_thresh,
        predictor.test_topk_per_image,
    )
    _, _, stock_detections = roi_head_detections(stock_scoring, batch)
    for ours, theirs, stock in zip(detections, expected, stock_detections):
        assert len(ours) > 0
        assert torch.equal(ours.scores, theirs.scores) and torch.equal(ours.pred_classes, theirs.pred_classes)
        assert torch.equal(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)
        if predictor_class is BackgroundSigmoidOutputLayers:
            assert not torch.equal(ours.scores, stock.scores)  # softmax scores would differ


class TwoIndicatorRows(FeatureSource):
    """A source that reads two indicators and returns no rows."""

    def __init__(self):
        super().__init__()
        self.indicator_names = ("confusion", "tpr")
        self.seen = []

    def forward(self, context):
        self.seen.append((self.indicator("confusion").matrix().clone(), self.indicator("tpr").vector().clone()))
        return None


def test_a_module_reads_two_indicators_bound_once():
    source = TwoIndicatorRows()
    stock, ours = paired_models(
        feature_sources=[source],
        indicators={
            "confusion": SoftConfusionMatrix(NUM_CLASSES),
            "tpr": TruePositiveRate(NUM_CLASSES),
            "mean_score": MeanScore(NUM_CLASSES),
        },
    )
    indicators = ours.roi_heads.indicators
    assert source.indicator("confusion") is indicators["confusion"] and source.indicator("tpr") is indicators["tpr"]
    with pytest.raises(ValueError, match=r"reads 2 indicators \['confusion', 'tpr'\]; name the one"):
        source.indicator()
    # plain references: the buffers are saved once, under the heads
    assert list(source.state_dict()) == []
    keys = [k for k in ours.state_dict() if k.endswith("numerator")]
    assert keys == ["roi_heads.indicators.confusion.numerator"]
    batch = make_batch()
    train_losses(ours, batch)
    after_first = indicators["confusion"].matrix().clone(), indicators["tpr"].vector().clone()
    train_losses(ours, batch, seed=2)
    # the first iteration reads the empty indicators (updated after the losses), the second what the first left
    assert source.seen[0][0].abs().sum() == 0 and source.seen[0][1].abs().sum() == 0
    assert torch.equal(source.seen[1][0], after_first[0]) and torch.equal(source.seen[1][1], after_first[1])
    seen_classes = torch.cat([b["instances"].gt_classes for b in batch]).unique()
    np.testing.assert_allclose(after_first[0].cpu()[seen_classes].sum(1).numpy(), 1.0, rtol=1e-5)


@pytest.mark.parametrize("where", ["cls_loss", "source"])
def test_missing_indicator_is_a_build_error_naming_it(where):
    cfg = long_tail_cfg(small_model_cfg(), indicators={"mean_score": L(MeanScore)(num_classes=NUM_CLASSES)})
    if where == "cls_loss":
        cfg.roi_heads.box_predictor.cls_loss = L(EquilibriumLoss)(indicator="confusion")
        owner = r"box_predictor.cls_loss \(EquilibriumLoss\)"
    else:
        cfg.roi_heads.feature_sources = [L(MemoryFeatureSampler)(num_classes=NUM_CLASSES, indicator="tpr")]
        owner = r"feature_sources.0 \(MemoryFeatureSampler\)"
    missing = "confusion" if where == "cls_loss" else "tpr"
    with pytest.raises(
        ValueError,
        match=rf"{owner} reads indicator\(s\) \['{missing}'\], but the ROI heads "
        r"have \['mean_score'\]",
    ):
        instantiate(cfg)


def test_bfloat16_mask_inference():
    """mask_inference_dtype="bfloat16": the same training losses and the same boxes, scores and classes; the mask
    head (not the mask pooler) runs in bf16 and the mask probabilities come back as float32, within bf16 rounding."""
    float32, bfloat16 = paired_models(mask=True)
    bfloat16 = instantiate(long_tail_cfg(small_model_cfg(mask=True), mask_inference_dtype="bfloat16"))
    bfloat16.load_state_dict(float32.state_dict())
    bfloat16.to(float32.device)
    batch = make_batch(mask=True)
    losses, bf16_losses = train_losses(float32, batch), train_losses(bfloat16, batch)
    assert {k: v.item() for k, v in losses.items()} == {k: v.item() for k, v in bf16_losses.items()}

    dtypes = []
    bfloat16.roi_heads.mask_pooler.register_forward_hook(lambda m, i, out: dtypes.append(("pooler", out.dtype)))
    bfloat16.roi_heads.mask_head.predictor.register_forward_hook(lambda m, i, out: dtypes.append(("head", out.dtype)))
    outputs = []
    for model in (float32, bfloat16):
        model.eval()
        with torch.no_grad():
            outputs.append([r for r in model.inference(batch, do_postprocess=False)])
    assert dtypes == [("pooler", torch.float32), ("head", torch.bfloat16)]
    for expected, actual in zip(*outputs, strict=True):
        assert len(expected) > 0
        assert torch.equal(expected.pred_boxes.tensor, actual.pred_boxes.tensor)
        assert torch.equal(expected.scores, actual.scores) and torch.equal(expected.pred_classes, actual.pred_classes)
        assert actual.pred_masks.dtype == torch.float32 and actual.pred_masks.shape == expected.pred_masks.shape
        difference = (actual.pred_masks - expected.pred_masks).abs().max().item()
        assert 0 < difference < 2e-2


@pytest.mark.parametrize("native_bfloat16", [True, False])
def test_auto_mask_inference_dtype_is_bfloat16_only_on_a_cpu_with_bf16_instructions(monkeypatch, native_bfloat16):
    """mask_inference_dtype="auto": the mask head in bf16 on a CPU with bf16 instructions; float32 without them
    (where bf16 is emulated and slower), with the same masks as "float32"; the choice logged once."""
    from ltdet2.modeling.roi_heads import long_tail_roi_heads

    monkeypatch.setattr(long_tail_roi_heads, "has_native_cpu_bfloat16", lambda: native_bfloat16)
    float32, _ = paired_models(mask=True)
    auto = instantiate(long_tail_cfg(small_model_cfg(mask=True), mask_inference_dtype="auto"))
    auto.load_state_dict(float32.state_dict())
    batch = make_batch(mask=True)
    dtypes = []
    auto.roi_heads.mask_head.predictor.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    outputs = []
    with logged_messages(long_tail_roi_heads.logger.name, logging.INFO) as messages:
        for model in (float32, auto, auto):
            model.eval()
            with torch.no_grad():
                outputs.append(model.inference(batch, do_postprocess=False))
    expected_dtype = torch.bfloat16 if native_bfloat16 else torch.float32
    assert dtypes == [expected_dtype] * 2
    choice = "bfloat16" if native_bfloat16 else "float32"
    assert [m for m in messages if "mask_inference_dtype" in m] == [
        f"mask_inference_dtype='auto' on cpu: the mask head runs in {choice} at inference"
    ]
    for expected, actual in zip(outputs[0], outputs[1], strict=True):
        assert actual.pred_masks.dtype == torch.float32
        assert torch.equal(expected.pred_masks, actual.pred_masks) != native_bfloat16


def test_auto_mask_inference_dtype_is_float32_on_cuda(monkeypatch):
    from ltdet2.modeling.roi_heads import long_tail_roi_heads

    monkeypatch.setattr(long_tail_roi_heads, "has_native_cpu_bfloat16", lambda: True)
    assert long_tail_roi_heads.resolve_mask_inference_dtype("auto", "cuda") is None
    assert long_tail_roi_heads.resolve_mask_inference_dtype("auto", "cpu") is torch.bfloat16
    assert long_tail_roi_heads.resolve_mask_inference_dtype("bfloat16", "cuda") is torch.bfloat16
    assert long_tail_roi_heads.resolve_mask_inference_dtype("float32", "cpu") is None


def test_unknown_mask_inference_dtype_is_refused():
    with pytest.raises(
        ValueError, match=r"mask_inference_dtype 'float16': expected one of \['auto', 'bfloat16', 'float32'\]"
    ):
        instantiate(long_tail_cfg(small_model_cfg(mask=True), mask_inference_dtype="float16"))
