"""LST's projects: every phase instantiates with the class count of its split and LST's pieces; the phases (on a
tiny LT-Shapes, tests/configs/tiny_lst.py, built by the same configs/lst.py) train end to end on CPU: base,
then incremental phases that expand the previous model, freeze the ResNet and distil from the frozen previous
phase; an interrupted incremental phase resumes to the same weights; a checkpoint of another class count is
named in the error."""

import os

import pytest
import torch

from detectron2.config import instantiate
from detectron2.modeling import GeneralizedRCNN

from ltdet2.data.lt_shapes import NUM_CLASSES
from ltdet2.engine.phases import chain_teachers, load_config, resolve_phases, run_phases

from fixtures.models import ROOT, TEST_DEVICE

LST_PROJECTS = {
    "lst.py": (30, 44, 58, 72),
    "lst_lvis_v0_5.py": (270, 430, 590, 750, 910, 1070, 1230),
    "lst_lvis_v1.py": (270, 426, 582, 738, 893, 1048, 1203),
}


def project(name):
    return os.path.join(ROOT, "projects", name)


@pytest.mark.parametrize("name", sorted(LST_PROJECTS))
def test_lst_phases_follow_the_split_with_lsts_pieces(name):
    cfg = load_config(project(name), ["train.device=cpu"])
    phases = resolve_phases(cfg)
    assert [p.name for p in phases] == ["base"] + [f"incremental_{t}" for t in range(1, len(phases))]
    assert [p.cfg.model.roi_heads.num_classes for p in phases] == list(LST_PROJECTS[name])
    assert LST_PROJECTS[name][-1] == NUM_CLASSES or "lvis" in name
    for index, phase in enumerate(phases):
        model = instantiate(phase.cfg.model)
        predictor = model.roi_heads.box_predictor
        assert type(predictor.cls_score).__name__ == "CosineClassifier" and predictor.regressor_input_relu
        assert float(predictor.cls_score.scale) == 10.0 and predictor.cls_score.scale.requires_grad
        assert type(model.roi_heads.mask_head).__name__ == "TransferMaskHead"
        assert phase.cfg.dataloader.train.mapper._target_.__name__ == "ValidityDatasetMapper"
        assert phase.cfg.dataloader.evaluator.instance_buckets
        if index == 0:
            assert phase.cfg.train.get("expand_classes") is None and phase.cfg.train.get("teacher_from_phase") is None
            continue
        previous = phases[index - 1]
        assert phase.cfg.train.expand_classes == {"old_num_classes": previous.cfg.model.roi_heads.num_classes}
        assert phase.cfg.train.teacher_from_phase == previous.name
        assert [type(d).__name__ for d in model.distillers] == ["OldClassLogitDistillation"]
        assert model.distillers[0].num_old_classes == previous.cfg.model.roi_heads.num_classes
        assert not any(p.startswith("backbone.bottom_up") for p in phase.cfg.train.trainable)
    # a teacher copied from a teacher-student phase is that phase's student alone
    chain_teachers(phases)
    teacher = phases[-1].cfg.model.teacher
    assert teacher._target_ is GeneralizedRCNN and "teacher" not in teacher and "distillers" not in teacher
    assert teacher.roi_heads.num_classes == phases[-2].cfg.model.roi_heads.num_classes


def tiny_overrides(output_dir):
    return [f"train.output_dir={output_dir}", f"train.device={TEST_DEVICE}"]


def test_lst_phases_train_end_to_end_and_an_incremental_phase_resumes(tiny_dataset, tmp_path):
    config = os.path.join(ROOT, "tests", "configs", "tiny_lst.py")
    output = str(tmp_path / "lst")
    results = run_phases(load_config(config, tiny_overrides(output)))
    assert list(results) == ["base", "incremental_1", "incremental_2"]

    def weights(phase):
        return torch.load(os.path.join(output, phase, "model_final.pth"), weights_only=False)["model"]

    base, first = weights("base"), weights("incremental_1")
    # expanded: 4 -> 6 classes (+ background last); the ResNet frozen, the old classes' rows trained on
    assert base["roi_heads.box_predictor.cls_score.weight"].shape[0] == 5
    assert first["roi_heads.box_predictor.cls_score.weight"].shape[0] == 7
    resnet = [k for k in first if k.startswith("backbone.bottom_up.") and first[k].is_floating_point()]
    assert resnet and all(torch.equal(first[k], base[k]) for k in resnet)
    assert not any(k.startswith("teacher") for k in first)

    # resume in the middle of incremental_1: same final weights as the uninterrupted run
    os.remove(os.path.join(output, "incremental_1", "phase_done.json"))
    os.remove(os.path.join(output, "incremental_1", "model_final.pth"))
    with open(os.path.join(output, "incremental_1", "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    run_phases(load_config(config, tiny_overrides(output)), resume=True, only="incremental_1")
    resumed = weights("incremental_1")
    assert resumed.keys() == first.keys() and all(torch.equal(resumed[k], first[k]) for k in first)

    # a checkpoint with another class count than the previous phase's: named in the error
    os.remove(os.path.join(output, "incremental_2", "phase_done.json"))
    cfg = load_config(config, tiny_overrides(output))
    cfg.phases.incremental_2.train.init_from_phase = ""
    cfg.phases.incremental_2.train.init_checkpoint = os.path.join(output, "base", "model_final.pth")
    with pytest.raises(ValueError, match=r"has 4 classes; train.expand_classes expects the previous phase's 6"):
        run_phases(cfg, only="incremental_2")
