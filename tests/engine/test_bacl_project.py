"""BACL's projects: every one instantiates with the paper's pieces; projects/bacl.py trains end to end on a
tiny LT-Shapes on CPU with the feature extractor frozen in stage 2, and its confusion matrix and prototype
bank come back exactly on resume (reference/bacl.md section 7, items 11 and the project run)."""

import os

import pytest
import torch

from detectron2.config import instantiate

from ltdet2.engine.freezing import freeze_all_but
from ltdet2.engine.phases import load_config, resolve_phases, run_phases
from ltdet2.engine.train_loop import build_model

from fixtures.models import ROOT, TINY_LT_SHAPES, tiny_run_overrides

BACL_PROJECTS = ["bacl.py", "bacl_ablation.py", "bacl_lvis_v0_5.py", "bacl_lvis_v1.py", "bacl_lvis_v1_mask.py"]
TRAINABLE = ("roi_heads.box_predictor.", "proposal_generator.", "roi_heads.mask_head.")
PHASES = {
    "bacl.py": ["representation", "classifier"],
    "bacl_ablation.py": ["representation", "control", "margin", "weight_term", "fhm", "fcbl", "fcbl_fhm"],
}


def project(name):
    return os.path.join(ROOT, "projects", name)


@pytest.mark.parametrize("name", BACL_PROJECTS)
def test_bacl_project_phases_instantiate_with_the_papers_pieces(name):
    cfg = load_config(project(name))
    phases = resolve_phases(cfg)
    assert [p.name for p in phases] == PHASES.get(name, ["representation", "classifier"])
    for phase in phases:
        model = instantiate(phase.cfg.model)
        predictor = model.roi_heads.box_predictor
        assert predictor.class_scoring == "sigmoid_background"
        assert torch.equal(predictor.cls_score.bias, torch.full_like(predictor.cls_score.bias, -6.906754778648554))
        phase.cfg.optimizer.params.model = model
        optimizer = instantiate(phase.cfg.optimizer)
        assert 0 < instantiate(phase.cfg.lr_multiplier)(0.5) <= 1
        rpn = model.proposal_generator
        if phase.name == "representation":
            assert optimizer.param_groups[0]["weight_decay"] == 5e-5
            assert phase.cfg.dataloader.train.mapper._target_.__name__ == "CopyPasteMapper"
            assert phase.cfg.train.get("trainable") is None
        else:
            assert optimizer.param_groups[0]["weight_decay"] == 1e-4
            assert phase.cfg.dataloader.train.mapper._target_.__name__ == "DatasetMapper"
            assert list(phase.cfg.train.trainable) == list(TRAINABLE)
        # 2x the small model's training proposals on LT-Shapes, 2000 on LVIS, before and after NMS
        expected = 2000 if "lvis" in name else 1000
        assert rpn.pre_nms_topk[True] == rpn.post_nms_topk[True] == expected
    last = instantiate(phases[-1].cfg.model)
    if phases[-1].name in ("classifier", "fcbl_fhm"):
        heads = last.roi_heads
        assert type(heads.box_predictor.cls_loss).__name__ == "ForegroundBalanceLoss"
        assert [type(s).__name__ for s in heads.feature_sources] == ["FeatureHallucination"]
        assert heads.indicators["confusion"].sync == "global" and heads.feature_sources[0].bank.sync == "local"
        source = heads.feature_sources[0]
        assert (source.num_sampled_classes, source.per_class, source.bank.momentum) == (8, 12, 0.9)


def test_stage_two_trains_only_the_classifier_regressor_rpn_and_mask_head():
    for name, phase in [("bacl.py", "classifier"), ("bacl_lvis_v1_mask.py", "classifier")]:
        cfg = load_config(project(name), ["train.device=cpu"]).phases[phase]
        model = build_model(cfg)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        expected = {n for n, _ in model.named_parameters() if n.startswith(TRAINABLE)}
        assert trainable == expected
        assert any(n.startswith("roi_heads.box_predictor.cls_score") for n in trainable)
        assert any(n.startswith("proposal_generator.") for n in trainable)
        assert ("mask" in name) == any(n.startswith("roi_heads.mask_head.") for n in trainable)
        assert not any(n.startswith(("backbone.", "roi_heads.box_head.")) for n in trainable)
        assert freeze_all_but(model, cfg.train.trainable)[0] == sum(
            p.numel() for n, p in model.named_parameters() if n in expected
        )


def tiny_overrides(tiny_dataset, output_dir):
    num_classes = TINY_LT_SHAPES.num_classes
    classifier = "phases.classifier.model.roi_heads"
    return [
        *tiny_run_overrides(tiny_dataset, output_dir),
        f"{classifier}.indicators.confusion.num_classes={num_classes}",
        f"{classifier}.box_predictor.cls_loss.num_classes={num_classes}",
        f"{classifier}.feature_sources.0.num_classes={num_classes}",
        f"phases.representation.dataloader.train.mapper.image_size={TINY_LT_SHAPES.image_size}",
        "dataloader.train.total_batch_size=2",
        "train.max_iter=3",
        "train.checkpointer.period=1",
        "train.log_period=1",
        "train.allow_empty_eval=True",  # 3 iterations detect nothing; this test checks the state, not AP
    ]


def state_of(state_dict):
    return {k: v for k, v in state_dict.items() if ".feature_sources." in k or ".indicators." in k}


def test_bacl_project_runs_and_resumes_its_confusion_matrix_and_prototype_bank_exactly(tmp_path, tiny_dataset):
    from ltdet2.engine.train_loop import do_train

    out = str(tmp_path / "bacl")
    results = run_phases(load_config(project("bacl.py"), tiny_overrides(tiny_dataset, out)))
    assert set(results) == {"representation", "classifier"}
    classifier_dir = os.path.join(out, "classifier")
    final = torch.load(os.path.join(classifier_dir, "model_final.pth"), weights_only=False)["model"]
    state = state_of(final)
    assert state["roi_heads.indicators.confusion.positives"].sum() > 0
    assert state["roi_heads.feature_sources.0.bank.seen"].any()
    # frozen feature extractor: backbone and box head identical to the representation stage's
    representation = torch.load(os.path.join(out, "representation", "model_final.pth"), weights_only=False)["model"]
    for key in representation:
        if key.startswith(("backbone.", "roi_heads.box_head.")):
            assert torch.equal(representation[key], final[key]), key
    assert not torch.equal(
        representation["roi_heads.box_predictor.cls_score.weight"], final["roi_heads.box_predictor.cls_score.weight"]
    )

    # resume from the checkpoint of iteration 1: confusion matrix and bank come back exactly
    checkpoint = torch.load(os.path.join(classifier_dir, "model_0000001.pth"), weights_only=False)["model"]
    with open(os.path.join(classifier_dir, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    cfg = load_config(project("bacl.py"), [*tiny_overrides(tiny_dataset, out), "train.max_iter=2"])
    phase_cfg = cfg.phases.classifier
    phase_cfg.train.output_dir = classifier_dir
    resumed = do_train(phase_cfg, resume=True)  # starts at iteration 2 == max_iter: no step taken
    restored, expected = state_of(resumed.state_dict()), state_of(checkpoint)
    assert restored.keys() == expected.keys() and len(expected) == 5  # numerator, positives, means, variances, seen
    for key in expected:
        assert torch.equal(restored[key], expected[key]), key
