"""The step-wise method on Deformable DETR (issue #31): exemplar scores from the model's own Hungarian matcher; the
teacher-student DETR (the student's losses unchanged, a frozen eval-mode teacher, the input projections and the
teacher's decoder states to the terms); the shared-query KL and the masked feature distillation on the input
projections against direct formulas; the phase graph's teacher; the official trainable set; the projects' phases;
and pretrain -> head_expert -> transfer end to end on a tiny LT-Shapes."""

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from ltdet2.config.stepwise_detr import STEPWISE_DETR_LOSS_WEIGHTS, STEPWISE_DETR_TRAINABLE
from ltdet2.engine import phase_checks
from ltdet2.engine.checkpoint import CheckpointMismatchError
from ltdet2.engine.freezing import freeze_all_but
from ltdet2.engine.phase_graph import teacher_model_config
from ltdet2.engine.phases import load_config, resolve_phases, run_phases
from ltdet2.modeling.distillers import DetrDistillationContext, MaskedFeatureDistillation, SharedQueryKLDistillation
from ltdet2.modeling.meta_arch import DeformableDETR, TeacherStudentDETR
from ltdet2.modeling.meta_arch.teacher_student_detr import input_proj_names

from fixtures.models import ROOT, TEST_DEVICE, tiny_detr_overrides

NUM_CLASSES = 6
SIZES = ((64, 80), (72, 56))  # different: the batch is padded on both sides
HEAD = [0, 2, 3]


def small_cfg(**options):
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "models", "deformable_detr_r18_small.py")).model
    cfg.num_classes = NUM_CLASSES
    cfg.d_model = 64
    cfg.ffn_dim = 128
    cfg.num_queries = 20
    for key, value in options.items():
        cfg[key] = value
    return cfg


def small_detr(seed=0, **options):
    torch.manual_seed(seed)
    model = instantiate(small_cfg(**options)).to(TEST_DEVICE)
    with torch.no_grad():  # class heads that differ per class and layer (the official init makes them equal)
        for head in model.detr.class_embed:
            head.bias.add_(torch.randn_like(head.bias))
    return model


def random_boxes(generator, count, h, w):
    x0y0 = torch.rand(count, 2, generator=generator) * torch.tensor([w / 2, h / 2])
    wh = 8 + torch.rand(count, 2, generator=generator) * torch.tensor([w / 2 - 8, h / 2 - 8])
    return torch.cat([x0y0, x0y0 + wh], dim=1)


def scoring_inputs(counts=(3, 2), seed=0):
    """AnnotationBoxMapper-like outputs of two images of SIZES."""
    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for (h, w), count in zip(SIZES, counts):
        inputs.append(
            {
                "image": (torch.rand(3, h, w, generator=generator) * 255).round(),
                "boxes": random_boxes(generator, count, h, w),
                "classes": torch.randint(NUM_CLASSES, (count,), generator=generator),
            }
        )
    return inputs


def training_batch(seed=0):
    batch = []
    for x in scoring_inputs(seed=seed):
        instances = Instances(tuple(x["image"].shape[1:]))
        instances.gt_boxes = Boxes(x["boxes"])
        instances.gt_classes = x["classes"]
        batch.append({"image": x["image"], "instances": instances})
    return batch


def direct_scores(model, inputs, score):
    """Pixels, mask and normalised targets written out, transformers' matcher called with the model's costs, and
    the matched queries' sigmoids read one annotation at a time."""
    from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher

    height, width = max(h for h, _ in SIZES), max(w for _, w in SIZES)
    pixels = torch.zeros(len(inputs), 3, height, width)
    mask = torch.zeros(len(inputs), height, width, dtype=torch.long)
    targets = []
    for i, x in enumerate(inputs):
        _, h, w = x["image"].shape
        pixels[i, :, :h, :w] = (x["image"] - model.pixel_mean.cpu()) / model.pixel_std.cpu()
        mask[i, :h, :w] = 1
        x0, y0, x1, y1 = x["boxes"].unbind(1)
        boxes = torch.stack([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h], dim=1)
        targets.append({"class_labels": x["classes"].to(TEST_DEVICE), "boxes": boxes.to(TEST_DEVICE)})
    with torch.no_grad():
        outputs = model.detr(pixel_values=pixels.to(TEST_DEVICE), pixel_mask=mask.to(TEST_DEVICE))
    costs = model.detr.config
    matcher = DeformableDetrHungarianMatcher(
        class_cost=costs.class_cost, bbox_cost=costs.bbox_cost, giou_cost=costs.giou_cost
    )
    indices = matcher({"logits": outputs.logits, "pred_boxes": outputs.pred_boxes}, targets)
    expected = []
    for i, (queries, annotations) in enumerate(indices):
        image_scores = [0.0] * len(inputs[i]["boxes"])
        for q, a in zip(queries.tolist(), annotations.tolist()):
            probs = outputs.logits[i, q].sigmoid()
            image_scores[a] = probs.max().item() if score == "max_foreground" else probs[inputs[i]["classes"][a]].item()
        expected += image_scores
    return torch.tensor(expected)


# --- exemplar scores ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["max_foreground", "ground_truth"])
def test_annotation_scores_are_the_matched_query_s_sigmoids_with_the_model_s_own_matcher(score):
    model = small_detr(matcher_costs=dict(cls=1, bbox=3, giou=4)).eval()  # not the default costs
    inputs = scoring_inputs()
    ours = model.annotation_scores(inputs, score)
    expected = direct_scores(model, inputs, score)
    assert ours.shape == (5,) and (ours > 0).all()
    torch.testing.assert_close(ours.cpu(), expected, rtol=0, atol=1e-6)
    if score == "ground_truth":  # differs from the max over classes
        assert not torch.equal(ours, model.annotation_scores(inputs, "max_foreground"))


def test_annotations_beyond_the_queries_are_unmatched_and_score_zero():
    model = small_detr(num_queries=4).eval()
    inputs = scoring_inputs(counts=(6, 2))
    ours = model.annotation_scores(inputs, "max_foreground").cpu()
    torch.testing.assert_close(ours, direct_scores(model, inputs, "max_foreground"), rtol=0, atol=1e-6)
    assert int((ours[:6] == 0).sum()) == 2 and (ours[6:] > 0).all()  # 6 annotations, 4 queries


def test_score_annotations_dispatches_to_annotation_scores(tiny_dataset):
    from ltdet2.engine.exemplar_scoring import score_annotations

    class Scored(torch.nn.Module):
        def annotation_scores(self, inputs, score):
            return torch.cat([x["annotation_ids"].float() / 1000 for x in inputs])

    table = score_annotations(Scored(), tiny_dataset[0], batch_size=3)
    assert len(table["score"]) > 0
    torch.testing.assert_close(torch.as_tensor(table["score"]), torch.as_tensor(table["annotation_id"] / 1000).float())


# --- the teacher-student DETR -----------------------------------------------------------------------------------------


def teacher_student(tmp_path, distillers, teacher_seed=1, **options):
    """A TeacherStudentDETR (student weights of small_detr(0)) whose teacher is small_detr(teacher_seed)'s checkpoint,
    and a plain DeformableDETR with the student's weights."""
    path = str(tmp_path / f"teacher_{teacher_seed}.pth")
    torch.save({"model": small_detr(teacher_seed, **options).state_dict()}, path)
    plain = small_detr(0, **options)
    cfg = small_cfg(**options)
    cfg._target_ = TeacherStudentDETR
    cfg.teacher = small_cfg(**options)
    cfg.teacher_weights = path
    cfg.distillers = distillers
    student = instantiate(cfg).to(TEST_DEVICE)
    student.load_state_dict(plain.state_dict())
    return student, plain


def distillers(classes=HEAD):
    return [
        L(MaskedFeatureDistillation)(in_features=input_proj_names(4), classes=classes),
        L(SharedQueryKLDistillation)(classes=classes),
    ]


def losses_of(model, batch, seed=1):
    model.train()
    torch.manual_seed(seed)  # dropout
    with EventStorage(0):
        return model(batch)


def test_the_student_s_losses_are_deformable_detr_s_and_the_distillation_losses_are_added(tmp_path):
    student, plain = teacher_student(tmp_path, distillers())
    batch = training_batch()
    ours, theirs = losses_of(student, batch), losses_of(plain, batch)
    distilled = {"loss_distill_feature", "loss_distill_kl", "loss_distill_kl_0"}  # 2 decoder layers
    assert set(ours) == set(theirs) | distilled
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name], value, rtol=0, atol=0, msg=name)
    assert all(torch.isfinite(ours[k]) and ours[k] > 0 for k in distilled)
    teacher = student.teacher
    assert isinstance(teacher, DeformableDETR) and not isinstance(teacher, TeacherStudentDETR)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("teacher") for k in student.state_dict())
    assert len(list(student.parameters())) == len(list(plain.parameters()))
    # eval mode (dropout off): two teacher passes are identical
    images, _ = student.preprocess_image(batch)
    first = student._teacher_outputs(teacher, batch, images.tensor)
    second = student._teacher_outputs(teacher, batch, images.tensor)
    assert all(torch.equal(a, b) for a, b in zip(first[0], second[0])) and torch.equal(first[1], second[1])
    assert first[1].shape == (2, 2, 20, 64)  # [B, L, Q, d]
    assert [f.shape[-2:] for f in first[0]] == [(9, 10), (5, 5), (3, 3), (2, 2)]  # strides 8-64 of 72x80


def test_without_distillers_it_is_deformable_detr(tmp_path):
    student, plain = teacher_student(tmp_path, [])
    batch = training_batch()
    ours, theirs = losses_of(student, batch), losses_of(plain, batch)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert student.teacher is None


def test_teacher_model_config_turns_a_teacher_student_detr_into_its_deformable_detr():
    cfg = small_cfg()
    cfg._target_ = TeacherStudentDETR
    cfg.teacher = small_cfg()
    cfg.teacher_weights = "w"
    cfg.distillers = distillers()
    teacher = teacher_model_config(cfg)
    assert teacher._target_ is DeformableDETR
    assert sorted(teacher) == sorted(small_cfg())
    assert cfg._target_ is TeacherStudentDETR and "distillers" in cfg  # a copy
    assert teacher_model_config(small_cfg()) == small_cfg()


def test_a_teacher_checkpoint_of_another_class_count_is_refused_before_the_phase_trains(tmp_path):
    path = str(tmp_path / "head_expert.pth")
    torch.save({"model": small_detr(num_classes=3).state_dict()}, path)
    cfg = small_cfg()
    cfg._target_ = TeacherStudentDETR
    cfg.teacher = small_cfg()  # NUM_CLASSES, as the runner builds it from the teacher phase's config
    cfg.teacher_weights = path
    cfg.distillers = distillers()
    phase = SimpleNamespace(
        cfg=OmegaConf.create({"model": cfg, "train": {"teacher_from_phase": "head_expert"}}), where="phase 'transfer'"
    )
    with pytest.raises(
        CheckpointMismatchError,
        match=rf"phase 'transfer': its teacher's checkpoint .*head_expert.pth \(model.teacher_weights\) does not fit "
        rf"model.teacher, which has {NUM_CLASSES} classes \(model.teacher.num_classes\): "
        rf"detr.model.decoder.class_embed.0.weight: \(3, 64\) in the checkpoint, {NUM_CLASSES} rows for "
        rf"{NUM_CLASSES} classes;.*"
        r"was phase 'head_expert' trained with another class count",
    ):
        phase_checks._check_teacher_checkpoint(phase)
    torch.save({"model": small_detr().state_dict()}, path)
    phase_checks._check_teacher_checkpoint(phase)  # the same class count: no complaint
    unlike = DeformableDETR.checkpoint_class_rows_unlike(small_detr(num_classes=3).state_dict(), NUM_CLASSES)
    heads = len(small_detr().detr.class_embed)  # every decoder layer's and the encoder's proposal head
    assert len(unlike) == 2 * 2 * heads  # weight and bias, under detr.class_embed and detr.model.decoder.class_embed


# --- the terms --------------------------------------------------------------------------------------------------------


def detr_context(student, teacher, states, features=None, strides=None, targets=None, image_sizes=SIZES):
    features = features or {}
    images = ImageList(torch.zeros(len(image_sizes), 3, 1, 1), list(image_sizes))
    return DetrDistillationContext(
        images=images,
        student_features={k: s for k, (s, _) in features.items()},
        teacher_features={k: t for k, (_, t) in features.items()},
        targets=targets or [],
        sampled_proposals=None,
        student=student,
        teacher=teacher,
        feature_strides=strides,
        teacher_decoder_states=states,
    )


def test_shared_query_kl_equals_the_direct_formula_and_trains_only_the_student_s_class_heads():
    student, teacher = small_detr(0), small_detr(1).eval().requires_grad_(False)
    torch.manual_seed(2)
    states = torch.randn(2, 2, 20, 64, device=TEST_DEVICE)  # [B, L, Q, d]
    term = SharedQueryKLDistillation(classes=HEAD, weight=0.1)
    losses = term(detr_context(student, teacher, states))
    assert set(losses) == {"loss_distill_kl_0", "loss_distill_kl"}
    for layer, name in enumerate(("loss_distill_kl_0", "loss_distill_kl")):
        rows = states[:, layer].reshape(40, 64)
        with torch.no_grad():
            z_t = teacher.detr.class_embed[layer](rows)[:, HEAD]
            z_s = student.detr.class_embed[layer](rows)[:, HEAD]
        p_t = F.softmax(z_t, dim=1)
        expected = (p_t * (p_t.log() - F.log_softmax(z_s, dim=1))).sum() / 40 * 0.1
        torch.testing.assert_close(losses[name], expected, rtol=1e-5, atol=1e-7)
    sum(losses.values()).backward()
    with_grad = {n for n, p in student.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {f"detr.model.decoder.class_embed.{layer}.{k}" for layer in (0, 1) for k in ("weight", "bias")}
    # the student is the teacher: 0
    same = term(detr_context(teacher, teacher, states))
    assert all(v.abs() < 1e-7 for v in same.values())


def test_masked_feature_distillation_on_the_input_projections_follows_the_unpadded_image():
    """Two levels (strides 8, 16) of a batch padded to 72x80: the head-class boxes' cells in each image's own
    coordinates (the smaller image's masks are those of the image alone, padding never masked), and the loss a
    direct loop over the cells."""
    generator = torch.Generator().manual_seed(0)
    strides = {"input_proj.0": 8, "input_proj.1": 16}
    shapes = {"input_proj.0": (9, 10), "input_proj.1": (5, 5)}
    features = {
        name: tuple(torch.randn(2, 4, *hw, generator=generator) for _ in range(2)) for name, hw in shapes.items()
    }
    targets = []
    for (h, w), boxes, classes in zip(
        SIZES,
        ([[3.0, 5.0, 20.0, 30.0], [40.0, 40.0, 60.0, 60.0]], [[30.0, 50.0, 56.0, 72.0], [0.0, 0.0, 9.0, 9.0]]),
        ([0, 1], [2, 4]),  # head classes 0, 2: one box per image
    ):
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.tensor(boxes))
        instances.gt_classes = torch.tensor(classes)
        targets.append(instances)
    term = MaskedFeatureDistillation(in_features=list(strides), classes=HEAD, weight=1.0)
    context = detr_context(None, None, None, features, strides, targets)
    masks = term.masks(context)

    expected_loss, pairs = 0.0, 0
    for level, (name, stride) in enumerate(strides.items()):
        student, teacher = features[name]
        for i, target in enumerate(targets):
            head = [b for b, c in zip(target.gt_boxes.tensor.tolist(), target.gt_classes.tolist()) if c in HEAD]
            expected = torch.zeros(shapes[name], dtype=torch.bool)
            for y in range(shapes[name][0]):
                for x in range(shapes[name][1]):
                    expected[y, x] = any(
                        math.floor(x0 / stride) <= x < math.ceil(x1 / stride)
                        and math.floor(y0 / stride) <= y < math.ceil(y1 / stride)
                        for x0, y0, x1, y1 in head
                    )
            assert torch.equal(masks[level][i], expected), (name, i)
            # the image alone (its unpadded feature size): the same cells, nothing in the padding
            h, w = math.ceil(SIZES[i][0] / stride), math.ceil(SIZES[i][1] / stride)
            assert not masks[level][i, h:].any() and not masks[level][i, :, w:].any()
            count = int(expected.sum())
            if count:
                squared = sum(
                    ((student[i, :, y, x] - teacher[i, :, y, x]) ** 2).sum().item()
                    for y in range(shapes[name][0])
                    for x in range(shapes[name][1])
                    if expected[y, x]
                )
                expected_loss += squared / (2 * count)
                pairs += 1
    # the second image's head box (30, 50)-(56, 72) covers cells 3..6 x 6..8 at stride 8
    assert masks[0][1].nonzero()[:, 0].unique().tolist() == [6, 7, 8]
    loss = term(context)["loss_distill_feature"]
    torch.testing.assert_close(loss, torch.tensor(expected_loss / pairs), rtol=1e-5, atol=1e-6)


# --- the trainable set ------------------------------------------------------------------------------------------------


def test_the_step_wise_trainable_set_is_every_class_head_and_input_projection(tmp_path):
    model = small_detr()
    freeze_all_but(model, STEPWISE_DETR_TRAINABLE)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    heads = {f"detr.model.decoder.class_embed.{k}.{p}" for k in range(3) for p in ("weight", "bias")}  # 2 + encoder
    projections = {n for n, _ in model.named_parameters() if n.startswith("detr.model.input_proj.")}
    assert len(projections) == 4 * 4 and trainable == heads | projections
    assert len(model.detr.class_embed) == 3
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("backbone.") for n in frozen_before)
    assert any(n.startswith("detr.model.decoder.bbox_embed.") for n in frozen_before)
    assert any(n.startswith("detr.model.encoder.") for n in frozen_before)
    heads_before = model.detr.class_embed[0].weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    sum(losses_of(model, training_batch()).values()).backward()
    optimizer.step()
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.named_parameters() if n in frozen_before)
    assert not torch.equal(model.detr.class_embed[0].weight, heads_before)


def test_a_frozen_backbone_with_the_teacher_s_weights_is_shared_and_the_losses_stay_the_same(tmp_path):
    """The step-wise transfer's student (only class heads and input projections train) and its teacher hold the same
    backbone: the teacher takes the student's backbone outputs instead of running its own, with the same losses. A
    teacher with other backbone weights runs its own."""
    batch = training_batch()
    losses, calls = {}, {}
    for share in (True, False):
        student, _ = teacher_student(tmp_path, distillers(), teacher_seed=0)
        student.share_frozen_backbone = share  # the constructor argument, read when the teacher is built
        freeze_all_but(student, STEPWISE_DETR_TRAINABLE)  # the backbone's BatchNorm becomes FrozenBatchNorm2d
        with torch.no_grad():  # the student's input projections apart from the teacher's: a feature loss to compare
            student.detr.model.input_proj[0][0].weight.mul_(1.1)
        teacher = student.teacher_model()
        calls[share] = []
        teacher.backbone.register_forward_hook(lambda module, args, output, share=share: calls[share].append(1))
        losses[share] = losses_of(student, batch)
        assert student._shares_backbone is share
    assert calls == {True: [], False: [1]}
    assert losses[True].keys() == losses[False].keys() and losses[True]["loss_distill_feature"] > 0
    for name, value in losses[False].items():
        torch.testing.assert_close(losses[True][name], value, rtol=0, atol=0, msg=name)
    other, _ = teacher_student(tmp_path, distillers(), teacher_seed=1)
    freeze_all_but(other, STEPWISE_DETR_TRAINABLE)
    other.teacher_model()
    assert not other._shares_backbone  # the teacher's backbone weights are not the student's


# --- the projects -----------------------------------------------------------------------------------------------------

PROJECTS = {
    "stepwise_detr.py": ["pretrain", "head_expert", "transfer"],
    "stepwise_detr_ablation.py": ["pretrain", "control", "head_expert", "transfer"],
    "stepwise_detr_lvis_v1.py": ["pretrain", "head_expert", "transfer"],
    "stepwise_detr_lvis_v0_5.py": ["pretrain", "head_expert", "transfer"],
}


@pytest.mark.parametrize("name", sorted(PROJECTS))
def test_stepwise_detr_phases_hold_the_methods_pieces(name):
    phases = resolve_phases(load_config(os.path.join(ROOT, "projects", name), ["train.device=cpu"]))
    assert [p.name for p in phases] == PROJECTS[name]
    by_name = {p.name: p.cfg for p in phases}
    pretrain_lr = by_name["pretrain"].optimizer.lr
    assert pretrain_lr == 2e-4 and by_name["pretrain"].train.get("trainable", None) is None
    for phase in by_name.values():
        assert dict(phase.model.loss_weights) == STEPWISE_DETR_LOSS_WEIGHTS
    assert by_name["head_expert"].train.init_from_phase == "pretrain"
    assert by_name["head_expert"].optimizer.lr == pytest.approx(2e-5)
    assert by_name["transfer"].optimizer.lr == 2e-4
    assert by_name["transfer"].train.teacher_from_phase == "head_expert"
    for phase_name in ("head_expert", "transfer"):
        phase = by_name[phase_name]
        (builder,) = phase.train.derived_datasets
        assert builder.scores_from_phase == "pretrain" and phase.dataloader.train.dataset.names == builder.name
        assert list(phase.train.trainable) == STEPWISE_DETR_TRAINABLE
        assert phase.dataloader.train.sampler.image_count_from == builder.source
        assert phase.train.init_checkpoint == ""
    transfer = by_name["transfer"]
    assert transfer.model._target_ is TeacherStudentDETR
    model = instantiate(transfer.model)
    feature, kl = model.distillers
    assert isinstance(feature, MaskedFeatureDistillation) and isinstance(kl, SharedQueryKLDistillation)
    assert (feature.weight, kl.weight, kl.temperature) == (1.0, 0.1, 1.0)
    assert feature.in_features == tuple(model.feature_names) == tuple(input_proj_names(4))
    quotas = {p: (by_name[p].train.derived_datasets[0].head_quota, by_name[p].train.derived_datasets[0].tail_quota)
              for p in ("head_expert", "transfer")}  # fmt: skip
    if "lvis" in name:  # the paper's quotas and epochs (FT 1, KT 2 with the drop after 1)
        assert quotas == {"head_expert": (200, 30), "transfer": (50, None)}
        # counted in epochs of the sets, when they are built (tests/engine/test_epochs.py)
        assert (by_name["head_expert"].train.epochs, by_name["transfer"].train.epochs) == (1, 2)
        assert model.num_classes == (1203 if "v1" in name else 1230)
    else:
        assert quotas == {"head_expert": (60, 9), "transfer": (15, None)}
    if "control" in by_name:
        control = by_name["control"]
        assert control.model._target_ is DeformableDETR and not control.train.derived_datasets
        assert control.train.init_from_phase == "pretrain" and list(control.train.trainable) == STEPWISE_DETR_TRAINABLE
        assert control.train.max_iter == by_name["head_expert"].train.max_iter + transfer.train.max_iter
        assert control.dataloader.train.dataset.names == by_name["pretrain"].dataloader.train.dataset.names


# --- end to end -------------------------------------------------------------------------------------------------------


def test_stepwise_detr_trains_pretrain_head_expert_and_transfer(tiny_dataset, tmp_path):
    output = str(tmp_path / "stepwise")
    train_name, _ = tiny_dataset
    overrides = tiny_detr_overrides(
        tiny_dataset, output, iterations=2, train_key="phases.pretrain.dataloader.train.dataset.names"
    ) + ["model.d_model=64", "model.ffn_dim=128"]
    for phase in ("head_expert", "transfer"):
        derived = f"{train_name}_{os.path.basename(output)}_detr_{phase}"
        overrides += [
            f"phases.{phase}.train.derived_datasets.0.name={derived}",
            f"phases.{phase}.train.derived_datasets.0.source={train_name}",
            f"phases.{phase}.train.derived_datasets.0.min_images=4",  # the tiny set has no class in 30 images
            f"phases.{phase}.dataloader.train.dataset.names={derived}",
            f"phases.{phase}.dataloader.train.sampler.image_count_from={train_name}",
        ]
    for index in (0, 1):
        overrides += [
            f"phases.transfer.model.distillers.{index}.classes_from_dataset={train_name}",
            f"phases.transfer.model.distillers.{index}.min_images=4",
        ]
    results = run_phases(load_config(os.path.join(ROOT, "projects", "stepwise_detr.py"), overrides))
    assert list(results) == ["pretrain", "head_expert", "transfer"]
    for phase in ("head_expert", "transfer"):
        with open(os.path.join(output, phase, f"{train_name}_stepwise_detr_{phase}.json")) as f:
            record = json.load(f)["ltdet2_derived"]
        assert record["inputs"]["score_table"]["phase"] == "pretrain" and record["selection"]["count"] > 0
    with open(os.path.join(output, "transfer", "metrics.json")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    logged = [r for r in records if "total_loss" in r]
    assert len(logged) == 2
    for name in ("loss_distill_feature", "loss_distill_kl", "loss_distill_kl_0", "loss_ce"):
        assert all(math.isfinite(r[name]) for r in logged), name
    pretrain, expert, final = (
        torch.load(os.path.join(output, p, "model_final.pth"), weights_only=False)["model"]
        for p in ("pretrain", "head_expert", "transfer")
    )
    assert not any(k.startswith("teacher") for k in final)
    trainable = ("detr.model.decoder.class_embed.", "detr.class_embed.", "detr.model.input_proj.")
    for before, after in ((pretrain, expert), (expert, final)):
        frozen = [k for k in after if not k.startswith(trainable) and after[k].is_floating_point()]
        assert frozen and all(torch.equal(after[k], before[k]) for k in frozen)
        assert not torch.equal(after["detr.model.decoder.class_embed.0.weight"], before["detr.class_embed.0.weight"])
        assert not torch.equal(after["detr.model.input_proj.0.0.weight"], before["detr.model.input_proj.0.0.weight"])
