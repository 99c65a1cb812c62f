"""The phase graph (ltdet2.engine.phase_graph): which earlier phases a phase needs (its input checkpoint's, its
teacher's, its derived datasets' builders', through their own ``input_phases()``), read in one place by the runner,
its derived datasets and the leaderboard."""

import os

import pytest
from omegaconf import OmegaConf

from detectron2.config import LazyCall as L
from detectron2.modeling import GeneralizedRCNN

from ltdet2.data import ExemplarSetBuilder
from ltdet2.engine.derived import check_builder_inputs
from ltdet2.engine.leaderboard import entry_chains, phase_inputs
from ltdet2.engine.phase_graph import (
    chain_checkpoints,
    chain_teachers,
    derived_dataset_builders,
    derived_input_phases,
    earlier_phases,
    init_phase_name,
    input_phase,
    phase_input_names,
    teacher_model_config,
    teacher_phase,
    teacher_phase_name,
)
from ltdet2.engine.phases import resolve_phases
from ltdet2.modeling import TeacherStudentRCNN


class Builder:
    """A derived-dataset builder that reads the phases it is given."""

    def __init__(self, *, name, inputs=()):
        self.name = name
        self.inputs = list(inputs)

    def input_phases(self):
        return self.inputs


def phase(**train):
    return dict(model=dict(teacher=None), train=dict(init_checkpoint="", **train))


def project(**phases):
    return OmegaConf.create({"train": {"output_dir": "/runs/p"}, "phases": phases})


def test_the_names_a_phase_gives():
    assert init_phase_name({}, None) is None  # the first phase has no input phase
    assert init_phase_name({"init_from_phase": "x"}, None) is None
    assert init_phase_name({}, "a") == "a"  # the previous phase
    assert init_phase_name({"init_from_phase": None}, "a") == "a"
    assert init_phase_name({"init_from_phase": ""}, "a") is None  # independent
    assert init_phase_name({"init_from_phase": "z"}, "a") == "z"  # not checked here
    assert teacher_phase_name({}) is None and teacher_phase_name({"teacher_from_phase": ""}) is None
    assert teacher_phase_name({"teacher_from_phase": "t"}) == "t"


def test_input_names_come_from_the_builders_own_protocol():
    builders = [
        L(Builder)(name="d1", inputs=["s", "a"]),  # a LazyCall, instantiated as the runner does
        Builder(name="d2", inputs=["t"]),  # an object
        L(ExemplarSetBuilder)(name="d3", source="src", scores_from_phase="u", head_quota=2, tail_quota=1),
    ]
    train = {"teacher_from_phase": "t", "derived_datasets": builders}
    # each once, in order: input phase, teacher, the builders' inputs
    assert phase_input_names(train, "a") == ["a", "t", "s", "u"]
    assert phase_input_names({"init_from_phase": "", **train}, "a") == ["t", "s", "a", "u"]
    assert phase_input_names({}, None) == []


def test_the_runner_resolves_the_names_to_earlier_phases():
    cfg = project(
        a=phase(),
        b=phase(),
        c=phase(init_from_phase="a", teacher_from_phase="b"),
        d=phase(init_from_phase=""),
        e=phase(init_from_phase="e"),
    )
    phases = resolve_phases(cfg)
    a, b, c, d, _ = phases
    assert [input_phase(phases, i) for i in range(4)] == [None, a, a, None]
    assert [teacher_phase(phases, i) for i in range(4)] == [None, None, b, None]
    with pytest.raises(
        ValueError, match=r"phase 'e': train.init_from_phase='e' is not an earlier phase \(earlier phases: "
    ):
        input_phase(phases, 4)
    assert earlier_phases(phases, c) == {"a": a, "b": b}

    chain_checkpoints(phases[:4])
    chain_teachers(phases[:4])
    assert cfg.phases.b.train.init_checkpoint == a.final_checkpoint == os.path.join("/runs/p", "a", "model_final.pth")
    assert cfg.phases.c.train.init_checkpoint == a.final_checkpoint and cfg.phases.d.train.init_checkpoint == ""
    assert cfg.phases.c.model.teacher_weights == b.final_checkpoint
    assert cfg.phases.c.model.teacher == cfg.phases.b.model


def test_derived_inputs_are_earlier_phases_checked_in_the_builders_order(tmp_path):
    cfg = OmegaConf.create({"train": {"output_dir": str(tmp_path)}, "phases": {n: phase() for n in "abc"}})
    phases = resolve_phases(cfg)
    a, b, c = phases
    builders = [Builder(name="d1", inputs=["a"]), Builder(name="d2", inputs=["b", "c"])]
    found = derived_input_phases(phases, c, builders)
    assert next(found) == (builders[0], a) and next(found) == (builders[1], b)  # yielded before the refusal
    with pytest.raises(ValueError, match=r"phase 'c': derived dataset 'd2' reads phase 'c', which is not an earlier"):
        next(found)
    # the runner's check: each input's final checkpoint, in order
    with pytest.raises(FileNotFoundError, match=r"phase 'c': derived dataset 'd1' needs phase 'a''s final checkpoint"):
        check_builder_inputs(c, phases, builders)
    os.makedirs(a.output_dir)
    open(a.final_checkpoint, "w").close()
    with pytest.raises(FileNotFoundError, match=r"derived dataset 'd2' needs phase 'b''s final checkpoint"):
        check_builder_inputs(c, phases, builders)


def test_the_leaderboard_and_the_runner_read_the_same_graph():
    cfg = project(
        pretrain=phase(),
        expert=phase(),
        scratch=phase(init_from_phase=""),
        transfer=phase(
            init_from_phase="pretrain",
            teacher_from_phase="expert",
            derived_datasets=[L(Builder)(name="d", inputs=["scratch", "pretrain"])],
        ),
    )
    phases = resolve_phases(cfg)
    for index, p in enumerate(phases):
        from_runner = [input_phase(phases, index), teacher_phase(phases, index)]
        from_runner += [source for _, source in derived_input_phases(phases, p, derived_dataset_builders(p.cfg))]
        expected = list(dict.fromkeys(s.name for s in from_runner if s is not None))
        assert phase_inputs(cfg.phases, p.name) == expected, p.name
    assert phase_inputs(cfg.phases, "transfer") == ["pretrain", "expert", "scratch"]
    assert entry_chains(cfg.phases) == {"transfer": ["pretrain", "expert", "scratch", "transfer"]}
    # the leaderboard asks only that they be phases of the project
    cfg.phases.transfer.train.derived_datasets[0].inputs = ["nope"]
    with pytest.raises(ValueError, match=r"phase 'transfer' needs phases \['nope'\], which the project does not have"):
        phase_inputs(cfg.phases, "transfer")


def test_a_teacher_is_the_phase_s_student_alone():
    student = L(TeacherStudentRCNN)(backbone=None, teacher=L(GeneralizedRCNN)(), teacher_weights="w", distillers=[])
    teacher = teacher_model_config(student)
    assert teacher._target_ is GeneralizedRCNN and sorted(teacher) == ["_target_", "backbone"]
    assert student._target_ is TeacherStudentRCNN and "distillers" in student  # a copy
    assert teacher_model_config(L(GeneralizedRCNN)(backbone=None)) == L(GeneralizedRCNN)(backbone=None)
