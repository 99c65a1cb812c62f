"""LST's model pieces: the box head without its last ReLU and the cosine predictor, the old-class logit
distillation term, and the MaskX-style transfer mask head."""

import torch
import torch.nn.functional as F

from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead

from ltdet2.modeling import CosineClassifier, LinearOutputConvFCHead

from fixtures.models import NUM_CLASSES, long_tail_cfg, small_model_cfg

FC_DIM = 256  # the small model's box head


def lst_model_cfg(mask=False):
    """The small model with LST's box head, cosine classifier (scale 10) and ReLU before the regressor."""
    cfg = long_tail_cfg(small_model_cfg(mask))
    cfg.roi_heads.box_head._target_ = LinearOutputConvFCHead
    cfg.roi_heads.box_predictor.classifier = L(CosineClassifier)(input_dim=FC_DIM, num_classes=NUM_CLASSES, scale=10.0)
    cfg.roi_heads.box_predictor.regressor_input_relu = True
    return cfg


# --- box head and predictor ------------------------------------------------------------------------


def test_linear_output_head_is_the_stock_head_before_its_last_relu():
    shape = ShapeSpec(channels=8, height=7, width=7)
    torch.manual_seed(0)
    stock = FastRCNNConvFCHead(shape, conv_dims=[], fc_dims=[32, 16])
    ours = LinearOutputConvFCHead(shape, conv_dims=[], fc_dims=[32, 16])
    ours.load_state_dict(stock.state_dict())
    assert [name for name, _ in ours.named_children()] == ["flatten", "fc1", "fc_relu1", "fc2"]
    x = torch.randn(20, 8, 7, 7, generator=torch.Generator().manual_seed(1))
    fc7 = ours(x)
    assert fc7.shape == (20, 16) and ours.output_shape.channels == 16
    assert (fc7 < 0).sum() > 20  # about half of the 320 values: no ReLU
    torch.testing.assert_close(F.relu(fc7), stock(x), rtol=0, atol=0)


def test_cosine_predictor_scores_and_regressor_input():
    model = instantiate(lst_model_cfg())
    predictor = model.roi_heads.box_predictor
    classifier = predictor.cls_score
    assert isinstance(classifier.scale, torch.nn.Parameter) and classifier.scale.item() == 10.0
    pooled = torch.randn(12, 128, 7, 7, generator=torch.Generator().manual_seed(2))
    fc7 = model.roi_heads.box_head(pooled)
    assert (fc7 < 0).any()
    scores, deltas = predictor(fc7)
    # direct computation: s * <x/|x|, w/|w|> row by row
    expected = torch.empty(12, NUM_CLASSES + 1)
    for n in range(12):
        for j in range(NUM_CLASSES + 1):
            x, w = fc7[n], classifier.weight[j]
            expected[n, j] = 10.0 * torch.dot(x, w) / ((x.norm() + 1e-5) * (w.norm() + 1e-5))
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(deltas, F.relu(fc7) @ predictor.bbox_pred.weight.t() + predictor.bbox_pred.bias)
    predictor.regressor_input_relu = False  # the option off: Detectron2's predictor
    _, plain_deltas = predictor(fc7)
    torch.testing.assert_close(plain_deltas, predictor.bbox_pred(fc7), rtol=0, atol=0)
