"""Deformable DETR (ltdet2.modeling.meta_arch.DeformableDETR: transformers' DeformableDetrForObjectDetection on a
Detectron2 backbone): its losses are transformers' own on the same pixels, mask and labels; the official code's
weights, encoder loss, initialisation and shared heads; the inference's top-k and output format; the box conversions;
the optimiser pieces; nothing downloaded; and the LT-Shapes project trains a few iterations and evaluates."""

import json
import math
import os
import socket

import pytest
import torch
from torch.nn import functional as F

from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ltdet2.engine.phases import load_config, run_phases
from ltdet2.modeling.meta_arch import DeformableDETR
from ltdet2.modeling.meta_arch.deformable_detr import (
    AdamWWithGradClip,
    DeformableDetrLRFactor,
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
)

from fixtures.models import ROOT, TEST_DEVICE, TINY_LT_SHAPES, tiny_detr_overrides

NUM_CLASSES = 6
# (height, width) of the batch's images: different, so that the batch is padded on both sides
SIZES = ((64, 80), (72, 56))
TRANSFORMERS_WEIGHTS = dict(cls=1.0, bbox=5.0, giou=2.0)  # how DeformableDetrForObjectDetection weighs its terms


def small_detr(**options):
    """The small LT-Shapes model, narrower (64 wide, 20 queries) for the tests, on TEST_DEVICE."""
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "models", "deformable_detr_r18_small.py")).model
    cfg.num_classes = NUM_CLASSES
    cfg.d_model = 64
    cfg.ffn_dim = 128
    cfg.num_queries = 20
    for key, value in options.items():
        cfg[key] = value
    torch.manual_seed(0)
    return instantiate(cfg).to(TEST_DEVICE)


def make_batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for h, w in SIZES:
        x0y0 = torch.rand(3, 2, generator=generator) * torch.tensor([w / 2, h / 2])
        wh = 8 + torch.rand(3, 2, generator=generator) * torch.tensor([w / 2 - 8, h / 2 - 8])
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.cat([x0y0, x0y0 + wh], dim=1))
        instances.gt_classes = torch.randint(NUM_CLASSES, (3,), generator=generator)
        image = (torch.rand(3, h, w, generator=generator) * 255).round()
        batch.append({"image": image, "instances": instances, "height": 2 * h, "width": 3 * w})
    return batch


def direct_inputs(model, batch):
    """transformers' inputs written out: normalised images zero-padded to the batch's largest height and width,
    the pixel mask (1 on the image), labels with cxcywh boxes divided by the image's own size."""
    height, width = max(h for h, _ in SIZES), max(w for _, w in SIZES)
    mean = model.pixel_mean.cpu()
    std = model.pixel_std.cpu()
    pixels = torch.zeros(len(batch), 3, height, width)
    mask = torch.zeros(len(batch), height, width, dtype=torch.long)
    labels = []
    for i, x in enumerate(batch):
        _, h, w = x["image"].shape
        pixels[i, :, :h, :w] = (x["image"] - mean) / std
        mask[i, :h, :w] = 1
        x0, y0, x1, y1 = x["instances"].gt_boxes.tensor.unbind(1)
        boxes = torch.stack([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h], dim=1)
        labels.append({"class_labels": x["instances"].gt_classes.to(TEST_DEVICE), "boxes": boxes.to(TEST_DEVICE)})
    return pixels.to(TEST_DEVICE), mask.to(TEST_DEVICE), labels


def wrapper_losses(model, batch, seed=1):
    model.train()
    torch.manual_seed(seed)  # dropout
    with EventStorage(0):
        return model(batch)


def transformers_losses(model, batch, seed=1):
    model.train()
    pixels, mask, labels = direct_inputs(model, batch)
    torch.manual_seed(seed)
    return model.detr(pixel_values=pixels, pixel_mask=mask, labels=labels)


# --- the losses -------------------------------------------------------------------------------------------------------


def test_loss_equals_transformers_own_loss_on_the_same_pixels_mask_and_labels():
    """Every option that is not transformers' off (its weights, no encoder loss): the wrapper's terms are those
    DeformableDetrForObjectDetection computes from the written-out inputs (its unweighted terms times its weights;
    the cardinality error, no loss, aside), and their sum is its loss."""
    model = small_detr(loss_weights=TRANSFORMERS_WEIGHTS, encoder_loss=False)
    batch = make_batch()
    ours = wrapper_losses(model, batch)
    theirs = transformers_losses(model, batch)
    expected = {k: v for k, v in theirs.loss_dict.items() if not k.startswith("cardinality_error")}
    assert set(ours) == set(expected) == {f"{t}{s}" for t in ("loss_ce", "loss_bbox", "loss_giou") for s in ("", "_0")}
    for name, value in expected.items():
        assert torch.isfinite(value) and value > 0, name
        weight = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}[name.removesuffix("_0")]
        torch.testing.assert_close(ours[name], weight * value, rtol=0, atol=1e-6, msg=name)
    torch.testing.assert_close(sum(ours.values()), theirs.loss, rtol=0, atol=1e-5)


def test_official_weights_and_the_encoder_loss():
    """The official weights multiply transformers' terms (cls 2, L1 5, GIoU 2); the encoder's terms are added, and
    they (only they) train the two-stage proposal head: the last class head, which scores the encoder's positions."""
    batch = make_batch()
    plain = small_detr(loss_weights=TRANSFORMERS_WEIGHTS, encoder_loss=False)
    model = small_detr()
    model.load_state_dict(plain.state_dict())
    base = wrapper_losses(plain, batch)
    ours = wrapper_losses(model, batch)
    assert set(ours) == set(base) | {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc"}
    for name, value in base.items():
        weight = 2.0 if name.startswith("loss_ce") else 1.0
        torch.testing.assert_close(ours[name], weight * value, rtol=0, atol=1e-6, msg=name)

    proposal_head = model.detr.class_embed[-1].weight
    sum(v for k, v in ours.items() if not k.endswith("_enc")).backward(retain_graph=True)
    assert proposal_head.grad is None or proposal_head.grad.abs().sum() == 0  # the top-k choice has no gradient
    model.zero_grad()
    sum(v for k, v in ours.items() if k.endswith("_enc")).backward()
    assert proposal_head.grad.abs().sum() > 0


def test_heads_are_shared_with_the_decoder_and_initialised_as_the_official_code():
    model = small_detr()
    detr = model.detr
    assert len(detr.class_embed) == len(detr.bbox_embed) == 2 + 1  # 2 decoder layers + the encoder's proposals
    for decoder_heads, heads in (
        (detr.model.decoder.class_embed, detr.class_embed),
        (detr.model.decoder.bbox_embed, detr.bbox_embed),
    ):
        for a, b in zip(decoder_heads.parameters(), heads.parameters()):
            assert a is b
    # one head copied to every layer: classification bias at the prior 0.01, zero last box layer
    for head in detr.class_embed:
        torch.testing.assert_close(head.bias, torch.full_like(head.bias, -math.log(99)))
        assert torch.equal(head.weight, detr.class_embed[0].weight)
    for head in detr.bbox_embed:
        assert not head.layers[-1].weight.any() and not head.layers[-1].bias.any()
    for layer in (*detr.model.encoder.layers, *detr.model.decoder.layers):
        attn = getattr(layer, "encoder_attn", None) or layer.self_attn
        assert not attn.sampling_offsets.weight.any() and not attn.attention_weights.weight.any()
    # parameters have one name each (the backbone only under backbone.)
    names = [name for name, _ in model.named_parameters()]
    assert len(names) == len(set(names)) and not any(n.startswith("detr.model.backbone") for n in names)
    assert sum(n.startswith("backbone.") for n in names) == len(list(model.backbone.parameters()))


def test_nothing_is_downloaded_and_the_deformable_attention_is_pure_pytorch(monkeypatch):
    from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention

    def refuse(*args, **kwargs):
        raise AssertionError("DeformableDETR opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = small_detr()
    attention = [m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]
    assert len(attention) == 2 + 2  # the encoder's and decoder's layers
    for module in attention:
        assert "forward" not in vars(module) and type(module) is MultiScaleDeformableAttention
        assert type(module).forward.__module__ == MultiScaleDeformableAttention.__module__
    assert not model.detr.use_kernels
    losses = wrapper_losses(model, make_batch())
    assert all(torch.isfinite(v) for v in losses.values())


def test_too_few_encoder_positions_for_the_queries_are_refused():
    model = small_detr(num_queries=100)  # a 72x80 batch gives 9*10 + 5*5 + 3*3 + 2*2 = 128 positions
    model.num_queries = 200  # what a 72x80 batch cannot give
    with pytest.raises(ValueError, match="72x80 batch gives the encoder 128 positions.*fewer than num_queries=200"):
        wrapper_losses(model, make_batch())


# --- inference --------------------------------------------------------------------------------------------------------


def test_detections_are_the_top_k_of_every_query_and_class():
    model = small_detr(num_detections=4)
    logits = torch.tensor([[[0.0, 3.0, -1.0], [2.0, -5.0, 1.0]]])  # 2 queries x 3 classes
    pred_boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]])
    [result] = model.detections(logits, pred_boxes, [(10, 20)])
    assert result.image_size == (10, 20)
    # sorted sigmoid scores 3 (q0 c1), 2 (q1 c0), 1 (q1 c2), 0 (q0 c0)
    torch.testing.assert_close(result.scores, torch.tensor([3.0, 2.0, 1.0, 0.0]).sigmoid())
    assert result.pred_classes.tolist() == [1, 0, 2, 0]
    box0 = [(0.5 - 0.1) * 20, (0.5 - 0.2) * 10, (0.5 + 0.1) * 20, (0.5 + 0.2) * 10]
    box1 = [0.0, (0.75 - 0.25) * 10, 0.5 * 20, 10.0]
    torch.testing.assert_close(result.pred_boxes.tensor, torch.tensor([box0, box1, box1, box0]))
    model.num_detections = 300  # more than queries x classes: all of them
    [result] = model.detections(logits, pred_boxes, [(10, 20)])
    assert len(result) == 6


def test_inference_gives_instances_at_the_requested_size():
    model = small_detr(num_detections=50).eval()
    batch = make_batch()
    for x in batch:
        del x["instances"]
    outputs = model(batch)
    assert len(outputs) == len(batch)
    for output, x in zip(outputs, batch):
        instances = output["instances"]
        assert instances.image_size == (x["height"], x["width"])
        assert {"pred_boxes", "scores", "pred_classes"} == set(instances.get_fields())
        assert 0 < len(instances) <= 50
        assert (instances.scores[:-1] >= instances.scores[1:]).all()  # top-k order
        assert ((instances.pred_classes >= 0) & (instances.pred_classes < NUM_CLASSES)).all()
        boxes = instances.pred_boxes.tensor
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= x["width"]).all() and (boxes[:, 3] <= x["height"]).all()
    # the same detections, before detector_postprocess, come at the input images' sizes
    raw = model.inference(batch, do_postprocess=False)
    assert [r.image_size for r in raw] == list(SIZES)


# --- boxes ------------------------------------------------------------------------------------------------------------


def test_box_conversions_round_trip_from_targets_to_detections():
    boxes = torch.tensor([[1.0, 2.0, 11.0, 7.0], [0.0, 0.0, 80.0, 64.0], [30.5, 10.25, 31.5, 60.0]])
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(boxes)), boxes)
    torch.testing.assert_close(box_xyxy_to_cxcywh(boxes[:1]), torch.tensor([[6.0, 4.5, 10.0, 5.0]]))
    # ground truth of an 80 (w) x 64 (h) image -> transformers' target -> a detection at that size: the same box
    instances = Instances((64, 80))
    instances.gt_boxes = Boxes(boxes)
    instances.gt_classes = torch.tensor([0, 1, 2])
    [target] = DeformableDETR.targets_from_instances([instances], [(64, 80)], "cpu")
    torch.testing.assert_close(target["boxes"][0], torch.tensor([6.0 / 80, 4.5 / 64, 10.0 / 80, 5.0 / 64]))
    assert target["class_labels"].tolist() == [0, 1, 2]
    model = small_detr(num_detections=3)
    logits = torch.full((1, 3, NUM_CLASSES), -9.0)
    logits[0, torch.arange(3), torch.tensor([0, 1, 2])] = torch.tensor([3.0, 2.0, 1.0])
    [result] = model.detections(logits, target["boxes"][None], [(64, 80)])
    torch.testing.assert_close(result.pred_boxes.tensor, boxes)


# --- optimisation -----------------------------------------------------------------------------------------------------


def test_learning_rate_factors_and_global_gradient_clipping():
    factor = DeformableDetrLRFactor(backbone=0.1, linear_proj=0.1)
    assert factor("backbone.res3.0.conv1.weight") == 0.1
    assert factor("detr.model.encoder.layers.0.self_attn.sampling_offsets.weight") == 0.1
    assert factor("detr.model.decoder.layers.1.encoder_attn.sampling_offsets.bias") == 0.1
    assert factor("detr.model.reference_points.weight") == 0.1
    assert factor("detr.model.decoder.class_embed.0.weight") == factor("detr.model.input_proj.0.0.weight") == 1.0

    torch.manual_seed(0)
    weights = [torch.randn(3, 4, requires_grad=True), torch.randn(5, requires_grad=True)]
    copies = [w.detach().clone().requires_grad_(True) for w in weights]
    grads = [torch.randn(3, 4) * 10, torch.randn(5)]
    ours = AdamWWithGradClip([{"params": weights[:1]}, {"params": weights[1:], "lr": 0.1}], lr=1.0, clip_max_norm=0.1)
    plain = torch.optim.AdamW([{"params": copies[:1]}, {"params": copies[1:], "lr": 0.1}], lr=1.0)
    for w, c, g in zip(weights, copies, grads):
        w.grad, c.grad = g.clone(), g.clone()
    torch.nn.utils.clip_grad_norm_(copies, 0.1)  # one norm over both groups (DETR's clip_grad_norm_)
    ours.step()
    plain.step()
    for w, c in zip(weights, copies):
        torch.testing.assert_close(w, c)
    assert torch.linalg.vector_norm(torch.cat([w.grad.flatten() for w in weights])) == pytest.approx(0.1, rel=1e-5)


def test_lt_shapes_project_optimizer_groups():
    cfg = load_config(os.path.join(ROOT, "projects", "deformable_detr.py"), ["train.device=cpu"])
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    assert isinstance(optimizer, AdamWWithGradClip) and optimizer.clip_max_norm == 0.1
    lr = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert {lr[id(p)] for p in model.backbone.parameters()} == {2e-5}
    assert {lr[id(p)] for n, p in model.detr.named_parameters() if "sampling_offsets" in n} == {2e-5}
    assert {lr[id(p)] for p in model.detr.class_embed.parameters()} == {2e-4}
    assert {group["weight_decay"] for group in optimizer.param_groups} == {1e-4}
    assert len(lr) == len(list(model.parameters()))


# --- the LT-Shapes project --------------------------------------------------------------------------------------------


def test_deformable_detr_project_trains_a_few_iterations_and_evaluates(tmp_path, tiny_dataset):
    out = str(tmp_path / "run")
    cfg = load_config(
        os.path.join(ROOT, "projects", "deformable_detr.py"), tiny_detr_overrides(tiny_dataset, out, iterations=3)
    )
    assert "phases" not in cfg  # one phase: a plain config
    results = run_phases(cfg)
    assert {"AP", "APr", "APc", "APf"} <= set(results[""]["bbox"])
    with open(os.path.join(out, "metrics.json")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    losses = [r for r in records if "total_loss" in r]
    assert len(losses) == 3 and all(math.isfinite(r["total_loss"]) for r in losses)
    assert all(math.isfinite(r["loss_ce_enc"]) and math.isfinite(r["loss_giou_0"]) for r in losses)
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["model"]
    assert final["detr.class_embed.0.weight"].shape == (TINY_LT_SHAPES.num_classes, 128)
    assert torch.equal(final["detr.class_embed.1.bias"], final["detr.model.decoder.class_embed.1.bias"])


def test_a_run_resumed_mid_phase_ends_with_the_uninterrupted_run_s_weights(tmp_path, tiny_dataset):
    """Dropout (0.1 in the transformer), AdamW's moments, the clipped gradients and the data stream: a run stopped
    after its second iteration and resumed ends bit for bit where the uninterrupted one does."""
    out = str(tmp_path / "run")
    project = os.path.join(ROOT, "projects", "deformable_detr.py")
    run_phases(load_config(project, tiny_detr_overrides(tiny_dataset, out, iterations=3, checkpoint_period=1)))
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    for name in ("phase_done.json", "model_final.pth", "model_0000002.pth"):
        os.remove(os.path.join(out, name))
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    run_phases(
        load_config(project, tiny_detr_overrides(tiny_dataset, out, iterations=3, checkpoint_period=1)), resume=True
    )
    resumed = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    assert resumed["iteration"] == final["iteration"] == 2
    assert resumed["model"].keys() == final["model"].keys()
    # the resumed step is AdamW's third: equal weights need its restored moments and step count
    assert all(torch.equal(resumed["model"][k], final["model"][k]) for k in final["model"])


def test_padding_mask_follows_the_image_at_every_level():
    """The pixel mask reaches every level as the transformers encoder resizes it (nearest): the backbone adapter's
    masks of a padded image are True exactly on its feature cells."""
    model = small_detr()
    images, mask = model.preprocess_image(make_batch())
    adapter = model.detr.model.backbone
    levels = adapter(images.tensor, mask)
    assert [f.shape[1] for f, _ in levels] == adapter.intermediate_channel_sizes == [128, 256, 512]
    for feature, level_mask in levels:
        expected = F.interpolate(mask[None].float(), size=feature.shape[-2:]).to(torch.bool)[0]
        assert torch.equal(level_mask, expected)
    assert mask[1, :72, :56].all() and not mask[1, :, 56:].any() and not mask[0, 64:].any()
