"""The phase runner's inputs of issue #12: derived datasets (``train.derived_datasets``: builders prepared once on
the main process, registered on every run), the teacher of a teacher-student phase (``train.teacher_from_phase``),
the mapper check for datasets with ignored annotations, and the score tables of ``DerivedDatasetContext``.
Training and evaluation are replaced by fakes (a model that records its arguments), except in the scoring test."""

import logging
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import DatasetMapper, MetadataCatalog

from ltdet2.engine import phases as phases_module
from ltdet2.engine.derived import DerivedDatasetContext
from ltdet2.engine.phases import DONE_FILE, Phase, checkpoint_identity, run_phases
from ltdet2.utils.files import content_identity

from fixtures.models import TINY_LT_SHAPES, small_model_cfg

EVENTS = []  # (event, ...) in call order, across the fakes


class RecordingModel(nn.Module):
    """A model target that records the arguments it was built with."""

    def __init__(self, **kwargs):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.kwargs = kwargs


class RecordingBuilder:
    """A derived-dataset builder that records its calls; ``ignored`` annotations are declared at registration."""

    def __init__(self, *, name, inputs=(), ignored=0):
        self.name = name
        self.inputs = list(inputs)
        self.ignored = ignored

    def input_phases(self):
        return self.inputs

    def prepare(self, context):
        EVENTS.append(("prepare", self.name, context.phase_name, context.output_dir, context.seed))

    def register(self, context):
        EVENTS.append(("register", self.name, context.phase_name))
        MetadataCatalog.get(self.name).set(num_ignored_annotations=self.ignored)


@pytest.fixture
def fake_training(monkeypatch):
    """do_train builds the model (recorded) and saves a final checkpoint; do_test returns fixed results."""
    EVENTS.clear()

    def do_train(cfg, *, resume=False):
        model = instantiate(cfg.model)
        EVENTS.append(("train", os.path.basename(cfg.train.output_dir), model.kwargs))
        os.makedirs(cfg.train.output_dir, exist_ok=True)
        torch.save({"model": model.state_dict()}, os.path.join(cfg.train.output_dir, "model_final.pth"))
        return model

    monkeypatch.setattr(phases_module, "do_train", do_train)
    monkeypatch.setattr(phases_module, "do_test", lambda cfg, model: {"bbox": {"AP": 1.0}})


def phase(dataset="c_plain", mapper=DatasetMapper, **train):
    return dict(
        model=L(RecordingModel)(teacher=None, teacher_weights=None),
        dataloader=dict(
            train=dict(dataset=dict(names=dataset), mapper=L(mapper)(is_train=True, augmentations=[])),
            evaluator=dict(),
        ),
        optimizer=dict(),
        lr_multiplier=dict(),
        train=dict(init_checkpoint="", seed=7, **train),
    )


def project(output_dir, **phases):
    return OmegaConf.create({"train": {"output_dir": str(output_dir)}, "phases": phases})


def messages_of(caplog):
    return [record.getMessage() for record in caplog.records]


def test_derived_datasets_are_prepared_once_on_the_main_process_and_registered(tmp_path, fake_training):
    builder = L(RecordingBuilder)(name="c_d_head", inputs=["pretrain"])
    cfg = project(tmp_path, pretrain=phase(), head=phase(dataset="c_d_head", derived_datasets=[builder]))
    run_phases(cfg)
    head_dir = str(tmp_path / "head")
    assert [e[:2] for e in EVENTS] == [
        ("train", "pretrain"),
        ("prepare", "c_d_head"),
        ("register", "c_d_head"),
        ("train", "head"),
    ]
    assert EVENTS[1] == ("prepare", "c_d_head", "head", head_dir, 7)
    # finished phases are skipped; their derived datasets are registered, not prepared again
    EVENTS.clear()
    run_phases(project(tmp_path, pretrain=phase(), head=phase(dataset="c_d_head", derived_datasets=[builder])))
    assert EVENTS == [("register", "c_d_head", "head")]
    # evaluation only: registered, not prepared
    EVENTS.clear()
    monkeypatch_free = project(tmp_path, pretrain=phase(), head=phase(dataset="c_d_head", derived_datasets=[builder]))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(phases_module, "evaluate_phase", lambda p, checkpoint=None: {"bbox": {"AP": 2.0}})
        results = run_phases(monkeypatch_free, only="head", eval_only=True)
    assert EVENTS == [("register", "c_d_head", "head")]
    assert results == {"head": {"bbox": {"AP": 2.0}}}


def test_a_derived_dataset_needs_a_finished_earlier_input_phase(tmp_path, fake_training):
    builder = L(RecordingBuilder)(name="c_d_tail", inputs=["pretrain"])
    own_start = dict(init_from_phase="", derived_datasets=[builder])  # the init checkpoint is not the issue here
    with pytest.raises(
        FileNotFoundError,
        match=r"phase 'tail': derived dataset 'c_d_tail' needs phase 'pretrain''s final checkpoint .*pretrain/"
        r"model_final.pth, which does not exist: train phase 'pretrain' first",
    ):
        run_phases(project(tmp_path, pretrain=phase(), tail=phase(**own_start)), only="tail")
    assert EVENTS == []  # nothing prepared, nothing trained
    later = L(RecordingBuilder)(name="c_d_tail", inputs=["tail"])
    with pytest.raises(ValueError, match=r"phase 'tail': derived dataset 'c_d_tail' reads phase 'tail', which is not"):
        run_phases(project(tmp_path, tail=phase(derived_datasets=[later])))


def test_teacher_from_phase_fills_the_model_and_is_recorded(tmp_path, fake_training, caplog):
    def make():
        return project(
            tmp_path,
            pretrain=phase(),
            head_expert=phase(),
            transfer=phase(teacher_from_phase="head_expert"),
        )

    with caplog.at_level(logging.INFO, logger="detectron2"):
        run_phases(make())
    expert_final = str(tmp_path / "head_expert" / "model_final.pth")
    [(_, _, kwargs)] = [e for e in EVENTS if e[1] == "transfer"]
    assert kwargs["teacher_weights"] == expert_final
    assert isinstance(kwargs["teacher"], RecordingModel)  # head_expert's model config, copied
    assert kwargs["teacher"].kwargs == {"teacher": None, "teacher_weights": None}
    assert [e for e in EVENTS if e[1] == "head_expert"][0][2]["teacher_weights"] is None
    assert f"phase 'transfer': teacher = frozen final model of phase 'head_expert' ({expert_final})" in messages_of(
        caplog
    )
    done = phases_module.read_json(tmp_path / "transfer" / DONE_FILE)
    assert done["teacher_checkpoint"] == checkpoint_identity(expert_final)
    assert "teacher_checkpoint" not in phases_module.read_json(tmp_path / "head_expert" / DONE_FILE)

    # a teacher config given by the project is kept
    cfg = make()
    cfg.phases.transfer.model.teacher = L(RecordingModel)(marker="own")
    phases_module.chain_teachers(phases_module.resolve_phases(cfg))
    assert cfg.phases.transfer.model.teacher.marker == "own"

    # skipped, but its teacher changed since: warned
    os.utime(expert_final, (1, 1))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="detectron2"):
        run_phases(make())
    assert any(
        "phase 'transfer' was distilled from another version of its teacher" in m and expert_final in m
        for m in messages_of(caplog)
    )


def test_a_missing_or_later_teacher_is_refused_naming_the_phases(tmp_path, fake_training):
    cfg = project(tmp_path, head_expert=phase(), transfer=phase(init_from_phase="", teacher_from_phase="head_expert"))
    with pytest.raises(
        FileNotFoundError,
        match=r"phase 'transfer' distils from the frozen final model of phase 'head_expert' \(train.teacher_from_phase"
        r"\), .*head_expert/model_final.pth, which does not exist: train phase 'head_expert' first",
    ):
        run_phases(cfg, only="transfer")
    assert EVENTS == []
    with pytest.raises(ValueError, match=r"phase 'transfer': train.teacher_from_phase='nope' is not an earlier phase"):
        run_phases(project(tmp_path, head_expert=phase(), transfer=phase(teacher_from_phase="nope")))


def test_ignored_annotations_need_a_validity_mapper(tmp_path, fake_training, monkeypatch):
    import ltdet2.data

    class ValidityMapper(DatasetMapper):  # stands for ltdet2.data.ValidityDatasetMapper
        pass

    class OwnValidityMapper(ValidityMapper):
        pass

    monkeypatch.setattr(ltdet2.data, "ValidityDatasetMapper", ValidityMapper, raising=False)
    ignoring = L(RecordingBuilder)(name="c_d_ignoring", ignored=3)
    with pytest.raises(
        ValueError,
        match=r"phase 'head': the training dataset 'c_d_ignoring' \(3 ignored annotations\) has ignored annotations, "
        r"but dataloader.train.mapper is 'DatasetMapper'",
    ):
        run_phases(project(tmp_path / "a", head=phase(dataset="c_d_ignoring", derived_datasets=[ignoring])))
    assert [e[0] for e in EVENTS] == ["prepare", "register"]  # refused before training
    for mapper in (ValidityMapper, OwnValidityMapper):
        run_phases(project(tmp_path / mapper.__name__, head=phase("c_d_ignoring", mapper, derived_datasets=[ignoring])))
    # no ignored annotation: any mapper
    dropping = L(RecordingBuilder)(name="c_d_dropping", ignored=0)
    run_phases(project(tmp_path / "b", head=phase(dataset="c_d_dropping", derived_datasets=[dropping])))
    assert [e[0] for e in EVENTS].count("train") == 3


def test_context_scores_with_a_phase_final_model_and_caches_the_table(tmp_path, tiny_dataset, monkeypatch, caplog):
    from detectron2.data import DatasetMapper as Mapper
    from detectron2.data import transforms as T

    from ltdet2.engine import derived

    train_name, _ = tiny_dataset
    model_cfg = small_model_cfg()
    model_cfg.roi_heads.num_classes = TINY_LT_SHAPES.num_classes
    pretrain_dir = tmp_path / "pretrain"
    pretrain_cfg = OmegaConf.create(
        dict(
            model=model_cfg,
            dataloader=dict(
                test=dict(
                    mapper=L(Mapper)(is_train=False, augmentations=[L(T.ResizeShortestEdge)(short_edge_length=80)])
                )
            ),
            train=dict(device="cpu", output_dir=str(pretrain_dir)),
        )
    )
    pretrain = Phase("pretrain", pretrain_cfg, str(pretrain_dir))
    os.makedirs(pretrain_dir)
    torch.manual_seed(0)
    model = instantiate(model_cfg)
    torch.save({"model": model.state_dict()}, pretrain.final_checkpoint)
    context = DerivedDatasetContext(phase_name="head", output_dir=str(tmp_path), seed=0, phases={"pretrain": pretrain})
    scored = []
    score_annotations = derived.score_annotations
    monkeypatch.setattr(derived, "score_annotations", lambda *a, **k: scored.append(k) or score_annotations(*a, **k))

    table = context.annotation_scores("pretrain", dataset=train_name)
    assert scored[0]["mapper_augmentations"][0].short_edge_length == (80, 80)  # the phase's test resize
    expected = score_annotations(
        model, train_name, mapper_augmentations=[T.ResizeShortestEdge(80)], score="max_foreground"
    )
    for key in expected:
        np.testing.assert_array_equal(table[key], expected[key])
    path = context.table_path("pretrain", dataset=train_name, score="max_foreground")
    assert os.path.isfile(path)
    identity = context.table_identity("pretrain", dataset=train_name)
    assert identity["checkpoint"] == content_identity(pretrain.final_checkpoint)  # by content: a moved run keeps it
    assert identity["dataset"] == train_name and identity["score"] == "max_foreground"

    again = context.annotation_scores("pretrain", dataset=train_name)  # cached
    assert len(scored) == 1
    np.testing.assert_array_equal(again["score"], table["score"])

    os.utime(pretrain.final_checkpoint, (1, 1))  # touched, same weights: still the same model
    context.annotation_scores("pretrain", dataset=train_name)
    assert len(scored) == 1
    torch.save({"model": instantiate(model_cfg).state_dict()}, pretrain.final_checkpoint)  # another version: scored
    with caplog.at_level(logging.WARNING, logger="detectron2"):
        context.annotation_scores("pretrain", dataset=train_name)
    assert len(scored) == 2
    assert any(f"{path} comes from another model" in m for m in messages_of(caplog))

    context.annotation_scores("pretrain", dataset=train_name, score="ground_truth")  # another table
    assert len(scored) == 3
    with pytest.raises(ValueError, match=r"phase 'head': scores of phase 'head_expert' asked for, but it is not"):
        context.annotation_scores("head_expert", dataset=train_name)
