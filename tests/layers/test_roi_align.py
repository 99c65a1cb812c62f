"""ltdet2.layers.roi_align against torchvision's CPU RoIAlign: outputs and input gradients on random and degenerate
boxes, both alignments, fixed and adaptive sampling, several scales, uneven RoI counts per image, no RoIs."""

import copy

import pytest
import torch
from torchvision.ops import roi_align

from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

from ltdet2.layers import FastCPUROIAlign, FastCPUROIPooler, roi_align_cpu, roi_align_weights, use_fast_cpu_roi_align
from ltdet2.layers import roi_align as module

SHIPPED_MAX_COST_RATIO = module.MAX_COST_RATIO  # before the fixture below sets it


@pytest.fixture(autouse=True)
def always_separable(monkeypatch):
    """The separable backward on every test's shapes (tiny maps would take it anyway): no fallback on cost."""
    monkeypatch.setattr(module, "MAX_COST_RATIO", float("inf"))


TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-12)}


def random_rois(generator, counts, image_size, dtype, unsorted=False):
    """(K, 5) RoIs, counts[i] of image i: random boxes plus degenerate ones (empty, zero-size, inverted, outside
    the image, partly outside, sub-pixel, negative coordinates)."""
    rois = []
    for image, count in enumerate(counts):
        xy = torch.rand(count, 2, generator=generator, dtype=dtype) * (image_size * 1.2) - image_size * 0.1
        wh = torch.rand(count, 2, generator=generator, dtype=dtype) * image_size * 0.8
        boxes = torch.cat([xy, xy + wh], dim=1)
        if count >= 8:
            boxes[0] = torch.tensor([10.0, 12.0, 10.0, 12.0])  # zero size
            boxes[1] = torch.tensor([20.0, 5.0, 14.0, 9.0])  # inverted in x
            boxes[2] = torch.tensor([-50.0, -40.0, -20.0, -10.0])  # fully outside, negative
            boxes[3] = torch.tensor([image_size + 5.0, 3.0, image_size + 60.0, 40.0])  # fully outside, right
            boxes[4] = torch.tensor([-12.0, image_size - 10.0, 15.0, image_size + 30.0])  # partly outside
            boxes[5] = torch.tensor([7.3, 8.1, 7.6, 8.3])  # sub-pixel
            boxes[6] = torch.tensor([0.0, 0.0, float(image_size), float(image_size)])  # the whole image
            boxes[7] = torch.tensor([-3.5, -2.25, 4.0, 6.0])  # negative corner
        rois.append(torch.cat([torch.full((count, 1), float(image), dtype=dtype), boxes], dim=1))
    rois = torch.cat(rois) if rois else torch.zeros(0, 5, dtype=dtype)
    if unsorted:
        rois = rois[torch.randperm(len(rois), generator=generator)]
    return rois


def run(fn, input, rois, output_size, scale, sampling, aligned, seed=0, dtype=None, **kwargs):
    """(output, input grad) of ``fn`` (in ``dtype``, default the input's) for a seeded random output gradient."""
    dtype = dtype or input.dtype
    x = input.detach().to(dtype).requires_grad_(True)
    rois = rois.to(dtype) if isinstance(rois, torch.Tensor) else [boxes.to(dtype) for boxes in rois]
    out = fn(x, rois, output_size, scale, sampling, aligned, **kwargs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out.backward(grad.to(dtype))
    return out.detach(), x.grad


def both(input, rois, output_size, scale, sampling, aligned, separable_forward=False):
    """(output, input grad) of torchvision and of roi_align_cpu, for the same random output gradient."""
    args = (input, rois, output_size, scale, sampling, aligned)
    return run(roi_align, *args), run(roi_align_cpu, *args, separable_forward=separable_forward)


def assert_gradients_match(grad, grad_tv, input, rois, output_size, scale, sampling, aligned):
    """float64: equal to torchvision's up to 1e-12. float32: within 1e-5 (absolute, or relative above 1) of
    torchvision's float64 result (the exact value up to 1e-12), and of its float32 one give or take that one's own
    rounding error (its serial sums of many terms stray up to 1e-4 on the pixels where many sampling points land)."""
    if grad.dtype == torch.float64:
        torch.testing.assert_close(grad, grad_tv, atol=1e-12, rtol=1e-12)
        return
    _, exact = run(roi_align, input, rois, output_size, scale, sampling, aligned, dtype=torch.float64)
    torch.testing.assert_close(grad.double(), exact, atol=1e-5, rtol=1e-5)
    tolerance = (grad_tv.double() - exact).abs() + 1e-5 * (1 + exact.abs())
    assert torch.all((grad - grad_tv).abs().double() <= tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling", [0, 1, 2, 4])
@pytest.mark.parametrize("stride", [4, 8, 16, 32])
def test_matches_torchvision(dtype, aligned, sampling, stride):
    generator = torch.Generator().manual_seed(stride * 10 + sampling + 100 * aligned)
    image_size = 160
    size = image_size // stride
    features = torch.randn(4, 3, size, size + 1, generator=generator, dtype=dtype)
    rois = random_rois(generator, [9, 0, 3, 14], image_size, dtype)  # image 1 has no RoI
    (out_tv, grad_tv), (out, grad) = both(features, rois, (7, 5), 1.0 / stride, sampling, aligned)
    assert torch.equal(out, out_tv)  # the forward is torchvision's kernel
    assert_gradients_match(grad, grad_tv, features, rois, (7, 5), 1.0 / stride, sampling, aligned)
    assert grad_tv.abs().sum() > 0
    assert torch.all(grad[1] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling", [0, 2])
def test_separable_forward_matches(dtype, aligned, sampling):
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(3, 4, 20, 24, generator=generator, dtype=dtype)
    rois = random_rois(generator, [10, 5, 0], 80, dtype, unsorted=True)
    (out_tv, grad_tv), (out, grad) = both(features, rois, 7, 0.25, sampling, aligned, separable_forward=True)
    torch.testing.assert_close(out, out_tv, **TOL[dtype])
    assert_gradients_match(grad, grad_tv, features, rois, 7, 0.25, sampling, aligned)


def test_unsorted_rois_and_strided_gradient():
    """RoIs not grouped by image, and an output gradient with zero strides (from .sum())."""
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(3, 5, 16, 16, generator=generator, dtype=torch.float64)
    rois = random_rois(generator, [8, 3, 11], 64, torch.float64, unsorted=True)
    grads = []
    for fn in (roi_align, roi_align_cpu):
        x = features.clone().requires_grad_(True)
        (fn(x, rois, 7, 0.25, 0, True) * 2).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-12, rtol=1e-12)
    (_, grad_tv), (_, grad) = both(features, rois, (4, 6), 0.25, 0, False)
    torch.testing.assert_close(grad, grad_tv, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_rois(dtype):
    features = torch.randn(2, 3, 8, 8, dtype=dtype, requires_grad=True)
    out = roi_align_cpu(features, torch.zeros(0, 5, dtype=dtype), 7, 0.25, 0, True)
    assert out.shape == (0, 3, 7, 7) and out.dtype == dtype
    out.sum().backward()
    assert features.grad.shape == features.shape and torch.all(features.grad == 0)


def test_rois_of_one_image_only_and_list_input():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(3, 2, 12, 12, generator=generator)
    boxes = [torch.zeros(0, 4), torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 9.0, 7.0]]), torch.zeros(0, 4)]
    (out_tv, grad_tv), (out, grad) = both(features, boxes, 3, 0.25, 0, True)
    assert torch.equal(out, out_tv)
    assert_gradients_match(grad, grad_tv, features, boxes, 3, 0.25, 0, True)
    assert torch.all(grad[0] == 0) and torch.all(grad[2] == 0) and grad[1].abs().sum() > 0


def test_large_adaptive_grid_or_cost_falls_back(monkeypatch):
    """Past MAX_SAMPLES, or MAX_COST_RATIO, the backward is torchvision's own kernel: same results."""
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 2, 10, 10, generator=generator, dtype=torch.float64)
    rois = torch.tensor([[0, -100.0, -80.0, 300.0, 250.0], [1, 1.0, 2.0, 20.0, 30.0]], dtype=torch.float64)
    assert roi_align_weights(rois, 0.25, 7, 0, 10, 10, True) is not None
    monkeypatch.setattr(module, "MAX_SAMPLES", 100)
    assert roi_align_weights(rois, 0.25, 7, 0, 10, 10, True) is None
    (out_tv, grad_tv), (out, grad) = both(features, rois, 7, 0.25, 0, True)
    assert torch.equal(out, out_tv) and torch.equal(grad, grad_tv)
    monkeypatch.setattr(module, "MAX_SAMPLES", 1 << 25)
    monkeypatch.setattr(module, "MAX_COST_RATIO", 0.0)
    (out_tv, grad_tv), (out, grad) = both(features, rois, 7, 0.25, 0, True, separable_forward=True)
    assert torch.equal(out, out_tv) and torch.equal(grad, grad_tv)


def test_cost_rule():
    """Separable on the small CPU models' maps (128 px images: p2 is 32x32), torchvision's backward on p2 of an
    800 px image with small boxes (the dense matrices would span 200x200 pixels for 8-112 px boxes)."""
    generator = torch.Generator().manual_seed(9)

    def rois(count, image_size):
        xy = torch.rand(count, 2, generator=generator) * image_size * 0.8
        size = torch.exp(torch.rand(count, 1, generator=generator) * 2.64 + 2.08)  # 8-112 px
        return torch.cat([torch.zeros(count, 1), xy, (xy + size).clamp(max=image_size)], dim=1)

    assert roi_align_weights(rois(512, 128), 0.25, 7, 0, 32, 32, True, SHIPPED_MAX_COST_RATIO) is not None
    assert roi_align_weights(rois(128, 128), 0.25, 14, 0, 32, 32, True, SHIPPED_MAX_COST_RATIO) is not None
    assert roi_align_weights(rois(512, 800), 0.25, 7, 0, 200, 200, True, SHIPPED_MAX_COST_RATIO) is None


def test_weights_reproduce_the_forward():
    """Wy[k] @ input[b_k, c] @ Wx[k]^T is torchvision's output, bin by bin."""
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(2, 3, 9, 11, generator=generator, dtype=torch.float64)
    rois = random_rois(generator, [9, 4], 40, torch.float64)
    for aligned in (True, False):
        wy, wx = roi_align_weights(rois, 0.25, (5, 4), 0, 9, 11, aligned)
        assert wy.shape == (13, 5, 9) and wx.shape == (13, 4, 11)
        expected = roi_align(features, rois, (5, 4), 0.25, 0, aligned)
        pooled = wy[:, None] @ features[rois[:, 0].long()] @ wx[:, None].transpose(-1, -2)
        torch.testing.assert_close(pooled, expected, atol=1e-12, rtol=1e-12)


def test_gradcheck():
    generator = torch.Generator().manual_seed(6)
    features = torch.randn(2, 2, 6, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = random_rois(generator, [3, 2], 24, torch.float64)
    assert torch.autograd.gradcheck(lambda x: roi_align_cpu(x, rois, 3, 0.25, 0, True), (features,))


def test_module_takes_the_fast_path_only_for_cpu_training(monkeypatch):
    generator = torch.Generator().manual_seed(7)
    features = torch.randn(2, 4, 16, 16, generator=generator)
    rois = random_rois(generator, [6, 9], 64, torch.float32)
    stock = ROIAlign((7, 7), 0.25, 0, aligned=True)
    fast = FastCPUROIAlign.from_roi_align(stock)
    assert isinstance(fast, ROIAlign) and repr(fast).startswith("FastCPUROIAlign(output_size=(7, 7)")
    calls = []
    original = module.roi_align_cpu
    monkeypatch.setattr(module, "roi_align_cpu", lambda *a, **k: calls.append(1) or original(*a, **k))

    x_stock = features.clone().requires_grad_(True)
    x_fast = features.clone().requires_grad_(True)
    out_stock, out_fast = stock(x_stock, rois), fast(x_fast, rois.double())  # rois cast to the input's dtype
    assert calls == [1] and torch.equal(out_fast, out_stock)
    grad = torch.randn(out_stock.shape, generator=generator)
    out_stock.backward(grad)
    out_fast.backward(grad)
    torch.testing.assert_close(x_fast.grad, x_stock.grad, **TOL[torch.float32])

    assert torch.equal(fast(features, rois), out_stock)  # no gradient needed: torchvision's forward
    with torch.no_grad():
        fast(x_fast, rois)
    assert calls == [1]


def test_roi_pooler_with_fast_level_poolers():
    """The wiring: a Detectron2 ROIPooler whose level poolers are FastCPUROIAlign (FastCPUROIPooler)."""
    generator = torch.Generator().manual_seed(8)
    scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
    features = [torch.randn(3, 4, 128 // int(1 / s), 128 // int(1 / s), generator=generator) for s in scales]
    box_lists = []
    for count in (12, 0, 7):
        xy = torch.rand(count, 2, generator=generator) * 100
        wh = torch.rand(count, 2, generator=generator) * 120 + 1
        box_lists.append(Boxes(torch.cat([xy, (xy + wh).clamp(max=128)], dim=1)))
    stock = ROIPooler((7, 7), scales, 0, "ROIAlignV2")
    fast = FastCPUROIPooler((7, 7), scales, 0, "ROIAlignV2")
    assert all(type(p) is FastCPUROIAlign and p.aligned for p in fast.level_poolers)
    assert [p.spatial_scale for p in fast.level_poolers] == list(scales)
    results = []
    for pooler in (stock, fast):
        xs = [f.clone().double().requires_grad_(True) for f in features]
        out = pooler(xs, box_lists)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
        results.append((out, [x.grad for x in xs]))
    assert torch.equal(results[1][0], results[0][0])
    for grad_fast, grad_stock in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(grad_fast, grad_stock, atol=1e-12, rtol=1e-12)
    assert sum(g.abs().sum() for g in results[0][1]) > 0


def test_pooler_channels_last_and_stock_switch():
    """channels_last: the same pooled values, in NHWC layout on CPU; fast_backward=False: Detectron2's ROIAlign."""
    generator = torch.Generator().manual_seed(9)
    scales = (1 / 4, 1 / 8)
    features = [torch.randn(2, 5, 32 // int(1 / s), 32 // int(1 / s), generator=generator) for s in scales]
    boxes = [
        Boxes(torch.tensor([[1.0, 2.0, 20.0, 25.0], [0.0, 0.0, 31.0, 31.0]])),
        Boxes(torch.tensor([[4.0, 4.0, 9.0, 9.0]])),
    ]
    stock = ROIPooler((14, 14), scales, 0, "ROIAlignV2")(features, boxes)
    nhwc = FastCPUROIPooler((14, 14), scales, 0, "ROIAlignV2", channels_last=True)(features, boxes)
    assert not stock.is_contiguous(memory_format=torch.channels_last)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and nhwc.shape == (3, 5, 14, 14)
    assert torch.equal(nhwc, stock)
    plain = FastCPUROIPooler((14, 14), scales, 0, "ROIAlignV2", fast_backward=False)
    assert all(type(p) is ROIAlign for p in plain.level_poolers)
    assert torch.equal(plain(features, boxes), stock) and plain(features, boxes).is_contiguous()


def test_small_models_use_the_cpu_poolers():
    from detectron2.config import instantiate

    from fixtures.models import small_model_cfg

    model = instantiate(small_model_cfg(mask=True))
    box_pooler, mask_pooler = model.roi_heads.box_pooler, model.roi_heads.mask_pooler
    assert type(box_pooler) is FastCPUROIPooler and not box_pooler.channels_last
    assert type(mask_pooler) is FastCPUROIPooler and mask_pooler.channels_last
    assert sum(type(m) is FastCPUROIAlign for m in model.modules()) == 8  # p2-p5 of the box and of the mask pooler


@pytest.mark.parametrize("channels_last", [False, True])
def test_small_mask_rcnn_training_step(channels_last):
    """The small CPU Mask R-CNN with FastCPUROIPooler (the config's default, with or without the channels-last mask
    features) or use_fast_cpu_roi_align (the module swap): the same losses up to float rounding (exactly, without
    channels-last), and the same gradients up to float rounding, as the model with Detectron2's poolers."""
    from detectron2.config import instantiate

    from fixtures.models import make_batch, small_model_cfg, train_losses, with_stock_poolers

    cfg = small_model_cfg(mask=True)
    cfg.roi_heads.mask_pooler.channels_last = channels_last
    stock_cfg = with_stock_poolers(cfg)
    torch.manual_seed(0)
    stock = instantiate(stock_cfg)
    by_config = instantiate(cfg)
    by_config.load_state_dict(stock.state_dict())
    by_swap = copy.deepcopy(stock)
    assert use_fast_cpu_roi_align(by_swap) == 8  # p2-p5 of the box and of the mask pooler
    assert use_fast_cpu_roi_align(by_swap) == 0
    batch = make_batch(num_images=2, mask=True)
    grads = []
    for model in (stock, by_config, by_swap):
        assert sum(type(m) is FastCPUROIAlign for m in model.modules()) == (0 if model is stock else 8)
        losses = train_losses(model, batch)
        sum(losses.values()).backward()
        grads.append((losses, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}))
    stock_losses, stock_grads = grads[0]
    assert stock_losses["loss_mask"] > 0
    for losses, model_grads in grads[1:]:
        if channels_last and losses is grads[1][0]:
            for name, value in losses.items():
                torch.testing.assert_close(value, stock_losses[name], atol=0, rtol=1e-6, msg=name)
        else:
            assert {k: v.item() for k, v in losses.items()} == {k: v.item() for k, v in stock_losses.items()}
        assert model_grads.keys() == stock_grads.keys()
        for name, grad in model_grads.items():
            torch.testing.assert_close(grad, stock_grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_non_finite_rois_sample_nothing():
    features = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    inf = float("inf")
    rois = torch.tensor(
        [[0, 0.0, 0.0, inf, 20.0], [1, -inf, 2.0, 10.0, 12.0], [1, 2.0, 3.0, 20.0, 30.0]], dtype=torch.float64
    )
    x = features.clone().requires_grad_(True)
    roi_align_cpu(x, rois[:2], 4, 0.25, 0, True).sum().backward()
    assert torch.all(x.grad == 0)
    (_, grad_tv), (_, grad) = both(features, rois[2:], 4, 0.25, 0, True)
    torch.testing.assert_close(grad, grad_tv, atol=1e-12, rtol=1e-12)


def test_other_dtypes_go_to_torchvision():
    features = torch.randn(1, 2, 8, 8).half()
    rois = torch.tensor([[0, 1.0, 2.0, 20.0, 25.0]]).half()
    assert torch.equal(roi_align_cpu(features, rois, 3, 0.25, 0, True), roi_align(features, rois, 3, 0.25, 0, True))
