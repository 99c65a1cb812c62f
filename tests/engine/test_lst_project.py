"""LST's projects: every phase instantiates with the class count of its split and LST's pieces; the phases (on a
tiny LT-Shapes, tests/configs/tiny_lst.py, built by the same ltdet2.config.lst) train end to end on CPU: base,
then incremental phases that expand the previous model, freeze the ResNet and distil from the frozen previous
phase; an interrupted incremental phase resumes to the same weights; a checkpoint of another class count is
named in the error."""

import copy
import hashlib
import os

import pytest
import torch
from omegaconf import OmegaConf

from detectron2.config import instantiate
from detectron2.modeling import GeneralizedRCNN
from detectron2.utils.events import EventStorage

from ltdet2.config.lst import lst_phases
from ltdet2.data.lt_shapes import NUM_CLASSES
from ltdet2.engine.phase_graph import chain_checkpoints, chain_teachers
from ltdet2.engine.phases import load_config, resolve_phases, run_phases
from ltdet2.engine.train_loop import build_phase_hooks, do_train
from ltdet2.hooks import ClassExpansion, WriteGeneratedWeights

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
            assert not phase.cfg.train.hooks and phase.cfg.train.get("teacher_from_phase") is None
            assert not build_phase_hooks(phase.cfg)
            continue
        previous = phases[index - 1]
        (expansion,) = phase.cfg.train.hooks  # the network expansion of the initial checkpoint, seeded by train.seed
        assert expansion._target_ is ClassExpansion
        assert OmegaConf.to_container(expansion, resolve=False)["seed"] == "${...seed}"
        (expansion,) = build_phase_hooks(phase.cfg)
        assert expansion.old_num_classes == previous.cfg.model.roi_heads.num_classes
        assert expansion.seed == phase.cfg.train.seed == 0
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

    # the phase-end write: model_final = the last iteration's model (model_0000003) with the new classes' rows
    # (contiguous 4, 5) replaced by generated ones of the same norm (row_norm="keep"), recorded in the checkpoint
    rows = "roi_heads.box_predictor.cls_score.weight"
    trained = torch.load(os.path.join(output, "incremental_1", "model_0000003.pth"), weights_only=False)["model"]
    assert (first[rows][4:6] != trained[rows][4:6]).any(1).all()
    assert torch.equal(first[rows][[0, 1, 2, 3, 6]], trained[rows][[0, 1, 2, 3, 6]])
    assert torch.allclose(first[rows][4:6].norm(dim=1), trained[rows][4:6].norm(dim=1), rtol=1e-5)
    assert all(torch.equal(first[k], trained[k]) for k in first if k != rows)  # scale, regressor, mask head
    # the generator term's state stays out: the next phase's model builds its own
    assert {k for k in trained if k not in first} == {k for k in trained if k.startswith("distillers.1.")}
    assert "distillers.1.ema_weights" in trained
    # the generator trains with the phase (issue 25: train.trainable used to freeze it, so the rows written at
    # the phase's end came from its initial weights): its parameters moved between iterations 1 and 3. The scalar
    # attention scale (init 10) is left to the gradient check below: two warm-up steps of ~1e-6 round away at
    # float32's resolution there (~1e-6 at 10)
    earlier = torch.load(os.path.join(output, "incremental_1", "model_0000001.pth"), weights_only=False)["model"]
    generator = [k for k in trained if k.startswith("distillers.1.generator.") and trained[k].dim() > 0]
    assert len(generator) == 5 and all(not torch.equal(trained[k], earlier[k]) for k in generator)
    final = torch.load(os.path.join(output, "incremental_1", "model_final.pth"), weights_only=False)
    record = final["generated_weights"]
    assert record["dataset"] == "tiny_lst_phase1" and record["row_norm"] == "keep"
    assert len(record["counts"]) == 2 and min(record["counts"]) > 0
    assert final["iteration"] == 3 and final["trainer"]["iteration"] == 3  # as the periodic model_final

    # resume in the middle of incremental_1: same final weights as the uninterrupted run
    os.remove(os.path.join(output, "incremental_1", "phase_done.json"))
    os.remove(os.path.join(output, "incremental_1", "model_final.pth"))
    with open(os.path.join(output, "incremental_1", "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    run_phases(load_config(config, tiny_overrides(output)), resume=True, only="incremental_1")
    resumed = weights("incremental_1")
    assert resumed.keys() == first.keys() and all(torch.equal(resumed[k], first[k]) for k in first)

    # resumed after the write (interrupted before its evaluation): the written model_final is kept as it is
    def digest(path):
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    final_path = os.path.join(output, "incremental_1", "model_final.pth")
    written = digest(final_path)
    phases = resolve_phases(load_config(config, tiny_overrides(output)))
    chain_checkpoints(phases)
    chain_teachers(phases)
    model = do_train(phases[1].cfg, resume=True)  # the runner's step, without the evaluation
    assert digest(final_path) == written
    predictor = model.roi_heads.box_predictor
    assert torch.equal(predictor.cls_score.weight.detach().cpu(), first[rows])
    # one more training step's gradients reach every generator parameter
    generator = dict(model.distillers[1].generator.named_parameters())
    assert generator and all(p.requires_grad for p in generator.values())
    model.train()
    batch = next(iter(instantiate(phases[1].cfg.dataloader.train)))
    model.zero_grad()
    with EventStorage(0):
        sum(model(batch).values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.values()), [
        name for name, p in generator.items() if p.grad is None or not p.grad.abs().sum() > 0
    ]

    # a checkpoint with another class count than the previous phase's: named in the error
    os.remove(os.path.join(output, "incremental_2", "phase_done.json"))
    cfg = load_config(config, tiny_overrides(output))
    cfg.phases.incremental_2.train.init_from_phase = ""
    cfg.phases.incremental_2.train.init_checkpoint = os.path.join(output, "base", "model_final.pth")
    with pytest.raises(
        ValueError, match=r"has 4 classes; ClassExpansion \(train.hooks\) expects the previous phase's 6"
    ):
        run_phases(cfg, only="incremental_2")


def test_lst_ablation_chains():
    from detectron2.modeling.roi_heads import StandardROIHeads

    from ltdet2.modeling import MetaWeightGeneratorTerm, TeacherStudentRCNN

    phases = resolve_phases(load_config(project("lst_ablation.py"), ["train.device=cpu"]))
    by_name = {p.name: p.cfg for p in phases}
    chains = {
        "incremental": ["base", "incremental_1", "incremental_2"],
        "mwg": ["base", "mwg_1", "mwg_2"],
        "no_distill": ["base", "no_distill_1", "no_distill_2"],
    }
    assert list(by_name) == ["joint", "joint_rfs", "base"] + [f"{c}_{t}" for c in chains for t in (1, 2, 3)]
    for name in ("joint", "joint_rfs", "base"):
        assert by_name[name].train.init_from_phase == "" and not by_name[name].train.teacher_from_phase
    for chain, inputs in chains.items():
        for t, previous in enumerate(inputs, start=1):
            cfg = by_name[f"{chain}_{t}"]
            assert cfg.model.roi_heads.num_classes == LST_PROJECTS["lst.py"][t]
            assert cfg.train.get("init_from_phase") == (None if chain == "incremental" else previous)
            assert cfg.train.get("teacher_from_phase") == (None if chain == "no_distill" else previous)
            hooks = [hook._target_ for hook in cfg.train.hooks]
            assert hooks == [ClassExpansion, *([WriteGeneratedWeights] if chain == "mwg" else [])]
            assert (
                cfg.dataloader.train.dataset.names
                == {
                    "incremental": f"lt_shapes_train_lst_phase{t}",
                    "mwg": f"lt_shapes_train_lst_mwg_phase{t}",
                    "no_distill": f"lt_shapes_train_lst_no_distill_phase{t}",
                }[chain]
            )
    # the LST chain is projects/lst.py's (but for base's independence from joint_rfs, the phase before it here)
    lst = {p.name: p.cfg for p in resolve_phases(load_config(project("lst.py"), ["train.device=cpu"]))}

    def plain(cfg, *keys):
        cfg = copy.deepcopy(cfg)
        for key in ("output_dir", *keys):
            cfg.train.pop(key)
        return OmegaConf.to_yaml(cfg)

    assert plain(by_name["base"], "init_from_phase") == plain(lst["base"], "init_from_phase")
    assert all(plain(by_name[name]) == plain(cfg) for name, cfg in lst.items() if name != "base")
    assert by_name["mwg_3"].model.distillers[0] == lst["incremental_3"].model.distillers[0]
    joint, mwg, no_distill = (instantiate(by_name[n].model) for n in ("joint", "mwg_2", "no_distill_2"))
    assert type(joint) is GeneralizedRCNN and type(joint.roi_heads) is StandardROIHeads
    assert joint.roi_heads.num_classes == NUM_CLASSES and joint.roi_heads.mask_head.predictor.out_channels == 72
    assert (
        by_name["joint"].train.max_iter == 700 == lst["base"].train.max_iter + 3 * lst["incremental_1"].train.max_iter
    )
    assert by_name["joint_rfs"].dataloader.train.sampler._target_.__name__ == "repeat_factor_sampler"
    assert "sampler" not in by_name["joint"].dataloader.train
    assert by_name["joint"].dataloader.evaluator.instance_buckets
    assert isinstance(mwg, TeacherStudentRCNN)
    term = mwg.distillers[1]
    assert isinstance(term, MetaWeightGeneratorTerm)
    assert (term.num_base_classes, term.num_old_classes, term.num_classes, term.feature_dim) == (30, 44, 58, 256)
    assert {k: v for k, v in by_name["mwg_2"].train.hooks[1].items() if k != "_target_"} == {"row_norm": "keep"}
    assert type(no_distill) is GeneralizedRCNN and "teacher" not in by_name["no_distill_2"].model


def test_lst_phases_refuse_a_generator_they_cannot_run():
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "lt_shapes_defaults.py"))
    args = (cfg.model, cfg.dataloader, cfg.optimizer, cfg.lr_multiplier, cfg.train)
    sizes = dict(num_classes=8, source="s", source_val="v", base=4, num_phases=2, incremental_iters=4)
    sizes.update(incremental_schedule=lambda n: None, incremental_lr=0.01)
    with pytest.raises(ValueError, match="weight_generator needs distill=True: .* no teacher-less mode"):
        lst_phases(*args, **sizes, distill=False, weight_generator={})
    with pytest.raises(ValueError, match=r"weight_generator has unknown options \['momentum'\]; known: the term's"):
        lst_phases(*args, **sizes, weight_generator=dict(momentum=0.5))
