"""LST's model pieces: the box head without its last ReLU and the cosine predictor, the old-class logit
distillation term, and the MaskX-style transfer mask head."""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F

from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead

from ltdet2.modeling import CosineClassifier, DistillationContext, LinearOutputConvFCHead, OldClassLogitDistillation
from ltdet2.modeling.expansion import expand_class_rows

from fixtures.models import NUM_CLASSES, long_tail_cfg, make_batch, small_model_cfg

FC_DIM = 256  # the small model's box head


def lst_model_cfg(mask=False, num_classes=NUM_CLASSES):
    """The small model with LST's box head, cosine classifier (scale 10) and ReLU before the regressor."""
    cfg = long_tail_cfg(small_model_cfg(mask))
    cfg.roi_heads.num_classes = num_classes
    cfg.roi_heads.box_head._target_ = LinearOutputConvFCHead
    cfg.roi_heads.box_predictor.classifier = L(CosineClassifier)(input_dim=FC_DIM, num_classes=num_classes, scale=10.0)
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


# --- old-class logit distillation -------------------------------------------------------------------

OLD = 4  # the teacher's classes; the student has NUM_CLASSES = 6


@functools.cache
def _teacher_and_student():
    torch.manual_seed(0)
    return instantiate(lst_model_cfg(num_classes=OLD)).eval(), instantiate(lst_model_cfg()).eval()


def _distillation_setup(share_weights=False):
    """Teacher (4 classes) and student (6), eval mode (fixed BatchNorm), and a batch of two images: image 0 has
    classes [1, 4, 5] (two new boxes), image 1 [5, 4, 0] with its class-5 box ignored (one new box)."""
    teacher, student = (copy.deepcopy(m) for m in _teacher_and_student())
    if share_weights:
        student.load_state_dict(expand_class_rows(teacher.state_dict(), old_num_classes=OLD, new_num_classes=6))
    batch = make_batch(num_images=2, size=64, seed=3)
    batch[0]["instances"].gt_classes = torch.tensor([1, 4, 5])
    batch[1]["instances"].gt_classes = torch.tensor([5, 4, 0])
    batch[1]["instances"].gt_valid = torch.tensor([False, True, True])
    return teacher, student, batch


def _context(teacher, student, batch):
    images = student.preprocess_image(batch)
    with torch.no_grad():
        teacher_features = teacher.backbone(teacher.preprocess_image(batch).tensor)
    return DistillationContext(
        images=images,
        student_features=student.backbone(images.tensor),
        teacher_features=teacher_features,
        targets=[x["instances"] for x in batch],
        sampled_proposals=None,
        student=student,
        teacher=teacher,
    )


def _direct_old_class_cosines(model, features, image, box):
    """One box at a time: pooled from its image's features, the box head, then cosines with the first OLD rows."""
    heads = model.roi_heads
    from detectron2.structures import Boxes

    pooled = heads.box_pooler([features[f][image : image + 1] for f in heads.box_in_features], [Boxes(box[None])])
    x = heads.box_head(pooled)[0]
    w = heads.box_predictor.cls_score.weight[:OLD]
    return (w / (w.norm(dim=1, keepdim=True) + 1e-5)) @ (x / (x.norm() + 1e-5))


def test_logit_distillation_matches_direct_computation_on_new_class_boxes_only():
    teacher, student, batch = _distillation_setup()
    context = _context(teacher, student, batch)
    new_boxes = [(0, batch[0]["instances"].gt_boxes.tensor[1]), (0, batch[0]["instances"].gt_boxes.tensor[2])]
    new_boxes.append((1, batch[1]["instances"].gt_boxes.tensor[1]))  # image 1's class 5 box is ignored
    distances, squared = [], []
    for image, box in new_boxes:
        with torch.no_grad():
            t = _direct_old_class_cosines(teacher, context.teacher_features, image, box)
        s = _direct_old_class_cosines(student, context.student_features, image, box)
        distances.append(float((s - t).norm()))
        squared.append(float((s - t).pow(2).sum()))
    for mode, expected in (("l2", sum(distances) / 3), ("squared", sum(squared) / 3)):
        loss = OldClassLogitDistillation(num_old_classes=OLD, mode=mode, weight=2.0)(context)["loss_distill_logit"]
        assert loss.item() == pytest.approx(2.0 * expected, rel=1e-5)
    # unscaled: the classifiers' scales do not enter
    with torch.no_grad():
        student.roi_heads.box_predictor.cls_score.scale.fill_(3.0)
    loss = OldClassLogitDistillation(num_old_classes=OLD)(context)["loss_distill_logit"]
    assert loss.item() == pytest.approx(sum(distances) / 3, rel=1e-5)


def test_logit_distillation_gradient_reaches_the_student_only_old_columns():
    teacher, student, batch = _distillation_setup()
    teacher.requires_grad_(True)  # the term itself must keep the teacher out of the graph
    student.backbone.bottom_up.requires_grad_(False)  # (a shorter backward; the FPN shows the features' gradient)
    context = _context(teacher, student, batch)
    OldClassLogitDistillation(num_old_classes=OLD)(context)["loss_distill_logit"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    weight_grad = student.roi_heads.box_predictor.cls_score.weight.grad
    assert (weight_grad[:OLD].abs().sum(dim=1) > 0).all()
    assert torch.equal(weight_grad[OLD:], torch.zeros_like(weight_grad[OLD:]))  # new classes and background
    assert student.roi_heads.box_head.fc1.weight.grad.abs().sum() > 0
    assert student.backbone.fpn_output2.weight.grad.abs().sum() > 0


def test_logit_distillation_is_zero_for_an_expanded_copy_and_without_new_boxes():
    teacher, student, batch = _distillation_setup(share_weights=True)
    context = _context(teacher, student, batch)
    assert OldClassLogitDistillation(num_old_classes=OLD)(context)["loss_distill_logit"].item() == 0.0
    teacher, student, batch = _distillation_setup()
    batch[0]["instances"].gt_classes = torch.tensor([1, 2, 3])
    batch[1]["instances"].gt_valid = torch.tensor([False, False, True])  # only old classes left valid
    loss = OldClassLogitDistillation(num_old_classes=OLD)(_context(teacher, student, batch))["loss_distill_logit"]
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError, match="num_old_classes=3, but the teacher has 4 classes"):
        OldClassLogitDistillation(num_old_classes=3)(_context(teacher, student, batch))
