"""Distillation losses against direct loops; distillation terms; the teacher-student meta-architecture."""

import copy

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from ltdet2.data import lvis_meta_from_dataset
from ltdet2.modeling import (
    DistillationContext,
    MaskedFeatureDistillation,
    SharedRoIKLDistillation,
    TeacherStudentRCNN,
)
from ltdet2.modeling.distillers import box_masks
from ltdet2.modeling.losses import kl_distillation, logit_distillation, masked_feature_distillation

from fixtures.models import TEST_DEVICE, long_tail_cfg, make_batch, small_model_cfg, train_losses

# --- losses ----------------------------------------------------------------------------------------


def _toy_pyramid(seed=0, batch=2, channels=3, sizes=((8, 10), (4, 5))):
    generator = torch.Generator().manual_seed(seed)
    student = [torch.randn(batch, channels, h, w, generator=generator, requires_grad=True) for h, w in sizes]
    teacher = [torch.randn(batch, channels, h, w, generator=generator) for h, w in sizes]
    masks = [torch.rand(batch, h, w, generator=generator) > 0.6 for h, w in sizes]
    return student, teacher, masks


def _masked_feature_loop(student, teacher, masks, empty):
    """Direct loop over levels, images, pixels and channels."""
    terms = []
    for s, t, m in zip(student, teacher, masks):
        for b in range(s.shape[0]):
            total, n = 0.0, 0
            for y in range(s.shape[2]):
                for x in range(s.shape[3]):
                    if m[b, y, x]:
                        n += 1
                        for c in range(s.shape[1]):
                            total += float(s[b, c, y, x] - t[b, c, y, x]) ** 2
            if n > 0:
                terms.append(total / (2 * n))
            elif empty == "zero":
                terms.append(0.0)
    return sum(terms) / len(terms)


@pytest.mark.parametrize("empty", ["exclude", "zero"])
def test_masked_feature_distillation_matches_loop_with_an_empty_mask(empty):
    student, teacher, masks = _toy_pyramid()
    masks[1][0] = False  # level 1, image 0: empty
    loss = masked_feature_distillation(student, teacher, masks, empty=empty)
    assert loss.item() == pytest.approx(_masked_feature_loop(student, teacher, masks, empty), rel=1e-5)
    if empty == "exclude":  # 3 of the 4 (level, image) pairs count
        with_zero = masked_feature_distillation(student, teacher, masks, empty="zero")
        assert with_zero.item() == pytest.approx(loss.item() * 3 / 4, rel=1e-5)


def test_masked_feature_distillation_gradient_only_to_the_student_and_zero_without_masks():
    student, teacher, masks = _toy_pyramid()
    teacher = [t.requires_grad_() for t in teacher]
    masked_feature_distillation(student, teacher, masks).backward()
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None for s in student)
    # outside the masks the student gets no gradient
    assert all((s.grad.abs().sum(1)[~m] == 0).all() for s, m in zip(student, masks))

    empty = [torch.zeros_like(m) for m in masks]
    loss = masked_feature_distillation(student, teacher, empty)
    assert loss.item() == 0.0 and loss.requires_grad
    assert masked_feature_distillation(student, teacher, empty, empty="zero").item() == 0.0


def _kl_loop(student, teacher, columns, temperature):
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        s = torch.tensor([s_row[c] for c in columns]) / temperature
        t = torch.tensor([t_row[c] for c in columns]) / temperature
        p_s, p_t = torch.softmax(s, 0), torch.softmax(t, 0)
        total += sum(float(p_t[k] * (p_t[k].log() - p_s[k].log())) for k in range(len(columns)))
    return total / len(student) * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_distillation_matches_loop_on_chosen_columns(temperature):
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(5, 7, generator=generator, requires_grad=True)
    teacher = torch.randn(5, 7, generator=generator, requires_grad=True)
    columns = [0, 2, 5]
    loss = kl_distillation(student, teacher, columns, temperature=temperature)
    assert loss.item() == pytest.approx(_kl_loop(student, teacher, columns, temperature), rel=1e-5)
    # all columns by default
    assert kl_distillation(student, teacher).item() == pytest.approx(
        _kl_loop(student, teacher, range(7), 1.0), rel=1e-5
    )
    loss.backward()
    assert teacher.grad is None
    assert (student.grad[:, [1, 3, 4, 6]] == 0).all() and (student.grad[:, columns] != 0).all()
    assert kl_distillation(teacher.detach(), teacher.detach(), columns).item() == pytest.approx(0.0, abs=1e-7)


def test_logit_distillation_modes():
    student = torch.tensor([[3.0, 4.0], [0.0, 1.0]], requires_grad=True)
    teacher = torch.zeros(2, 2, requires_grad=True)
    assert logit_distillation(student, teacher).item() == pytest.approx((5.0 + 1.0) / 2)
    assert logit_distillation(student, teacher, mode="squared").item() == pytest.approx((25.0 + 1.0) / 2)
    logit_distillation(student, teacher).backward()
    assert teacher.grad is None
    with pytest.raises(ValueError, match="mode"):
        logit_distillation(student, teacher, mode="l1")


# --- distillation terms ----------------------------------------------------------------------------


def test_box_masks_cover_the_expected_cells_at_strides_4_and_8():
    boxes = torch.tensor([[5.0, 6.0, 17.0, 30.0], [0.0, 0.0, 3.0, 3.0], [40.0, 40.0, 41.0, 41.0]])
    image_index = torch.tensor([0, 0, 1])
    for stride, height, width in ((4, 12, 12), (8, 6, 6)):
        expected = torch.zeros(2, height, width, dtype=torch.bool)
        for (x1, y1, x2, y2), image in zip(boxes.tolist(), image_index.tolist()):
            for y in range(height):
                for x in range(width):  # x1, y1 floor; x2, y2 ceil
                    if x1 // stride <= x < -(-x2 // stride) and y1 // stride <= y < -(-y2 // stride):
                        expected[image, y, x] = True
        assert box_masks(boxes, image_index, 2, stride, height, width).equal(expected)
    # stride 4: the first box covers columns 1-4 and rows 1-7
    mask = box_masks(boxes[:1], image_index[:1], 1, 4, 12, 12)[0]
    assert mask.nonzero()[:, 0].unique().tolist() == list(range(1, 8))
    assert mask.nonzero()[:, 1].unique().tolist() == list(range(1, 5))
    assert box_masks(boxes[:0], image_index[:0], 2, 4, 3, 3).sum() == 0


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(123)
    teacher = instantiate(long_tail_cfg(small_model_cfg()))
    DetectionCheckpointer(teacher, save_dir=str(folder)).save("teacher")
    return str(folder / "teacher.pth"), {k: v.clone() for k, v in teacher.state_dict().items()}


HEAD = [0, 2, 3]


def _teacher_student(teacher_weights, distillers=None, teacher=None, seed=0):
    base = long_tail_cfg(small_model_cfg())
    cfg = copy.deepcopy(base)
    cfg._target_ = TeacherStudentRCNN
    cfg.teacher = copy.deepcopy(base) if teacher is None else teacher
    cfg.teacher_weights = teacher_weights
    if distillers is None:
        distillers = [
            L(MaskedFeatureDistillation)(classes=HEAD),
            L(SharedRoIKLDistillation)(classes=HEAD),
        ]
    cfg.distillers = distillers
    torch.manual_seed(seed)
    return instantiate(cfg).to(TEST_DEVICE)


def _context(model, batch):
    """A DistillationContext of ``model`` and its teacher on ``batch``, with the RoIs its heads sample."""
    model.train()
    teacher = model.teacher_model()
    images = model.preprocess_image(batch)
    targets = [x["instances"].to(model.device) for x in batch]
    with EventStorage(0):
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, targets)
        model.roi_heads.label_and_sample_proposals(proposals, targets)
    with torch.no_grad():
        teacher_features = teacher.backbone(images.tensor)
    return DistillationContext(
        images, features, teacher_features, targets, model.roi_heads.latest_sampled_proposals, model, teacher
    )


def test_feature_masks_are_not_shifted_by_padding(teacher_checkpoint):
    model = _teacher_student(teacher_checkpoint[0])
    small, large = make_batch(num_images=1, size=64, seed=1)[0], make_batch(num_images=1, size=96, seed=2)[0]
    large["image"] = large["image"][:, :, :80]  # 96 x 80: the batch pads the 64 x 64 image to 96 x 96
    term = model.distillers[0]
    alone = term.masks(_context(model, [small]))
    together = term.masks(_context(model, [small, large]))
    boxes = small["instances"].gt_boxes.tensor[torch.isin(small["instances"].gt_classes, torch.tensor(HEAD))]
    assert len(boxes) > 0
    for level, stride, mask_alone, mask_together in zip(("p2", "p3", "p4", "p5"), (4, 8, 16, 32), alone, together):
        height, width = mask_alone.shape[1:]
        assert mask_together[0, :height, :width].equal(mask_alone[0]), level
        assert not mask_together[0, height:].any() and not mask_together[0, :, width:].any()
        image_index = torch.zeros(len(boxes), dtype=torch.long, device=TEST_DEVICE)
        expected = box_masks(boxes.to(TEST_DEVICE), image_index, 1, stride, height, width)
        assert mask_alone[0].equal(expected[0].to(mask_alone.device)), level


def test_shared_roi_kl_uses_teacher_box_features_and_trains_only_the_student_classifier(teacher_checkpoint):
    model = _teacher_student(teacher_checkpoint[0])
    batch = make_batch(num_images=2, seed=4)
    context = _context(model, batch)
    term = model.distillers[1]
    loss = term(context)["loss_distill_kl"]

    teacher_heads = context.teacher.roi_heads
    boxes = [p.proposal_boxes for p in context.sampled_proposals]
    with torch.no_grad():
        pooled = teacher_heads.box_pooler([context.teacher_features[f] for f in teacher_heads.box_in_features], boxes)
        box_features = teacher_heads.box_head(pooled)
        teacher_logits = teacher_heads.box_predictor(box_features)[0]
    student_logits = model.roi_heads.box_predictor(box_features)[0]
    expected = 0.1 * kl_distillation(student_logits, teacher_logits, HEAD)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() > 1e-4  # teacher and student differ
    every_class = SharedRoIKLDistillation(weight=1.0)(context)["loss_distill_kl"]  # background column left out
    foreground = list(range(student_logits.shape[1] - 1))
    assert every_class.item() == pytest.approx(kl_distillation(student_logits, teacher_logits, foreground).item())

    model.zero_grad()
    loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {"roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias"}

    # a different student FPN changes neither the teacher's box features nor the loss
    with torch.no_grad():
        model.backbone.fpn_output2.weight.add_(0.5)
    context.student_features = model.backbone(context.images.tensor)
    assert term(context)["loss_distill_kl"].item() == loss.item()


def test_masked_feature_term_trains_only_the_student_backbone(teacher_checkpoint):
    model = _teacher_student(teacher_checkpoint[0])
    context = _context(model, make_batch(num_images=2, seed=4))
    loss = model.distillers[0](context)["loss_distill_feature"]
    masks = model.distillers[0].masks(context)
    expected = masked_feature_distillation(
        [context.student_features[f] for f in ("p2", "p3", "p4", "p5")],
        [context.teacher_features[f] for f in ("p2", "p3", "p4", "p5")],
        masks,
    )
    assert loss.item() == pytest.approx(expected.item()) and loss.item() > 0
    loss.backward()
    with_grad = {name.split(".")[0] for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"backbone"}
    assert all(p.grad is None for p in context.teacher.parameters())


# --- the teacher-student model -----------------------------------------------------------------------


def test_without_distillers_the_losses_are_generalized_rcnn_s(teacher_checkpoint):
    model = _teacher_student(teacher_checkpoint[0])
    plain = instantiate(long_tail_cfg(small_model_cfg())).to(TEST_DEVICE)
    plain.load_state_dict(model.state_dict())
    batch = make_batch(num_images=2, seed=6)
    expected = train_losses(plain, batch)
    with_distillers = train_losses(model, batch)
    assert set(with_distillers) == set(expected) | {"loss_distill_feature", "loss_distill_kl"}
    for name in expected:  # the teacher runs after the student and draws no random numbers
        assert with_distillers[name].item() == expected[name].item(), name

    model.distillers = torch.nn.ModuleList()
    without = train_losses(model, batch)
    assert without.keys() == expected.keys()
    assert all(without[name].item() == expected[name].item() for name in expected)


class RecordingTerm(torch.nn.Module):
    """A distillation term that keeps the context it sees and returns no loss."""

    def forward(self, context):
        self.context = context
        return {}


def test_terms_see_what_the_students_heads_saw_and_the_step_leaves_no_hook(teacher_checkpoint):
    model = _teacher_student(teacher_checkpoint[0], distillers=[L(RecordingTerm)()])
    plain = instantiate(long_tail_cfg(small_model_cfg())).to(TEST_DEVICE)
    plain.load_state_dict(model.state_dict())
    batch = make_batch(num_images=2, seed=6)
    seen = {}
    handle = model.roi_heads.register_forward_pre_hook(lambda module, args: seen.update(args=args))
    losses = train_losses(model, batch)
    handle.remove()
    expected = train_losses(plain, batch)
    assert losses.keys() == expected.keys() and all(torch.equal(losses[k], expected[k]) for k in expected)
    context = model.distillers[0].context
    images, features, _, targets = seen["args"]
    assert context.images is images and context.student_features is features and context.targets is targets
    with torch.no_grad():
        teacher_features = model.teacher.backbone(images.tensor)
    assert context.teacher_features.keys() == teacher_features.keys()
    assert all(torch.equal(context.teacher_features[k], teacher_features[k]) for k in teacher_features)
    assert context.sampled_proposals is model.roi_heads.latest_sampled_proposals
    assert not model.backbone._forward_hooks and not model.roi_heads._forward_pre_hooks

    # a step that fails in the student's heads leaves no hook either
    def fail(*args, **kwargs):
        raise RuntimeError("heads failed")

    model.roi_heads.forward = fail
    with pytest.raises(RuntimeError, match="heads failed"):
        train_losses(model, batch)
    assert not model.backbone._forward_hooks and not model.roi_heads._forward_pre_hooks


def test_teacher_is_frozen_in_eval_mode_and_not_part_of_the_student(teacher_checkpoint):
    path, teacher_state = teacher_checkpoint
    teacher = instantiate(long_tail_cfg(small_model_cfg()))
    teacher.roi_heads.box_head.add_module("dropout", torch.nn.Dropout(0.5))  # no parameters: loads the same
    model = _teacher_student(path, teacher=teacher)
    plain = instantiate(long_tail_cfg(small_model_cfg()))
    model.eval()
    model(make_batch(num_images=1, seed=7))
    assert model.teacher is None  # inference is the student alone

    batch = make_batch(num_images=2, seed=7)
    first = train_losses(model, batch)
    assert model.teacher is teacher and not any(m.training for m in teacher.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(v.equal(teacher_state[k].to(v.device)) for k, v in teacher.state_dict().items())
    assert model.state_dict().keys() == plain.state_dict().keys()
    assert len(list(model.parameters())) == len(list(plain.parameters()))
    model.train()
    assert not teacher.training
    heads = teacher.roi_heads
    with torch.no_grad():
        features = teacher.backbone(torch.randn(1, 3, 64, 64, device=model.device))
        boxes = [Boxes(torch.tensor([[0.0, 0.0, 32.0, 40.0], [8.0, 8.0, 60.0, 50.0]], device=model.device))]
        pooled = heads.box_pooler([features[f] for f in heads.box_in_features], boxes)
        assert heads.box_head(pooled).equal(heads.box_head(pooled))  # dropout off: two passes identical
        heads.box_head.train()
        assert not heads.box_head(pooled).equal(heads.box_head(pooled))  # (the test can fail)
        heads.box_head.eval()

    sum(first.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert model.roi_heads.box_predictor.cls_score.weight.grad is not None


def test_teacher_is_rebuilt_from_its_weights_after_a_student_save_and_load(teacher_checkpoint, tmp_path):
    path, teacher_state = teacher_checkpoint
    model = _teacher_student(path)
    model.teacher_model()
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("student")
    assert not any("teacher" in key for key in torch.load(tmp_path / "student.pth", weights_only=False)["model"])

    resumed = _teacher_student(path, seed=1)
    DetectionCheckpointer(resumed).load(str(tmp_path / "student.pth"))
    assert resumed.teacher is None
    teacher = resumed.teacher_model()
    assert teacher is not model.teacher and not teacher.training
    assert all(v.equal(teacher_state[k].to(v.device)) for k, v in teacher.state_dict().items())


def test_missing_teacher_weights_name_the_path_and_the_phase_setting(tmp_path):
    model = _teacher_student(None)
    for weights in (None, str(tmp_path / "absent.pth")):
        model.teacher_weights = weights
        with pytest.raises(FileNotFoundError, match="teacher_from_phase") as error:
            train_losses(model, make_batch(num_images=1))
        assert str(weights) in str(error.value)


def test_classes_from_dataset_are_its_head_classes(tiny_dataset):
    train_name = tiny_dataset[0]
    term = SharedRoIKLDistillation(classes_from_dataset=train_name, min_images=5)
    expected = lvis_meta_from_dataset(train_name).head_classes(5).tolist()
    assert term.classes.indices() == expected and 0 < len(expected)
    index = term.classes.index_tensor("cpu")
    assert index.tolist() == expected and index.dtype == torch.long
    assert term.classes.index_tensor("cpu") is index  # built once per device
    assert SharedRoIKLDistillation().classes.index_tensor("cpu") is None  # all classes
    with pytest.raises(ValueError, match="not both"):
        MaskedFeatureDistillation(classes=[0], classes_from_dataset=train_name)
