"""LOCE: equilibrium loss, dense box generator, MFS draw and push, mean-score timing, checkpoints, the
dataset-guided ablation, the normalised mask head."""

import io
import math
from types import SimpleNamespace

import pytest
import torch

from detectron2.config import instantiate
from detectron2.structures import Boxes, Instances

from ltdet2.memory import ClassQueue, CumulativeCount, InstanceFrequency, MeanScore
from ltdet2.modeling import (
    NormalizedConv2d,
    NormalizedMaskRCNNConvUpsampleHead,
    dense_boxes,
    dense_boxes_per_image,
)
from ltdet2.modeling.feature_sources import FeatureSource, MemoryFeatureSampler
from ltdet2.modeling.losses import EquilibriumLoss, equilibrium_loss

from fixtures.models import NUM_CLASSES, long_tail_cfg, make_batch, paired_models, small_model_cfg, train_losses


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


@pytest.mark.parametrize("shared_eta", [False, True])
def test_dense_boxes_per_image_is_one_draw_clipped_per_image(shared_eta):
    gt = [
        torch.tensor([[20.0, 30.0, 80.0, 90.0], [0.0, 0.0, 12.0, 6.0]]),
        torch.zeros(0, 4),
        torch.tensor([[5.0, 5.0, 45.0, 25.0]]),
    ]
    sizes = [(100, 100), (50, 50), (20, 40)]  # (height, width)
    batched = dense_boxes_per_image(gt, sizes, torch.Generator().manual_seed(0), shared_eta=shared_eta)
    assert [tuple(b.shape) for b in batched] == [(32, 4), (0, 4), (16, 4)]
    # the same draw, by hand: eta [3 boxes or 3 images, 16, 4] in one call, then box i of image n
    eta = torch.rand((3, 16, 4), generator=torch.Generator().manual_seed(0))
    box_eta = eta[[0, 0, 2]] if shared_eta else eta
    signs = 1.0 - 2.0 * ((torch.arange(16)[:, None] >> torch.arange(4)[None, :]) & 1).float()
    boxes = torch.cat(gt)
    size = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, dim=1)[:, None] / 6.0
    expected = boxes[:, None] + signs * box_eta * size
    limits = torch.tensor([[100.0, 100, 100, 100], [100, 100, 100, 100], [40, 20, 40, 20]])[:, None]
    expected = torch.minimum(expected.clamp(min=0), limits).reshape(-1, 4)  # each image's own size
    torch.testing.assert_close(torch.cat(batched), expected, rtol=0, atol=0)
    assert batched[2][:, 0::2].max() <= 40 and batched[2][:, 1::2].max() <= 20 and batched[2][:, 2].max() == 40
    # one image: exactly dense_boxes
    alone = dense_boxes(gt[0], sizes[0], torch.Generator().manual_seed(5), shared_eta=shared_eta)
    [same] = dense_boxes_per_image(gt[:1], sizes[:1], torch.Generator().manual_seed(5), shared_eta=shared_eta)
    assert torch.equal(alone, same)
    with pytest.raises(ValueError, match="2 box tensors but 1 image sizes"):
        dense_boxes_per_image(gt[:2], sizes[:1])


def test_mfs_and_mean_scores_survive_a_checkpoint_exactly():
    torch.manual_seed(0)
    source = MemoryFeatureSampler(
        num_classes=5, feature_shape=(4, 7, 7), capacity=6, num_sampled_classes=2, per_class=3
    )
    scores = MeanScore(5)
    labels = torch.tensor([0, 0, 3, 4, 4, 4, 4, 4, 4, 4])
    source.queue.push(
        labels, features=torch.randn(10, 4, 7, 7), proposal_boxes=torch.rand(10, 4), gt_boxes=torch.rand(10, 4)
    )
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


# --- MFS: class draw and push ---------------------------------------------------------------------


def mfs_with_scores(scores, fill, class_draw="with_replacement", per_class=2):
    """An MFS over len(scores) classes whose queue holds ``fill[c]`` entries of class c."""
    num_classes = len(scores)
    mfs = MemoryFeatureSampler(
        num_classes=num_classes,
        feature_shape=(2, 1, 1),
        capacity=4,
        num_sampled_classes=8,
        per_class=per_class,
        class_draw=class_draw,
    )
    labels = torch.repeat_interleave(torch.arange(num_classes), torch.tensor(fill))
    mfs.queue.push(
        labels,
        features=torch.randn(len(labels), 2, 1, 1),
        proposal_boxes=torch.rand(len(labels), 4),
        gt_boxes=torch.rand(len(labels), 4),
    )
    indicator = MeanScore(num_classes)
    indicator.mean_scores[:num_classes] = torch.tensor(scores)
    mfs.bind_indicators({"mean_score": indicator})
    return mfs


def test_mfs_draws_8_classes_with_replacement_over_all_classes_with_p_inverse_to_score():
    scores = [0.5, 0.01, 0.2, 0.05, 0.3, 0.02]
    fill = [4, 4, 0, 2, 4, 0]  # classes 2 and 5 have empty queues: their draws are dropped
    mfs = mfs_with_scores(scores, fill)
    torch.manual_seed(0)
    iterations = 5000
    drawn = torch.cat([mfs.sample_classes() for _ in range(iterations)])
    p = 1 / torch.tensor(scores, dtype=torch.float64)
    p /= p.sum()
    observed = torch.bincount(drawn, minlength=6).double()
    assert observed[2] == 0 and observed[5] == 0
    # bins: the non-empty classes, and the dropped draws
    observed_bins = torch.cat([observed[[0, 1, 3, 4]], (8 * iterations - observed.sum()).reshape(1)])
    expected_bins = 8 * iterations * torch.cat([p[[0, 1, 3, 4]], (p[2] + p[5]).reshape(1)])
    chi_square = ((observed_bins - expected_bins) ** 2 / expected_bins).sum().item()
    assert chi_square < 20.5  # 4 degrees of freedom: P(chi2 > 20.5) < 0.0005
    # repeats are kept: a class drawn twice gives 2 x per_class rows
    torch.manual_seed(1)
    classes = mfs.sample_classes()
    assert len(classes.unique()) < len(classes)
    torch.manual_seed(1)
    empty = Instances((10, 10), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.int64))
    context = SimpleNamespace(targets=[empty], pooled_features=torch.zeros(0, 2, 1, 1), pool=None)
    rows = mfs(context)
    assert rows.labels.tolist() == classes.repeat_interleave(2).tolist()


def test_mfs_distinct_draw_takes_distinct_non_empty_classes():
    scores = [0.5, 0.01, 0.2, 0.05, 0.3, 0.02]
    mfs = mfs_with_scores(scores, [4, 4, 0, 2, 4, 0], class_draw="distinct")
    torch.manual_seed(0)
    for _ in range(50):
        classes = mfs.sample_classes()
        assert sorted(classes.tolist()) == [0, 1, 3, 4]  # min(8, 4 non-empty), each once
    with pytest.raises(ValueError, match="class_draw must be one of"):
        MemoryFeatureSampler(num_classes=3, class_draw="without")


def test_mfs_push_pools_only_kept_boxes_in_blocks_and_equals_one_push(monkeypatch):
    import ltdet2.modeling.feature_sources.memory_feature_sampler as mfs_module

    # 3 images (one without ground truth); class 1 has 7 boxes x 16 = 112 dense boxes for a capacity of 40
    targets = []
    for boxes, classes in (
        ([[5, 5, 40, 40], [10, 20, 50, 60], [0, 0, 30, 20]], [1, 0, 1]),
        ([], []),
        (
            [[1, 2, 3, 4], [20, 20, 60, 50], [8, 8, 40, 40], [2, 3, 30, 33], [9, 9, 19, 19], [30, 5, 60, 25]],
            [1, 2, 1, 1, 1, 2],
        ),
    ):
        instances = Instances((64, 64))
        instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
        targets.append(instances)
    pooled_boxes = []

    def pool(per_image):  # a feature that encodes the box and its image
        pooled_boxes.append(sum(len(b) for b in per_image))
        return torch.cat([torch.cat([b, torch.full((len(b), 1), float(i))], 1) for i, b in enumerate(per_image)])[
            :, :, None, None
        ].repeat(1, 1, 2, 2)

    context = SimpleNamespace(targets=targets, pool=pool, pooled_features=torch.zeros(0, 5, 2, 2))
    monkeypatch.setattr(mfs_module, "_POOL_BLOCK_BYTES", 20 * 4 * 5 * 2 * 2)  # 20 float32 5x2x2 boxes per call
    mfs = MemoryFeatureSampler(num_classes=3, feature_shape=(5, 2, 2), capacity=40, indicator=None)
    torch.manual_seed(3)
    mfs.push_ground_truth(context)
    # reference: every dense box pooled and pushed at once
    torch.manual_seed(3)
    dense = dense_boxes_per_image([t.gt_boxes.tensor for t in targets], [t.image_size for t in targets])
    reference = ClassQueue(3, 40, {"features": (5, 2, 2), "proposal_boxes": (4,), "gt_boxes": (4,)})
    reference.push(
        torch.cat([t.gt_classes.repeat_interleave(16) for t in targets]),
        features=pool(dense),
        proposal_boxes=torch.cat(dense),
        gt_boxes=torch.cat([t.gt_boxes.tensor.repeat_interleave(16, dim=0) for t in targets]),
    )
    for key, value in reference.state_dict().items():
        assert torch.equal(mfs.queue.state_dict()[key], value), key
    assert mfs.queue.counts.tolist() == [16, 40, 32]
    # only the 16 + 40 + 32 kept boxes were pooled, at most 20 per call
    assert sum(pooled_boxes[:-1]) == 88 and max(pooled_boxes[:-1]) == 20


@pytest.mark.parametrize("shared_eta", [False, True])
def test_mfs_dense_boxes_share_one_offset_draw_per_image_with_shared_eta(shared_eta):
    # two objects of the same size in one image: the official code's draw (shared_eta) gives both the same
    # 16 offsets, the paper's draws each its own
    instances = Instances((200, 200))
    instances.gt_boxes = Boxes(torch.tensor([[20.0, 20.0, 80.0, 80.0], [100.0, 100.0, 160.0, 160.0]]))
    instances.gt_classes = torch.tensor([0, 1])
    context = SimpleNamespace(
        targets=[instances],
        pool=lambda per_image: torch.zeros(sum(len(b) for b in per_image), 1, 1, 1),
        pooled_features=torch.zeros(0, 1, 1, 1),
    )
    mfs = MemoryFeatureSampler(
        num_classes=2, feature_shape=(1, 1, 1), capacity=16, indicator=None, shared_eta=shared_eta
    )
    torch.manual_seed(0)
    mfs.push_ground_truth(context)
    stored = mfs.queue.state_dict()
    proposals = [v for k, v in stored.items() if k.endswith("proposal_boxes")][0].view(2, 16, 4)
    offsets = proposals - instances.gt_boxes.tensor[:, None, :]
    assert torch.allclose(offsets[0], offsets[1], atol=1e-4) == shared_eta
    assert offsets.abs().max() <= 10.0 and offsets.abs().min() > 0  # at most w/6, inside the image


# --- mean score: updated before the loss ----------------------------------------------------------


@pytest.mark.parametrize("timing", ["before_loss", "after_loss"])
def test_ebl_of_a_step_reads_the_mean_scores_updated_by_that_step(timing):
    indicator = MeanScore(NUM_CLASSES, update_timing=timing)
    seen_by_source = []
    source = ScoreReader(seen_by_source)
    _, model = paired_models(indicators={"mean_score": indicator}, feature_sources=[source])
    model.roi_heads.box_predictor.cls_loss = EquilibriumLoss(indicator="mean_score")
    model.roi_heads.bind_indicators()
    calls = []
    model.roi_heads.box_predictor.cls_loss.register_forward_hook(
        lambda m, args, out: calls.append((args[0].detach().clone(), args[1].clone(), indicator.vector(), out))
    )
    batch = make_batch(boxes_per_image=4)
    initial = indicator.vector()
    train_losses(model, batch)
    train_losses(model, batch, seed=2)
    final = indicator.vector()
    assert torch.equal(seen_by_source[0], initial)  # sources run before the predictor: previous state
    for step, (logits, labels, scores_at_loss, loss) in enumerate(calls):
        if timing == "before_loss":
            # the update of this step already happened: the loss read the scores the step leaves
            after_step = final if step == 1 else seen_by_source[1]
            assert torch.equal(scores_at_loss, after_step)
        else:
            assert torch.equal(scores_at_loss, seen_by_source[step])
        assert loss.item() == pytest.approx(direct_ebl(logits.double(), labels, scores_at_loss.tolist()), rel=1e-5)
    assert torch.equal(calls[0][2], initial) == (timing == "after_loss")
    assert calls[0][2][-1].item() == pytest.approx(0.01)


class ScoreReader(FeatureSource):
    """Records the mean scores a feature source sees."""

    def __init__(self, seen):
        super().__init__()
        self.indicator_names = ("mean_score",)
        self.seen = seen

    def forward(self, context):
        self.seen.append(self.indicator().vector())
        return None


def test_mean_score_defaults_are_the_official_codes(monkeypatch):
    indicator = MeanScore(5)
    assert indicator.update_timing == "before_loss" and indicator.sync == "global"
    assert CumulativeCount(5).update_timing == "after_loss"
    with pytest.raises(ValueError, match="update_timing must be one of"):
        MeanScore(5, update_timing="during")

    # one process: "global" never communicates
    def refuse(*args, **kwargs):
        raise AssertionError("torch.distributed called in a single process")

    for name in ("all_reduce", "all_gather", "broadcast", "get_world_size"):
        monkeypatch.setattr(torch.distributed, name, refuse)
    indicator.update(torch.tensor([1, 1, 3, 5]), torch.tensor([0.5, 0.7, 0.2, 0.9]))
    expected = torch.full((6,), 0.01)
    expected[1] = 0.81 * 0.01 + 0.19 * 0.6
    expected[3] = 0.9 * 0.01 + 0.1 * 0.2
    assert torch.allclose(indicator.vector(), expected)
    mfs = MemoryFeatureSampler(num_classes=NUM_CLASSES, feature_shape=(128, 7, 7), capacity=20)
    _, model = paired_models(indicators={"mean_score": MeanScore(NUM_CLASSES)}, feature_sources=[mfs])
    model.roi_heads.box_predictor.cls_loss = EquilibriumLoss(indicator="mean_score")
    model.roi_heads.bind_indicators()
    assert torch.isfinite(train_losses(model, make_batch())["loss_cls"])


# --- dataset-guided ablation: raw background count 1 ----------------------------------------------


def test_dataset_guided_ebl_uses_a_raw_background_count_of_one():
    counts = [10, 300, 2, 7000]
    frequency = InstanceFrequency(counts, background_count=1)
    total = sum(counts)
    assert torch.allclose(frequency.vector(), torch.tensor([10, 300, 2, 7000, 1]) / total)
    loss = EquilibriumLoss(indicator="instance_frequency", background_score=0.5)  # not used: [C+1] given
    loss.bind_indicators({"instance_frequency": frequency})
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 4])
    # supplement eq. 1: margins log(n_j / n_y) of the raw counts with n_{C+1} = 1
    expected = direct_ebl(logits, labels, counts + [1])
    assert loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    # a background row's margins to every class with more than one instance are positive (0.01 of the
    # normalised counts would make them negative: log(n_j / total / 0.01) < 0 for n_j < 0.01 * total)
    scores = loss.scores(4)
    assert (torch.log(scores[:4] / scores[4]) > 0).all()
    assert (torch.log(torch.tensor(counts) / total / 0.01)[[0, 2]] < 0).all()
    # the MFS reads the C foreground entries only: p ∝ 1 / n
    mfs = MemoryFeatureSampler(num_classes=4, feature_shape=(1, 1, 1), indicator="instance_frequency")
    mfs.bind_indicators({"instance_frequency": frequency})
    weights = mfs.sampling_weights()
    assert torch.allclose(
        weights / weights.sum(),
        (1 / torch.tensor(counts, dtype=torch.float32)) / (1 / torch.tensor(counts, dtype=torch.float32)).sum(),
    )
    with pytest.raises(ValueError, match="background_count must be > 0"):
        InstanceFrequency(counts, background_count=0)


# --- normalised mask head -------------------------------------------------------------------------


def test_normalized_mask_predictor_is_scaled_cosine_plus_bias():
    torch.manual_seed(0)
    conv = NormalizedConv2d(6, 3, 1, scale=20.0)
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([0.5, -1.0, 0.0]))
    x = torch.randn(2, 6, 4, 5)
    out = conv(x)
    w = conv.weight.detach().reshape(3, 6)
    for n, k, i, j in ((0, 0, 0, 0), (1, 2, 3, 4), (0, 1, 2, 1), (1, 0, 1, 3)):
        pixel = x[n, :, i, j]
        cos = float(pixel @ w[k]) / (float(pixel.norm()) * float(w[k].norm()))
        assert out[n, k, i, j].item() == pytest.approx(20.0 * cos + conv.bias[k].item(), rel=1e-5, abs=1e-5)
    assert out.abs().max() <= 20.0 + 1.0 + 1e-4
    # official init: kaiming normal, fan-out (= output channels for a 1x1 conv), ReLU gain
    big = NormalizedConv2d(256, 1000, 1)
    assert big.weight.std().item() == pytest.approx((2 / 1000) ** 0.5, rel=0.02) and (big.bias == 0).all()


def test_normalized_mask_head_registered_built_from_yaml_and_trains():
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, build_mask_head

    assert ROI_MASK_HEAD_REGISTRY.get("NormalizedMaskRCNNConvUpsampleHead") is NormalizedMaskRCNNConvUpsampleHead
    cfg = get_cfg()
    cfg.MODEL.ROI_MASK_HEAD.NAME = "NormalizedMaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 7
    head = build_mask_head(cfg, ShapeSpec(channels=16, height=14, width=14))
    assert isinstance(head.predictor, NormalizedConv2d) and head.predictor.scale == 20.0
    assert head.predictor.weight.shape == (7, 256, 1, 1)

    stock_cfg = small_model_cfg(mask=True)
    cfg = long_tail_cfg(stock_cfg)
    cfg.roi_heads.mask_head._target_ = NormalizedMaskRCNNConvUpsampleHead
    torch.manual_seed(0)
    stock, model = instantiate(stock_cfg), instantiate(cfg)
    model.load_state_dict(stock.state_dict())  # same parameter names: a stock checkpoint loads
    losses = train_losses(model, make_batch(mask=True))
    assert torch.isfinite(losses["loss_mask"])
    losses["loss_mask"].backward()
    assert model.roi_heads.mask_head.predictor.weight.grad.abs().sum() > 0
