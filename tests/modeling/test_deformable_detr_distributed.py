"""Deformable DETR (ltdet2.modeling.meta_arch.DeformableDETR) with 2 gloo processes on CPU: the loss terms are
normalised by the mean number of boxes over the processes, as the official code's ``SetCriterion`` does
(``num_boxes = all_reduce(local count) / world_size``, at least 1; each term a sum over the process's matched boxes
divided by it), not by the local count as ``transformers`` does. The ranks hold different numbers of boxes; each
rank's terms are checked against ``transformers``' terms of its batch on one process (local count) times
local / mean, the last layer's focal, L1 and GIoU terms against the official formulas written out, and the sum of the
ranks' gradients against the official objective's."""

import os
import sys
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import transformers.utils
from torch import nn
from torchvision.ops import generalized_box_iou, sigmoid_focal_loss

from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ltdet2.modeling.meta_arch import DeformableDETR, deformable_detr
from ltdet2.modeling.meta_arch.deformable_detr import box_cxcywh_to_xyxy

from fixtures.distributed import free_port

WORLD_SIZE = 2
NUM_CLASSES = 3
NUM_QUERIES = 8
SIZE = (48, 64)  # (height, width): the encoder's 6x8 + 3x4 + 2x2 = 64 positions hold the NUM_QUERIES proposals
WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}  # the official weights, DeformableDETR's defaults
# per case, the number of ground-truth boxes of each image of each rank: different counts on the two ranks
CASES = {
    "one_vs_three": [[1], [3]],  # mean 2: factors 1/2 and 3/2
    "two_images_with_empty_ones": [[0, 2], [1, 0]],  # mean 1.5: factors 4/3 and 2/3
    "no_box_vs_three": [[0], [3]],  # transformers' local count clamped at 1: factors 1/1.5 and 2
    "no_box_vs_one": [[0], [1]],  # the mean 0.5 clamped at 1: factors 1 and 1
}


class TinyBackbone(Backbone):
    """Two convolution levels (strides 8 and 16, 8 channels); no normalisation layer, so that an image's features do
    not depend on the rest of its batch."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, kernel_size=8, stride=8)
        self.down = nn.Conv2d(8, 8, kernel_size=3, stride=2, padding=1)

    def forward(self, x):
        p3 = torch.relu(self.stem(x / 255.0))
        return {"p3": p3, "p4": torch.relu(self.down(p3))}

    def output_shape(self):
        return {"p3": ShapeSpec(channels=8, stride=8), "p4": ShapeSpec(channels=8, stride=16)}


def tiny_detr():
    """The same tiny two-stage model (weights from seed 0) on every process, without dropout."""
    torch.manual_seed(0)
    return DeformableDETR(
        backbone=TinyBackbone(),
        num_classes=NUM_CLASSES,
        d_model=32,  # input_proj's GroupNorm(32, d_model)
        encoder_layers=1,
        decoder_layers=2,  # terms of the last layer and of layer 0 (aux_loss)
        num_heads=2,
        ffn_dim=16,
        n_points=2,
        dropout=0.0,
        num_feature_levels=3,
        num_queries=NUM_QUERIES,
        num_detections=NUM_QUERIES,
        pixel_mean=(0.0, 0.0, 0.0),
    )


def rank_batch(case, rank):
    """One rank's images in a case: SIZE images with the case's numbers of boxes."""
    generator = torch.Generator().manual_seed(1000 * list(CASES).index(case) + rank)
    h, w = SIZE
    batch = []
    for num in CASES[case][rank]:
        x0y0 = torch.rand(num, 2, generator=generator) * torch.tensor([w / 2, h / 2])
        wh = 8 + torch.rand(num, 2, generator=generator) * torch.tensor([w / 2 - 8, h / 2 - 8])
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.cat([x0y0, x0y0 + wh], dim=1))
        instances.gt_classes = torch.randint(NUM_CLASSES, (num,), generator=generator)
        batch.append({"image": torch.rand(3, h, w, generator=generator) * 255, "instances": instances})
    return batch


def counts(case):
    return [sum(images) for images in CASES[case]]


def losses_and_gradients(model, batch):
    """The wrapper's weighted terms in training mode and the gradients of their sum."""
    model.train()
    model.zero_grad()
    with EventStorage(0):
        losses = model(batch)
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return {k: v.detach() for k, v in losses.items()}, grads


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        model = tiny_detr()
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        results = {case: losses_and_gradients(model, rank_batch(case, rank)) for case in CASES}
        torch.save({"weights": weights, "results": results}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def direct_inputs(model, batch):
    """transformers' inputs written out: normalised images (all SIZE, no padding), the pixel mask, labels with cxcywh
    boxes divided by the image's size."""
    h, w = SIZE
    pixels = torch.stack([(x["image"] - model.pixel_mean) / model.pixel_std for x in batch])
    mask = torch.ones(len(batch), h, w, dtype=torch.long)
    labels = []
    for x in batch:
        x0, y0, x1, y1 = x["instances"].gt_boxes.tensor.unbind(1)
        boxes = torch.stack([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h], dim=1)
        labels.append({"class_labels": x["instances"].gt_classes, "boxes": boxes})
    return pixels, mask, labels


def assert_close(actual, expected, what, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda message: f"{what}\n{message}")


@torch.no_grad()
def official_last_layer_terms(model, batch, num_boxes):
    """The official code's unweighted focal, L1 and GIoU terms of the last decoder layer, written out: sums over the
    batch's queries (focal) and matched (query, box) pairs (|pred - target|, 1 - GIoU), divided by ``num_boxes``. The
    matching is transformers' Hungarian matcher with the model's costs."""
    from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher

    pixels, mask, labels = direct_inputs(model, batch)
    outputs = model.detr(pixel_values=pixels, pixel_mask=mask)
    config = model.detr.config
    matcher = DeformableDetrHungarianMatcher(
        class_cost=config.class_cost, bbox_cost=config.bbox_cost, giou_cost=config.giou_cost
    )
    indices = matcher({"logits": outputs.logits, "pred_boxes": outputs.pred_boxes}, labels)
    onehot = torch.zeros_like(outputs.logits)
    l1 = giou = 0.0
    for i, (queries, targets) in enumerate(indices):
        onehot[i, queries, labels[i]["class_labels"][targets]] = 1.0
        pred, target = outputs.pred_boxes[i, queries], labels[i]["boxes"][targets]
        l1 += (pred - target).abs().sum()
        giou += (1 - generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target)).diag()).sum()
    focal = sigmoid_focal_loss(outputs.logits, onehot, alpha=config.focal_alpha, gamma=2.0, reduction="sum")
    return {"loss_ce": focal / num_boxes, "loss_bbox": l1 / num_boxes, "loss_giou": giou / num_boxes}


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed (gloo)")
def test_terms_are_normalised_by_the_mean_box_count_over_processes(tmp_path, monkeypatch):
    if sys.platform.startswith("linux") and "GLOO_SOCKET_IFNAME" not in os.environ:
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # stay on the loopback interface
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    saved = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]

    model = tiny_detr()  # this process has no process group: transformers' normalisation by the local count
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert all(torch.equal(s["weights"], weights) for s in saved)  # the same model on every process
    names = {f"{term}{suffix}" for term in WEIGHTS for suffix in ("", "_0", "_enc")}

    for case in CASES:
        local_counts = counts(case)
        official_num_boxes = max(sum(local_counts) / WORLD_SIZE, 1.0)
        expected_grads = {}
        for rank in range(WORLD_SIZE):
            batch = rank_batch(case, rank)
            losses, _ = saved[rank]["results"][case]
            single, single_grads = losses_and_gradients(model, batch)
            assert set(losses) == set(single) == names
            # the one-process terms are transformers' own (times the weights; the encoder's terms come from
            # transformers' criterion too, but the model does not return them)
            pixels, mask, labels = direct_inputs(model, batch)
            with torch.no_grad():
                theirs = model.detr(pixel_values=pixels, pixel_mask=mask, labels=labels).loss_dict
            for name in names - {n for n in names if n.endswith("_enc")}:
                weighted = WEIGHTS[name.removesuffix("_0")] * theirs[name]
                assert_close(single[name], weighted, f"{case}, rank {rank}, one process: {name}")

            # two processes: transformers' term x (local count / mean count), both at least 1
            factor = max(local_counts[rank], 1.0) / official_num_boxes
            for name in names:
                assert_close(losses[name], single[name] * factor, f"{case}, rank {rank}: {name}")
            # the official formulas: sums over the process's queries / matched boxes, divided by the mean count
            official = official_last_layer_terms(model, batch, official_num_boxes)
            for name, value in official.items():
                assert_close(losses[name], WEIGHTS[name] * value, f"{case}, rank {rank}, official: {name}")
            if local_counts[rank]:
                assert official["loss_bbox"] > 0

            # the gradient of the official objective (sum over the processes of their terms) is the sum over the
            # ranks of each rank's one-process gradient times its factor
            for name, grad in single_grads.items():
                expected_grads[name] = expected_grads.get(name, 0.0) + factor * grad

        summed = {}
        for rank in range(WORLD_SIZE):
            for name, grad in saved[rank]["results"][case][1].items():
                summed[name] = summed.get(name, 0.0) + grad
        assert set(summed) == set(expected_grads)
        # an absolute tolerance on the gradients' scale: some are zero up to rounding (e.g. the biases before
        # input_proj's GroupNorm of one channel per group)
        atol = 1e-5 * max(grad.abs().max() for grad in expected_grads.values())
        for name, grad in summed.items():
            assert_close(grad, expected_grads[name], f"{case}: gradient of {name}", rtol=1e-4, atol=atol)


def test_accelerate_s_own_normalisation_is_refused(monkeypatch):
    """With accelerate's PartialState set up, transformers already divides by the mean box count: the wrapper refuses
    to correct a second time (accelerate is not a dependency: a stand-in module)."""
    state = types.SimpleNamespace(_shared_state={"num_processes": 2})
    monkeypatch.setitem(sys.modules, "accelerate", types.SimpleNamespace(PartialState=state))
    monkeypatch.setattr(transformers.utils, "is_accelerate_available", lambda: True)
    with pytest.raises(RuntimeError, match="a second time"):
        deformable_detr._refuse_accelerate_normalisation()
    state._shared_state = {}
    deformable_detr._refuse_accelerate_normalisation()  # set up by nobody: nothing to refuse
