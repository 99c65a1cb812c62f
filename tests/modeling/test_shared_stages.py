"""The teacher takes the student's frozen ResNet stages (TeacherStudentRCNN(share_frozen_stages=True)): which
stages are shared, and that the teacher's features and every loss are those of a teacher that runs its own."""

import copy

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyCall as L
from detectron2.config import instantiate

from ltdet2.engine.freezing import freeze_all_but
from ltdet2.modeling import MaskedFeatureDistillation, SharedRoIKLDistillation, TeacherStudentRCNN
from ltdet2.modeling.meta_arch.shared_stages import SharedStagesBottomUp, shared_frozen_stages

from fixtures.models import TEST_DEVICE, long_tail_cfg, make_batch, small_model_cfg, train_losses

ALL_STAGES = ["stem", "res2", "res3", "res4", "res5"]
HEADS_TRAIN = ["backbone.fpn_", "proposal_generator.", "roi_heads."]  # e.g. LST's incremental phases


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    torch.manual_seed(5)
    teacher = instantiate(long_tail_cfg(small_model_cfg()))
    with torch.no_grad():  # BatchNorm statistics that are not the initial ones
        for module in teacher.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    folder = tmp_path_factory.mktemp("shared_teacher")
    DetectionCheckpointer(teacher, save_dir=str(folder)).save("teacher")
    return str(folder / "teacher.pth")


def student(path, trainable, *, share=True):
    """A student that starts from the teacher's weights with ``trainable`` training (the rest frozen)."""
    base = long_tail_cfg(small_model_cfg())
    cfg = copy.deepcopy(base)
    cfg._target_ = TeacherStudentRCNN
    cfg.teacher, cfg.teacher_weights, cfg.share_frozen_stages = copy.deepcopy(base), path, share
    cfg.distillers = [L(MaskedFeatureDistillation)(classes=[0, 2]), L(SharedRoIKLDistillation)(classes=[0, 2])]
    torch.manual_seed(0)
    model = instantiate(cfg).to(TEST_DEVICE)
    DetectionCheckpointer(model).load(path)
    with torch.no_grad():  # a student that has trained on: its FPN and classifier differ from the teacher's
        model.backbone.fpn_output2.weight.mul_(1.1)
        model.roi_heads.box_predictor.cls_score.weight.mul_(1.2)
    freeze_all_but(model, trainable)
    return model


@pytest.mark.parametrize(
    "trainable, shared",
    [
        (HEADS_TRAIN, ALL_STAGES),  # the whole ResNet frozen
        ([r"backbone\.bottom_up\.res[45]\.", *HEADS_TRAIN], ["stem", "res2", "res3"]),
        (None, []),  # everything trains (and BatchNorm uses batch statistics)
    ],
)
def test_the_frozen_prefix_is_shared_and_the_features_and_losses_are_unchanged(teacher_checkpoint, trainable, shared):
    batch = make_batch(num_images=2, seed=3)
    sharing, own = student(teacher_checkpoint, trainable), student(teacher_checkpoint, trainable, share=False)
    expected = train_losses(own, batch)
    losses = train_losses(sharing, batch)
    assert shared_frozen_stages(sharing, own.teacher) == shared
    bottom_up = sharing.teacher.backbone.bottom_up
    assert isinstance(bottom_up, SharedStagesBottomUp) == bool(shared)
    assert not isinstance(own.teacher.backbone.bottom_up, SharedStagesBottomUp)
    assert losses.keys() == expected.keys() and min(losses["loss_distill_feature"], losses["loss_distill_kl"]) > 0
    for name in expected:
        assert losses[name].item() == expected[name].item(), name
    if shared:
        assert bottom_up.shared == shared
        calls = []
        for name in shared:  # the teacher's own copies of the shared stages do not run
            getattr(bottom_up.resnet, name).register_forward_hook(lambda *args: calls.append(1))
        train_losses(sharing, batch)
        assert calls == [] and sharing._student_stages.outputs is None  # nothing kept after the step


def test_stages_whose_weights_differ_from_the_teacher_s_are_not_shared(teacher_checkpoint):
    model = student(teacher_checkpoint, HEADS_TRAIN)
    with torch.no_grad():
        model.backbone.bottom_up.res4[0].conv1.weight.mul_(1.01)
    train_losses(model, make_batch(num_images=1, seed=2))
    assert model.teacher.backbone.bottom_up.shared == ["stem", "res2", "res3"]
    other = student(teacher_checkpoint, HEADS_TRAIN)
    other.pixel_mean.add_(1.0)  # another input normalisation: the stages see other images
    assert shared_frozen_stages(other, model.teacher) == []
