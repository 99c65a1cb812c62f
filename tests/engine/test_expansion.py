"""LST's network expansion: the weight surgery and the initial-checkpoint transform that applies it (a ClassExpansion in
train.hooks)."""

import pytest
import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform

from ltdet2.engine.checkpoint import AtomicCheckpointer
from ltdet2.engine.train_loop import build_phase_hooks, initial_checkpoint_checks
from ltdet2.modeling import CosineClassifier, LongTailOutputLayers
from ltdet2.modeling.expansion import ClassExpansion, checkpoint_num_classes, expand_class_rows

DIM = 64


def _predictor_model(num_classes, *, seed=0, cosine=True, agnostic=False, learnable_norm=False):
    """A module holding a box predictor under Detectron2's names (``roi_heads.box_predictor``) and one other layer."""
    torch.manual_seed(seed)
    model = nn.Module()
    model.backbone = nn.Linear(3, 3)
    model.roi_heads = nn.Module()
    classifier = CosineClassifier(DIM, num_classes, scale=10, learnable_norm=learnable_norm) if cosine else None
    model.roi_heads.box_predictor = LongTailOutputLayers(
        ShapeSpec(channels=DIM),
        box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)),
        num_classes=num_classes,
        cls_agnostic_bbox_reg=agnostic,
        classifier=classifier,
    )
    with torch.no_grad():  # distinct values everywhere, so copied rows are recognisable
        for parameter in model.parameters():
            parameter.normal_(generator=torch.Generator().manual_seed(parameter.numel()))
        if cosine:
            model.roi_heads.box_predictor.cls_score.scale.fill_(7.5)
    return model


PREFIX = "roi_heads.box_predictor."


def test_old_rows_are_bit_identical_background_last_new_rows_seeded():
    old = _predictor_model(4, cosine=False).state_dict()
    expanded = expand_class_rows(old, old_num_classes=4, new_num_classes=30, generator=torch.Generator().manual_seed(3))
    weight, bias = expanded[PREFIX + "cls_score.weight"], expanded[PREFIX + "cls_score.bias"]
    assert weight.shape == (31, DIM) and bias.shape == (31,)
    assert torch.equal(weight[:4], old[PREFIX + "cls_score.weight"][:4])
    assert torch.equal(weight[30], old[PREFIX + "cls_score.weight"][4])  # background: last row
    assert torch.equal(bias[:4], old[PREFIX + "cls_score.bias"][:4]) and bias[30] == old[PREFIX + "cls_score.bias"][4]
    assert torch.equal(bias[4:30], torch.zeros(26))
    # new rows: N(0, 0.01) classifier, N(0, 0.001) regressor, bias 0 (26 x 64 and 104 x 64 draws)
    assert weight[4:30].std().item() == pytest.approx(0.01, rel=0.06)
    assert weight[4:30].mean().abs().item() < 0.001
    reg, reg_bias = expanded[PREFIX + "bbox_pred.weight"], expanded[PREFIX + "bbox_pred.bias"]
    assert reg.shape == (120, DIM) and torch.equal(reg[:16], old[PREFIX + "bbox_pred.weight"])
    assert reg[16:].std().item() == pytest.approx(0.001, rel=0.05)
    assert torch.equal(reg_bias[:16], old[PREFIX + "bbox_pred.bias"]) and torch.equal(reg_bias[16:], torch.zeros(104))
    assert expanded["backbone.weight"] is old["backbone.weight"]
    again = expand_class_rows(old, old_num_classes=4, new_num_classes=30, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(expanded[k], again[k]) for k in expanded)
    other = expand_class_rows(old, old_num_classes=4, new_num_classes=30, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(other[PREFIX + "cls_score.weight"], weight)


def test_cosine_classifier_expansion_keeps_old_cosines_and_scale():
    old_model, new_model = _predictor_model(3, learnable_norm=True), _predictor_model(5, seed=1, learnable_norm=True)
    expanded = expand_class_rows(old_model.state_dict(), old_num_classes=3, new_num_classes=5)
    assert torch.equal(expanded[PREFIX + "cls_score.norm"][3:5], torch.ones(2))
    new_model.load_state_dict(expanded)
    old_cls, new_cls = old_model.roi_heads.box_predictor.cls_score, new_model.roi_heads.box_predictor.cls_score
    assert new_cls.scale.item() == 7.5
    x = torch.randn(10, DIM)
    old_logits, new_logits = old_cls(x), new_cls(x)
    # the same rows and scale; a matrix product of another size may round its last bit differently
    torch.testing.assert_close(new_logits[:, :3], old_logits[:, :3], rtol=0, atol=1e-6)
    torch.testing.assert_close(new_logits[:, 5], old_logits[:, 3], rtol=0, atol=1e-6)  # background
    torch.testing.assert_close(new_cls.cosine(x)[:, :3], old_cls.cosine(x)[:, :3], rtol=0, atol=1e-7)


def test_class_agnostic_regressor_stays():
    old = _predictor_model(1, agnostic=True).state_dict()
    new_shapes = {k: tuple(v.shape) for k, v in _predictor_model(3, agnostic=True).state_dict().items()}
    expanded = expand_class_rows(old, old_num_classes=1, new_num_classes=3, target_shapes=new_shapes)
    assert expanded[PREFIX + "bbox_pred.weight"] is old[PREFIX + "bbox_pred.weight"]
    assert expanded[PREFIX + "cls_score.weight"].shape == (4, DIM)


def test_class_count_mismatch_names_the_counts():
    with pytest.raises(ValueError, match=r"cls_score.weight has 6 rows \(5 classes\).* from 4 to 6 classes"):
        expand_class_rows(_predictor_model(5).state_dict(), old_num_classes=4, new_num_classes=6, where="phase x")
    with pytest.raises(ValueError, match="phase y: the checkpoint's classifier has 5 classes.* previous phase's 4 "):
        ClassExpansion(old_num_classes=4)(_predictor_model(5).state_dict(), _predictor_model(6).state_dict(), "phase y")


def test_checkpointer_expands_the_initial_checkpoint_not_a_resume(tmp_path):
    for folder in ("phase0", "phase1", "other", "p2"):
        (tmp_path / folder).mkdir()
    old_model = _predictor_model(4)
    AtomicCheckpointer(old_model, str(tmp_path / "phase0")).save("model_final")
    initial = str(tmp_path / "phase0" / "model_final.pth")

    phase1 = str(tmp_path / "phase1")
    model = _predictor_model(6, seed=5)
    checkpointer = AtomicCheckpointer(model, phase1, initial_transforms=[ClassExpansion(old_num_classes=4, seed=0)])
    checkpointer.resume_or_load(initial, resume=True)  # nothing to resume: loads (and expands) the initial one
    assert checkpointer.resumed_from is None
    state, old_state = model.state_dict(), old_model.state_dict()
    assert checkpoint_num_classes(state) == 6
    assert torch.equal(state[PREFIX + "cls_score.weight"][:4], old_state[PREFIX + "cls_score.weight"][:4])
    assert torch.equal(state[PREFIX + "cls_score.weight"][6], old_state[PREFIX + "cls_score.weight"][4])
    assert state[PREFIX + "cls_score.scale"] == 7.5
    assert torch.equal(state["backbone.weight"], old_state["backbone.weight"])
    expected = expand_class_rows(
        old_state, old_num_classes=4, new_num_classes=6, generator=torch.Generator().manual_seed(0)
    )
    assert all(torch.equal(state[k], expected[k]) for k in state)  # seeded

    # resume: the phase's own checkpoint, as it is
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.add_(1.0)
    checkpointer.save("model_0000009", iteration=9)
    resumed = _predictor_model(6, seed=6)
    resumer = AtomicCheckpointer(resumed, phase1, initial_transforms=[ClassExpansion(old_num_classes=4, seed=0)])
    resumer.resume_or_load(initial, resume=True)
    assert resumer.resumed_from.endswith("model_0000009.pth")
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in model.state_dict().items())

    # a checkpoint of neither count: an error, not Detectron2's "skip"
    AtomicCheckpointer(_predictor_model(5), str(tmp_path / "other")).save("model_final")
    wrong = AtomicCheckpointer(
        _predictor_model(6), str(tmp_path / "p2"), initial_transforms=[ClassExpansion(old_num_classes=4)]
    )
    with pytest.raises(
        ValueError, match=r"other/model_final.pth of the phase in .*p2: the checkpoint's classifier has 5"
    ):
        wrong.resume_or_load(str(tmp_path / "other" / "model_final.pth"), resume=False)


def test_class_expansion_in_train_hooks():
    from omegaconf import OmegaConf

    from detectron2.config import LazyCall as L

    from ltdet2.hooks import MemoryWarmup

    expansion = L(ClassExpansion)(old_num_classes=4, seed="${...seed}")  # the phase's train.seed, as configs/lst.py
    cfg = OmegaConf.create({"train": {"seed": 11, "output_dir": "out/p1", "hooks": [L(MemoryWarmup)(), expansion]}})
    found = _class_expansion(cfg)
    assert isinstance(found, ClassExpansion) and found.old_num_classes == 4 and found.seed == 11
    cfg.train.hooks[1]._target_ = "ltdet2.modeling.expansion.ClassExpansion"  # as a saved config.yaml has it
    assert _class_expansion(cfg).seed == 11
    assert found.transform_initial_checkpoint.__func__ is ClassExpansion.transform_initial_checkpoint
    (check,) = initial_checkpoint_checks(cfg)  # the runner's check before training: the expansion's alone
    assert check.__func__ is ClassExpansion.check_initial_checkpoint
    cfg.train.hooks = [L(MemoryWarmup)()]
    assert _class_expansion(cfg) is None and initial_checkpoint_checks(cfg) == []
    assert initial_checkpoint_checks(OmegaConf.create({"train": {"seed": 0}})) == []  # a config without train.hooks
    cfg.train.hooks = [L(ClassExpansion)(old_num_classes=4, classifier_sd=0.1)]
    with pytest.raises(
        TypeError, match=r"train.hooks\[0\] of the phase in out/p1 \(.*ClassExpansion'>\): .*classifier_sd"
    ):
        build_phase_hooks(cfg)


def _class_expansion(cfg):
    return next((e for e in build_phase_hooks(cfg) if isinstance(e, ClassExpansion)), None)
