"""scripts/model_footprint.py: the synthetic batch and the parameter tally (no training here)."""

import pytest
import torch

from detectron2.config import instantiate

from fixtures.models import load_repo_module, small_model_cfg


@pytest.fixture(scope="module")
def script():
    return load_repo_module("scripts/model_footprint.py")


def test_synthetic_masks_fill_their_boxes_and_classes_are_in_range(script):
    batch = script.synthetic_batch(2, 40, 60, 5, 7, seed=3)
    assert [x["image"].shape for x in batch] == [(3, 40, 60)] * 2
    for x in batch:
        instances = x["instances"]
        boxes, masks = instances.gt_boxes.tensor, instances.gt_masks.tensor
        assert masks.shape == (5, 40, 60) and 0 <= instances.gt_classes.min() and instances.gt_classes.max() < 7
        ys, xs = torch.meshgrid(torch.arange(40), torch.arange(60), indexing="ij")
        for box, mask in zip(boxes, masks):  # a direct rasterisation of each box
            expected = (xs >= box[0]) & (xs < box[2]) & (ys >= box[1]) & (ys < box[3])
            assert mask.equal(expected) and mask.any()


def test_parameters_are_tallied_per_module(script):
    model = instantiate(small_model_cfg(mask=True))
    counts = script.parameter_counts(model)
    assert set(counts) == {
        "backbone",
        "proposal_generator",
        "roi_heads.box_head",
        "roi_heads.box_predictor",
        "roi_heads.mask_head",
    }
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
    assert counts["roi_heads.box_predictor"] == sum(p.numel() for p in model.roi_heads.box_predictor.parameters())
