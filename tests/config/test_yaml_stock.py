"""YAML (yacs) LongTailROIHeads with every MODEL.LTDET2 method off: exactly Detectron2's StandardROIHeads (same seed:
same state_dict, same losses, gradients and detections on a fixed batch); without add_ltdet2_config, a warning."""

import os

import pytest
import torch

from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import FastRCNNOutputLayers, StandardROIHeads

from ltdet2.config.yaml_config import add_ltdet2_config
from ltdet2.modeling import LongTailROIHeads

from fixtures.models import NUM_CLASSES, ROOT, TEST_DEVICE, make_batch, train_losses

BASE = os.path.join(ROOT, "configs", "yaml", "Base-LT-Shapes.yaml")


def small_cfg(roi_heads, *, mask, ltdet2=True):
    """Base-LT-Shapes.yaml's model; with ``ltdet2=False`` in a stock Detectron2 config, without its MODEL.LTDET2
    section (the CPU poolers; Detectron2's own keys only)."""
    cfg = get_cfg()
    base = CfgNode(CfgNode.load_yaml_with_base(BASE))
    if ltdet2:
        add_ltdet2_config(cfg)
    else:
        base.MODEL.pop("LTDET2")
    cfg.merge_from_other_cfg(base)
    cfg.MODEL.ROI_HEADS.NAME = roi_heads
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN, cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 200, 100  # a CPU-sized step
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST, cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 100, 50
    cfg.TEST.DETECTIONS_PER_IMAGE = 20
    cfg.MODEL.MASK_ON = mask
    cfg.MODEL.DEVICE = TEST_DEVICE
    return cfg


def seeded_model(cfg):
    torch.manual_seed(0)
    return build_model(cfg)


@pytest.mark.parametrize("mask", [False, True])
def test_all_off_equals_standard_roi_heads(mask):
    stock = seeded_model(small_cfg("StandardROIHeads", mask=mask, ltdet2=False))
    ours = seeded_model(small_cfg("LongTailROIHeads", mask=mask))
    assert type(stock.roi_heads) is StandardROIHeads
    assert type(ours.roi_heads) is LongTailROIHeads and ours.roi_heads.is_stock
    assert type(ours.roi_heads.box_predictor) is FastRCNNOutputLayers

    stock_state, our_state = stock.state_dict(), ours.state_dict()
    assert list(stock_state) == list(our_state)
    for key, value in stock_state.items():
        assert torch.equal(value, our_state[key]), key

    batch = make_batch(mask=mask, size=64)
    stock_losses, our_losses = train_losses(stock, batch), train_losses(ours, batch)
    assert stock_losses.keys() == our_losses.keys()
    for key in stock_losses:
        assert torch.equal(stock_losses[key], our_losses[key]), key
    sum(stock_losses.values()).backward()
    sum(our_losses.values()).backward()
    our_params = dict(ours.named_parameters())
    for name, param in stock.named_parameters():
        if param.grad is not None and param.device.type == "cpu":  # CUDA's RoIAlign backward is nondeterministic
            assert torch.equal(param.grad, our_params[name].grad), name

    stock.eval(), ours.eval()
    with torch.no_grad():
        stock_out, our_out = stock(batch), ours(batch)
    for expected, actual in zip(stock_out, our_out):
        assert torch.equal(expected["instances"].pred_boxes.tensor, actual["instances"].pred_boxes.tensor)
        assert torch.equal(expected["instances"].scores, actual["instances"].scores)


def test_without_add_ltdet2_config_warns_and_builds_stock_heads():
    with pytest.warns(UserWarning, match=r"add_ltdet2_config"):
        model = seeded_model(small_cfg("LongTailROIHeads", mask=False, ltdet2=False))
    assert model.roi_heads.is_stock
    assert type(model.roi_heads.box_predictor) is FastRCNNOutputLayers


def test_data_and_freezing_keys_leave_the_heads_stock():
    """RFS, copy-paste and TRAINABLE are the trainer's: the heads stay Detectron2's."""
    cfg = small_cfg("LongTailROIHeads", mask=False)
    cfg.MODEL.LTDET2.RFS.ENABLED = True
    cfg.MODEL.LTDET2.COPY_PASTE.ENABLED = True
    cfg.MODEL.LTDET2.TRAINABLE = ["roi_heads.box_predictor."]
    model = seeded_model(cfg)
    assert model.roi_heads.is_stock and type(model.roi_heads.box_predictor) is FastRCNNOutputLayers
