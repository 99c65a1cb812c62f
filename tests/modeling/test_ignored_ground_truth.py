"""Ignored ground truth (``gt_valid`` False) in LongTailROIHeads: RoIs matched to it are neither positive nor
negative for the box head; the RPN, and the heads without invalid boxes, are unchanged."""

import copy

import torch

from detectron2.config import instantiate
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from ltdet2.modeling.feature_sources.base import FeatureSource

from fixtures.models import TEST_DEVICE, long_tail_cfg, make_batch, paired_models, small_model_cfg, train_losses


def _with_validity(batch, invalid):
    """A copy of ``batch`` whose instances carry ``gt_valid``; ``invalid[i]``: the invalid boxes of image i."""
    batch = copy.deepcopy(batch)
    for index, item in enumerate(batch):
        valid = torch.ones(len(item["instances"]), dtype=torch.bool)
        valid[list(invalid[index])] = False
        item["instances"].gt_valid = valid
    return batch


class RecordingSource(FeatureSource):
    """Records what a feature source sees; adds no rows."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, context):
        self.seen.append((context.targets, context.proposals))
        return None


def _heads(**options):
    torch.manual_seed(0)
    cfg = long_tail_cfg(small_model_cfg(), **options)
    cfg.roi_heads.batch_size_per_image = 64
    return instantiate(cfg).roi_heads


def test_rois_matched_to_an_invalid_box_are_neither_positive_nor_negative():
    heads = _heads(feature_sources=[RecordingSource()])
    heads.train()
    # box 0 invalid (class 2), box 1 valid (class 1), far apart
    targets = Instances((100, 100))
    targets.gt_boxes = Boxes(torch.tensor([[5.0, 5.0, 35.0, 35.0], [60.0, 60.0, 95.0, 95.0]]))
    targets.gt_classes = torch.tensor([2, 1])
    targets.gt_valid = torch.tensor([False, True])
    shifts = torch.arange(-4.0, 5.0).repeat_interleave(2).view(-1, 2)  # 9 jittered copies of each box
    near = torch.cat([targets.gt_boxes.tensor[i] + shifts.repeat(1, 2) for i in range(2)])
    background = torch.tensor([[40.0, 0.0, 55.0, 20.0], [0.0, 45.0, 20.0, 58.0], [38.0, 38.0, 58.0, 58.0]])
    proposals = Instances((100, 100))
    proposals.proposal_boxes = Boxes(torch.cat([near, background]))
    proposals.objectness_logits = torch.zeros(len(proposals))

    with EventStorage(0):
        sampled = heads.label_and_sample_proposals([proposals], [targets])[0]
    iou = pairwise_iou(targets.gt_boxes, sampled.proposal_boxes)  # [2, R]
    best_iou, best_gt = iou.max(dim=0)
    matched_invalid = (best_iou >= 0.5) & (best_gt == 0)
    assert not matched_invalid.any()  # neither positive nor (since IoU >= 0.5) negative
    # every RoI near the valid box (9 + the box itself, appended as a proposal) is a positive of class 1
    positives = sampled.gt_classes < heads.num_classes
    assert int(positives.sum()) == 10 and (sampled.gt_classes[positives] == 1).all()
    # the 3 background boxes stay negatives
    assert int((sampled.gt_classes == heads.num_classes).sum()) == 3
    # gt_indices index the valid boxes (the valid box is the first valid one)
    assert (sampled.gt_indices[positives] == 0).all() and (sampled.gt_indices[~positives] == -1).all()
    # the caller's ground truth is left as it was (the heads sample with a copy)
    assert targets.get_fields().keys() == {"gt_boxes", "gt_classes", "gt_valid"}
    assert targets.gt_classes.tolist() == [2, 1]
    assert heads.latest_sampled_proposals[0].proposal_boxes.tensor.equal(sampled.proposal_boxes.tensor)


def test_rpn_sees_every_box_and_sources_see_only_valid_ground_truth():
    stock, ours = paired_models(feature_sources=[RecordingSource()])
    batch = make_batch(num_images=2, boxes_per_image=4, seed=3)
    all_valid = train_losses(ours, _with_validity(batch, [(), ()]))
    some_invalid = train_losses(ours, _with_validity(batch, [(1,), (0, 2)]))
    for name in ("loss_rpn_cls", "loss_rpn_loc"):
        assert some_invalid[name].item() == all_valid[name].item()
    assert some_invalid["loss_cls"].item() != all_valid["loss_cls"].item()

    targets, proposals = ours.roi_heads.feature_sources[0].seen[-1]
    assert [len(t) for t in targets] == [3, 2]
    for image_targets, image_rois, image_batch in zip(targets, proposals, _with_validity(batch, [(1,), (0, 2)])):
        foreground = image_rois.gt_indices >= 0
        assert foreground.any()
        matched = image_targets.gt_boxes.tensor[image_rois.gt_indices[foreground]]
        assert matched.equal(image_rois.gt_boxes.tensor[foreground])
        valid_boxes = image_batch["instances"].gt_boxes.tensor[image_batch["instances"].gt_valid]
        assert image_targets.gt_boxes.tensor.equal(valid_boxes.to(TEST_DEVICE))


def test_all_valid_equals_stock():
    stock, ours = paired_models()
    batch = make_batch(num_images=2, boxes_per_image=3, seed=5)
    expected = train_losses(stock, batch)
    got = train_losses(ours, _with_validity(batch, [(), ()]))
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].item() == expected[name].item(), name


def test_sampling_is_stocks_and_gt_indices_come_with_detectron2s_copy_of_the_matched_ground_truth():
    """Through Detectron2's public label_and_sample_proposals (no private hook): the same RoIs and labels as the
    stock heads (same random draws), ``gt_indices`` of the matched box, -1 for background and for an image
    without ground truth; nothing of the step is kept on the heads but ``latest_sampled_proposals``."""
    stock, ours = paired_models(feature_sources=[RecordingSource()])
    batch = make_batch(num_images=3, boxes_per_image=4, seed=3, empty_images=(1,))
    sampled = {}
    for name, model in (("stock", stock), ("ours", ours)):
        model.roi_heads.register_forward_hook(lambda m, args, out, name=name: sampled.update({name: out[0]}))
    expected, losses = train_losses(stock, batch), train_losses(ours, batch)
    assert losses.keys() == expected.keys() and all(torch.equal(losses[k], expected[k]) for k in expected)
    targets, _ = ours.roi_heads.feature_sources[0].seen[-1]
    for index, (stock_rois, rois, image_targets) in enumerate(zip(sampled["stock"], sampled["ours"], targets)):
        assert torch.equal(stock_rois.proposal_boxes.tensor, rois.proposal_boxes.tensor)
        assert torch.equal(stock_rois.gt_classes, rois.gt_classes)
        assert rois.gt_indices.dtype == torch.int64
        foreground = rois.gt_classes < ours.roi_heads.num_classes
        assert (rois.gt_indices[~foreground] == -1).all() and (rois.gt_indices[foreground] >= 0).all()
        if index == 1:
            assert len(image_targets) == 0 and not foreground.any()
            continue
        matched = rois.gt_indices[foreground]
        assert torch.equal(image_targets.gt_boxes.tensor[matched], rois.gt_boxes.tensor[foreground])
        assert torch.equal(image_targets.gt_classes[matched], rois.gt_classes[foreground])
    heads = ours.roi_heads
    assert "_sample_proposals" not in vars(type(heads)) and not hasattr(heads, "_targets")
    assert all(not t.has("gt_indices") for t in (x["instances"] for x in batch))  # the caller's ground truth
