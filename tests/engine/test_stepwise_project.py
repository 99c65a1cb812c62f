"""The step-wise projects: every phase instantiates with the method's pieces and the frozen sets of each step;
projects/stepwise.py trains end to end on a tiny LT-Shapes on CPU (scores, D_head, head expert, D_tail,
knowledge transfer from the frozen expert) and resumes in the middle of the transfer phase to the same
weights; bad inputs (an unfinished teacher phase, a class with nothing to select) are reported."""

import json
import logging
import os

import pytest
import torch

from detectron2.config import instantiate

from ltdet2.engine.phases import load_config, resolve_phases, run_phases
from ltdet2.engine.train_loop import build_model

from fixtures.models import ROOT, tiny_run_overrides

STEPWISE_PROJECTS = ["stepwise.py", "stepwise_ablation.py", "stepwise_lvis_v0_5.py", "stepwise_lvis_v1.py"]
PHASES = {
    "stepwise_ablation.py": [
        "pretrain",
        "control",
        "head_expert",
        "transfer",
        "kt_only",
        "head_expert_no_rfs",
        "transfer_no_rfs",
        "head_expert_ignore",
        "transfer_ignore",
    ],
}
TRAINABLE = ("roi_heads.box_predictor.cls_score.", "backbone.fpn_")


def project(name):
    return os.path.join(ROOT, "projects", name)


@pytest.mark.parametrize("name", STEPWISE_PROJECTS)
def test_stepwise_phases_instantiate_with_the_methods_pieces(name):
    cfg = load_config(project(name), ["train.device=cpu"])
    phases = resolve_phases(cfg)
    assert [p.name for p in phases] == PHASES.get(name, ["pretrain", "head_expert", "transfer"])
    by_name = {p.name: p.cfg for p in phases}
    assert by_name["head_expert"].train.init_from_phase == "pretrain"
    assert by_name["transfer"].train.teacher_from_phase == "head_expert"
    for phase_name in ("head_expert", "transfer"):
        phase = by_name[phase_name]
        (builder,) = phase.train.derived_datasets
        assert builder.scores_from_phase == "pretrain"
        assert phase.dataloader.train.dataset.names == builder.name
        assert list(phase.train.trainable) == list(TRAINABLE)
        assert phase.dataloader.train.sampler.image_count_from == builder.source
    transfer = by_name["transfer"]
    assert transfer.model._target_.__name__ == "TeacherStudentRCNN"
    model = instantiate(transfer.model)  # no teacher yet: the runner fills it from train.teacher_from_phase
    assert [type(d).__name__ for d in model.distillers] == ["MaskedFeatureDistillation", "SharedRoIKLDistillation"]
    assert [d.weight for d in model.distillers] == [0.01, 0.1]  # feature: ours for SGD (paper 1)
    quotas = {
        p: (by_name[p].train.derived_datasets[0].head_quota, by_name[p].train.derived_datasets[0].tail_quota)
        for p in ("head_expert", "transfer")
    }
    if "lvis" in name:  # the paper's quotas (Tab. 6, 7)
        assert quotas == {"head_expert": (200, 30), "transfer": (50, None)}
    else:  # scaled by 0.3 to LT-Shapes' size
        assert quotas == {"head_expert": (60, 9), "transfer": (15, None)}


def test_the_ablations_ignore_arm_differs_from_the_full_method_only_in_the_unselected_annotations():
    by_name = {
        p.name: p.cfg for p in resolve_phases(load_config(project("stepwise_ablation.py"), ["train.device=cpu"]))
    }
    for method, arm in (("head_expert", "head_expert_ignore"), ("transfer", "transfer_ignore")):
        (drop,), (ignore,) = by_name[method].train.derived_datasets, by_name[arm].train.derived_datasets
        assert (drop.unselected if "unselected" in drop else "drop", ignore.unselected) == ("drop", "ignore")
        assert ignore.name == by_name[arm].dataloader.train.dataset.names != drop.name
        assert by_name[arm].dataloader.train.mapper._target_.__name__ == "ValidityDatasetMapper"
        for key in ("source", "scores_from_phase", "head_quota", "tail_quota", "min_images"):
            assert ignore[key] == drop[key], key
        assert by_name[arm].train.max_iter == by_name[method].train.max_iter
    assert by_name["transfer_ignore"].train.init_from_phase == "head_expert_ignore"
    assert by_name["transfer_ignore"].train.teacher_from_phase == "head_expert_ignore"


def test_each_step_trains_only_the_classifier_and_the_fpn():
    cfg = load_config(project("stepwise.py"), ["train.device=cpu"])
    for phase in resolve_phases(cfg)[1:]:
        phase.cfg.model.pop("teacher", None)
        model = build_model(phase.cfg)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {n for n, _ in model.named_parameters() if n.startswith(TRAINABLE)}
        assert any(n.startswith("backbone.fpn_") for n in trainable)
        assert not any(n.startswith(("roi_heads.box_predictor.bbox_pred", "backbone.bottom_up")) for n in trainable)


def tiny_stepwise_overrides(tiny_dataset, output_dir, *, max_iter=4):
    """projects/stepwise.py on the tiny LT-Shapes: its sets drawn from the tiny training set under names of
    their own, head classes from 4 images (the tiny set has no class in 30)."""
    train_name, _ = tiny_dataset
    overrides = tiny_run_overrides(tiny_dataset, output_dir, train_key="phases.pretrain.dataloader.train.dataset.names")
    overrides += [f"train.max_iter={max_iter}"]
    overrides += ["train.checkpointer.period=2", "dataloader.train.total_batch_size=4", "train.allow_empty_eval=True"]
    for phase in ("head_expert", "transfer"):
        derived = f"{train_name}_{os.path.basename(output_dir)}_{phase}"
        overrides += [
            f"phases.{phase}.train.derived_datasets.0.name={derived}",
            f"phases.{phase}.train.derived_datasets.0.source={train_name}",
            f"phases.{phase}.train.derived_datasets.0.min_images=4",
            f"phases.{phase}.dataloader.train.dataset.names={derived}",
            f"phases.{phase}.dataloader.train.sampler.image_count_from={train_name}",
        ]
    for index in (0, 1):
        overrides += [
            f"phases.transfer.model.distillers.{index}.classes_from_dataset={train_name}",
            f"phases.transfer.model.distillers.{index}.min_images=4",
        ]
    return overrides


def test_stepwise_project_trains_end_to_end_and_resumes_in_the_transfer_phase(tiny_dataset, tmp_path, caplog):
    output = str(tmp_path / "stepwise")
    overrides = tiny_stepwise_overrides(tiny_dataset, output)
    with caplog.at_level(logging.INFO, logger="detectron2"):
        results = run_phases(load_config(project("stepwise.py"), overrides))
    assert list(results) == ["pretrain", "head_expert", "transfer"]
    assert "phase 'transfer': teacher = frozen final model of phase 'head_expert'" in caplog.text
    for phase, quotas in (("head_expert", (60, 9)), ("transfer", (15, None))):  # the paper's x 0.3
        with open(os.path.join(output, phase, f"{tiny_dataset[0]}_stepwise_{phase}.json")) as f:
            record = json.load(f)["ltdet2_derived"]
        assert record["source"] == tiny_dataset[0] and record["unselected"] == "drop"
        parameters = record["inputs"]["parameters"]
        assert (parameters["head_quota"], parameters["tail_quota"]) == quotas
        assert record["inputs"]["score_table"]["phase"] == "pretrain"
        assert record["selection"]["count"] > 0
    done = json.load(open(os.path.join(output, "transfer", "phase_done.json")))
    assert done["teacher_checkpoint"]["path"] == os.path.join(output, "head_expert", "model_final.pth")
    final = torch.load(os.path.join(output, "transfer", "model_final.pth"), weights_only=False)["model"]
    assert not any(k.startswith("teacher") for k in final)  # the teacher is not saved with the student
    expert = torch.load(os.path.join(output, "head_expert", "model_final.pth"), weights_only=False)["model"]
    frozen = [k for k in final if not k.startswith(TRAINABLE) and final[k].is_floating_point()]
    assert frozen and all(torch.equal(final[k], expert[k]) for k in frozen)  # only classifier + FPN moved
    assert not torch.equal(final["roi_heads.box_predictor.cls_score.weight"],
                           expert["roi_heads.box_predictor.cls_score.weight"])  # fmt: skip

    # resume in the middle of the transfer phase: same final weights as the uninterrupted run
    os.remove(os.path.join(output, "transfer", "phase_done.json"))
    os.remove(os.path.join(output, "transfer", "model_final.pth"))
    with open(os.path.join(output, "transfer", "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    run_phases(load_config(project("stepwise.py"), overrides), resume=True)
    resumed = torch.load(os.path.join(output, "transfer", "model_final.pth"), weights_only=False)["model"]
    assert resumed.keys() == final.keys()
    assert all(torch.equal(resumed[k], final[k]) for k in final)


def test_a_teacher_phase_that_has_not_finished_is_named(tiny_dataset, tmp_path):
    output = str(tmp_path / "stepwise")
    cfg = load_config(project("stepwise.py"), tiny_stepwise_overrides(tiny_dataset, output))
    with pytest.raises(FileNotFoundError, match="head_expert"):
        run_phases(cfg, only="transfer")
