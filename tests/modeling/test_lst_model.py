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

from ltdet2.modeling import (
    CosineClassifier,
    DistillationContext,
    LinearOutputConvFCHead,
    OldClassLogitDistillation,
    TeacherStudentRCNN,
    TransferMaskHead,
)
from ltdet2.modeling.expansion import expand_class_rows

from fixtures.models import NUM_CLASSES, long_tail_cfg, make_batch, small_model_cfg, train_losses

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


# --- transfer mask head --------------------------------------------------------------------------------


def _transfer_heads(**options):
    """The small Mask R-CNN's ROI heads with LST's box head, cosine classifier and a TransferMaskHead
    (conv_dim 128, 28x28 masks) whose agnostic MLP has 8 hidden units unless ``options`` say otherwise."""
    cfg = lst_model_cfg(mask=True)
    cfg.roi_heads.mask_head._target_ = TransferMaskHead
    cfg.roi_heads.mask_head.classifier_dim = FC_DIM
    cfg.roi_heads.mask_head.agnostic_mlp_dim = options.pop("agnostic_mlp_dim", 8)
    for key, value in options.items():
        cfg.roi_heads.mask_head[key] = value
    torch.manual_seed(0)
    return instantiate(cfg.roi_heads)


def test_transfer_mask_head_shapes_and_terms():
    heads = _transfer_heads()
    head = heads.mask_head
    classifier = heads.box_predictor.cls_score
    assert head._classifier is classifier
    assert not any(name.startswith("_classifier") for name, _ in head.named_parameters())  # not registered twice
    assert not hasattr(head, "predictor")
    assert head.mask_weights().shape == (NUM_CLASSES, 128)
    x = torch.randn(5, 128, 14, 14, generator=torch.Generator().manual_seed(4))
    logits = head.layers(x)
    assert logits.shape == (5, NUM_CLASSES, 28, 28)
    # direct computation: features, then per class <T(w_c), h> + the agnostic MLP (the same for every class)
    h = x
    for layer in list(head.children())[:-2]:  # convs, deconv, ReLU (transfer and agnostic_mlp come last)
        h = layer(h)
    w = classifier.weight[:NUM_CLASSES]
    transferred = F.leaky_relu(head.transfer[2](F.leaky_relu(head.transfer[0](w), 0.01)), 0.01)
    agnostic = head.agnostic_mlp(h.flatten(1)).view(5, 28, 28)
    for c in range(NUM_CLASSES):
        expected = torch.einsum("d,ndyx->nyx", transferred[c], h) + agnostic
        torch.testing.assert_close(logits[:, c], expected, rtol=1e-4, atol=1e-5)
    # the agnostic term is identical across class channels: with zero transfer output, every channel is it
    with torch.no_grad():
        head.transfer[2].weight.zero_()
        head.transfer[2].bias.zero_()
    logits = head.layers(x)
    assert torch.equal(logits, logits[:, :1].expand_as(logits))
    torch.testing.assert_close(logits[:, 0], agnostic, rtol=1e-5, atol=1e-6)


def test_transfer_mask_head_official_branch_size_and_linear_output():
    head = _transfer_heads(agnostic_mlp_dim=None, output_activation=False).mask_head
    assert isinstance(head.agnostic_mlp, torch.nn.Linear)
    assert sum(p.numel() for p in head.agnostic_mlp.parameters()) == 128 * 784 * 784 + 784
    assert isinstance(head.transfer[3], torch.nn.Identity)
    assert _transfer_heads(agnostic_mlp_dim=0).mask_head.agnostic_mlp is None


def test_transfer_mask_head_gradient_reaches_the_classifier_unless_stopped():
    x = torch.randn(3, 128, 14, 14, generator=torch.Generator().manual_seed(5))
    for stop_gradient in (False, True):
        heads = _transfer_heads(stop_gradient=stop_gradient)
        heads.mask_head.layers(x)[:, 2].sum().backward()
        grad = heads.box_predictor.cls_score.weight.grad
        assert heads.mask_head.transfer[0].weight.grad.abs().sum() > 0
        if stop_gradient:
            assert grad is None
        else:  # only the row of the class whose channel took the loss
            assert grad[2].abs().sum() > 0
            assert torch.equal(grad[[0, 1, 3, 4, 5, 6]], torch.zeros(6, FC_DIM))


def test_lst_teacher_student_mask_rcnn_trains_and_predicts_masks(tmp_path):
    """Wiring: a phase-1 student (6 classes, expanded from its 4-class teacher) with the transfer mask head and the
    logit distillation term trains one step with every loss, and predicts masks."""

    def mask_cfg(num_classes):
        cfg = lst_model_cfg(mask=True, num_classes=num_classes)
        cfg.roi_heads.mask_head._target_ = TransferMaskHead
        cfg.roi_heads.mask_head.classifier_dim = FC_DIM
        cfg.roi_heads.mask_head.agnostic_mlp_dim = 8
        return cfg

    torch.manual_seed(0)
    teacher = instantiate(mask_cfg(OLD))
    weights = str(tmp_path / "teacher.pth")
    torch.save({"model": teacher.state_dict()}, weights)
    cfg = mask_cfg(NUM_CLASSES)
    cfg._target_ = TeacherStudentRCNN
    cfg.teacher, cfg.teacher_weights = mask_cfg(OLD), weights
    cfg.distillers = [L(OldClassLogitDistillation)(num_old_classes=OLD)]
    student = instantiate(cfg)
    student.load_state_dict(expand_class_rows(teacher.state_dict(), old_num_classes=OLD, new_num_classes=NUM_CLASSES))
    batch = make_batch(num_images=2, size=64, seed=3, mask=True)
    batch[0]["instances"].gt_classes = torch.tensor([1, 4, 5])
    losses = train_losses(student, batch)
    assert set(losses) == {
        "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc", "loss_distill_logit"
    }  # fmt: skip
    assert student.teacher.roi_heads.mask_head._classifier is student.teacher.roi_heads.box_predictor.cls_score
    sum(losses.values()).backward()
    assert student.roi_heads.box_predictor.cls_score.weight.grad[:NUM_CLASSES].abs().sum(dim=1).gt(0).all()
    student.eval()
    with torch.no_grad():
        instances = student([{k: v for k, v in batch[0].items() if k != "instances"}])[0]["instances"]
    assert instances.pred_masks.shape[1:] == (64, 64)


def test_new_class_boxes_per_image_with_and_without_gt_valid():
    from detectron2.structures import Boxes, Instances

    from ltdet2.modeling.meta_weight_term import new_class_boxes

    def image(classes, valid=None):
        t = Instances((50, 50), gt_classes=torch.tensor(classes, dtype=torch.int64))
        t.gt_boxes = Boxes(torch.arange(4 * len(classes), dtype=torch.float32).reshape(-1, 4))
        if valid is not None:
            t.gt_valid = torch.tensor(valid, dtype=torch.bool)
        return t

    targets = [image([0, 5, 6]), image([], []), image([7, 1, 5], [True, True, False]), image([6])]
    boxes, classes = new_class_boxes(targets, num_old_classes=5)
    assert [len(b) for b in boxes] == [2, 0, 1, 1] and classes.tolist() == [5, 6, 7, 6]
    assert boxes[0].tensor[:, 0].tolist() == [4.0, 8.0] and boxes[2].tensor[0, 0].item() == 0.0
