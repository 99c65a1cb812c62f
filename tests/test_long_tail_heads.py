"""LongTailROIHeads / LongTailOutputLayers: stock-equal when all options are off; extra rows and
indicators behave as specified."""
import pytest
import torch

from ltdet2.memory import MeanScore
from ltdet2.modeling.extra_rows import ExtraRows
from ltdet2.modeling.feature_sources import FeatureSource, MemoryFeatureSampler
from ltdet2.modeling.indicator_updates import object_mean_probabilities
from ltdet2.modeling.losses import EquilibriumLoss

from model_helpers import NUM_CLASSES, make_batch, paired_models, train_losses


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
            assert torch.equal(param.grad, our_params[name].grad), name

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
        return self.rows


def test_extra_rows_train_classifier_and_regressor_but_not_mask():
    torch.manual_seed(0)
    dim = 256
    labels = torch.tensor([1, 1, 4])
    boxes = torch.tensor([[10.0, 10, 40, 40], [12, 8, 44, 41], [30, 30, 60, 70]])
    rows = ExtraRows(features=torch.randn(3, dim), labels=labels, proposal_boxes=boxes,
                     gt_boxes=boxes + 2.0)
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
    logits = torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0],
                           [0.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([1, 1, 0, 2, 1, 1])
    object_ids = torch.tensor([0, 0, 1, -1, 10, 10])
    entry_labels, entry_scores = object_mean_probabilities(logits, labels, object_ids)
    probs = torch.softmax(logits, 1)
    assert entry_labels.tolist() == [1, 0, 1]
    expected = [(probs[0, 1] + probs[1, 1]) / 2, probs[2, 0], (probs[4, 1] + probs[5, 1]) / 2]
    assert torch.allclose(entry_scores, torch.stack(expected))


def test_mean_scores_update_from_roi_heads_with_any_roi_count():
    indicator = MeanScore(NUM_CLASSES, alpha=0.9)
    stock, ours = paired_models(indicators={"mean_score": indicator})
    ours.roi_heads.box_predictor.cls_loss = EquilibriumLoss(indicator="mean_score")
    ours.roi_heads.box_predictor.bind_indicators(ours.roi_heads.indicators)
    ours.roi_heads.batch_size_per_image = 17  # not a fixed per-image count
    batch = make_batch()
    before = indicator.vector().clone()
    losses = train_losses(ours, batch)
    after = indicator.vector()
    seen = torch.cat([b["instances"].gt_classes for b in batch]).unique()
    changed = (after != before).nonzero().flatten()
    assert set(changed.tolist()) <= set(seen.tolist()) and len(changed) > 0
    assert after[-1] == pytest.approx(0.01)
    assert torch.isfinite(losses["loss_cls"])


def test_mfs_rows_come_from_memory_and_keep_mask_loss():
    indicator = MeanScore(NUM_CLASSES)
    mfs = MemoryFeatureSampler(num_classes=NUM_CLASSES, feature_shape=(128, 7, 7), capacity=20,
                               num_sampled_classes=3, per_class=2)
    stock, ours = paired_models(mask=True, feature_sources=[mfs], indicators={"mean_score": indicator})
    batch = make_batch(mask=True)
    stock_losses, our_losses = train_losses(stock, batch), train_losses(ours, batch)
    assert torch.equal(stock_losses["loss_mask"], our_losses["loss_mask"])
    gt_classes = torch.cat([b["instances"].gt_classes for b in batch])
    expected_counts = torch.bincount(gt_classes, minlength=NUM_CLASSES) * 16
    assert torch.equal(mfs.queue.counts, expected_counts.clamp(max=20))
    # sampling probability is 1/s over non-empty queues only
    indicator.mean_scores[:NUM_CLASSES] = torch.linspace(0.1, 0.6, NUM_CLASSES)
    weights = mfs.sampling_weights()
    present = mfs.queue.counts > 0
    assert torch.allclose(weights[present], 1 / indicator.mean_scores[:NUM_CLASSES][present])
    assert (weights[~present] == 0).all()
