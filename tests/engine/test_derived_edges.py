"""Edges of the derived datasets and their score tables (issue 26): a damaged score-table cache is named and
rebuilt; a finished phase whose derived json was lost or damaged gets it rebuilt (or is told what is missing), even
with --eval-only, and stays cheap to skip when nothing is wrong; an LST phase class without a training image is
warned about and counted in the set's metadata; a score table stays valid when the run folder moves, not when the
checkpoint changes. Training, evaluation and scoring are fakes (a table of fixed scores) except where named."""

import json
import logging
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog

from ltdet2.data import (
    IncrementalPhaseBuilder,
    ValidityDatasetMapper,
    build_derived_dataset,
    register_derived_dataset,
    register_lvis_format_dataset,
)
from ltdet2.engine import phases as phases_module
from ltdet2.engine.derived import DerivedDatasetContext
from ltdet2.engine.exemplar_scoring import load_score_table, save_score_table
from ltdet2.engine.phases import run_phases

PREFIX = "edges_"
# the toy source: image id -> {json category id: instances}; categories 3 ("ghost") and 6 ("shade") have none
TRAIN_IMAGES = {10: {7: 3, 4: 1}, 11: {7: 3}, 12: {7: 3, 2: 1}, 13: {2: 2, 9: 3, 5: 1}, 14: {9: 5, 4: 2},
                15: {2: 1}, 16: {4: 9}}  # fmt: skip
VAL_IMAGES = {100: {4: 1, 2: 2}, 101: {5: 1, 9: 1}, 102: {}}
NAMES = {2: "n1", 3: "ghost", 4: "big", 5: "one", 6: "shade", 7: "k", 9: "n2"}


def lvis_json(images, first_annotation_id=1, names=NAMES):
    out_images, annotations = [], []
    for image_id, per_class in images.items():
        out_images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 40, "width": 40,
                           "neg_category_ids": [], "not_exhaustive_category_ids": []})  # fmt: skip
        for category, n in per_class.items():
            for j in range(n):
                box = [1.0 + j, 2.0, 5.0, 6.0]
                annotations.append({"id": first_annotation_id + len(annotations), "image_id": image_id,
                                    "category_id": category, "bbox": box, "area": 30.0})  # fmt: skip
    categories = [{"id": c, "name": n} for c, n in sorted(names.items())]
    return {"images": out_images, "annotations": annotations, "categories": categories}


@pytest.fixture
def toy(tmp_path):
    """(train, val) names of the toy source (its files outside the run folders); unregisters every 'edges_'
    dataset after."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.json").write_text(json.dumps(lvis_json(TRAIN_IMAGES)))
    (data / "val.json").write_text(json.dumps(lvis_json(VAL_IMAGES, first_annotation_id=500)))
    root = str(data / "images")
    yield (
        register_lvis_format_dataset(f"{PREFIX}train", str(data / "train.json"), root),
        register_lvis_format_dataset(f"{PREFIX}val", str(data / "val.json"), root, train_json=str(data / "train.json")),
    )
    for name in [n for n in DatasetCatalog.keys() if n.startswith(PREFIX)]:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def messages(caplog, level=logging.WARNING):
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


# --- 1. a damaged score-table cache ----------------------------------------------------------------------------


def fake_table(dataset, value=0.5):
    """A score table of every annotation of ``dataset`` (a registered toy), all scored ``value``."""
    with open(MetadataCatalog.get(dataset).json_file) as f:
        annotations = json.load(f)["annotations"]
    return {
        "annotation_id": np.array([a["id"] for a in annotations], dtype=np.int64),
        "image_id": np.array([a["image_id"] for a in annotations], dtype=np.int64),
        "category_id": np.array([a["category_id"] for a in annotations], dtype=np.int64),
        "score": np.full(len(annotations), value, dtype=np.float32),
    }


@pytest.fixture
def scoring(monkeypatch):
    """DerivedDatasetContext scores with a fake (a fixed table; each call recorded in the returned list); set
    ``calls.fail = True`` to make scoring an error."""
    calls = SimpleNamespace(count=0, fail=False)

    def score(self, phase, dataset, score, *, distributed):
        if calls.fail:
            raise AssertionError(f"scored {dataset} with phase {phase!r} again: the cached table was not reused")
        calls.count += 1
        return fake_table(dataset, value=0.25 * calls.count)

    monkeypatch.setattr(DerivedDatasetContext, "_score", score)
    return calls


def write_checkpoint(path, value=0.0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"model": {"w": torch.full((8,), float(value))}}, path)


def scoring_context(run_dir):
    """The context of phase 'head' of a run in ``run_dir`` whose phase 'pretrain' scores."""
    pretrain = SimpleNamespace(
        name="pretrain",
        cfg=OmegaConf.create({}),
        output_dir=str(run_dir / "pretrain"),
        final_checkpoint=str(run_dir / "pretrain" / "model_final.pth"),
    )
    return DerivedDatasetContext(
        phase_name="head", output_dir=str(run_dir / "head"), seed=0, phases={"pretrain": pretrain}
    )


def test_a_damaged_score_table_is_named_and_scored_again(tmp_path, toy, scoring, caplog):
    train, _ = toy
    write_checkpoint(str(tmp_path / "run" / "pretrain" / "model_final.pth"))
    context = scoring_context(tmp_path / "run")
    context.annotation_scores("pretrain", dataset=train)
    path = context.table_path("pretrain", dataset=train)
    assert scoring.count == 1 and os.path.isfile(path)

    with open(path, "rb") as f:
        data = f.read()
    for damage in (data[: len(data) // 2], b"", data[:10]):  # cut short (BadZipFile), empty (EOFError)
        with open(path, "wb") as f:
            f.write(damage)
        with pytest.raises(ValueError, match=rf"score table file {path} is damaged \((BadZipFile|EOFError)") as e:
            load_score_table(path)
        assert type(e.value).__name__ == "ScoreTableDamaged"
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="detectron2"):
            table = context.annotation_scores("pretrain", dataset=train)
        warnings = messages(caplog)
        assert len(warnings) == 1 and path in warnings[0] and "damaged" in warnings[0], warnings
        assert "scoring again" in warnings[0]
        np.testing.assert_array_equal(load_score_table(path)["score"], table["score"])  # written again, whole
    assert scoring.count == 4

    # a table without one of its arrays (KeyError) is damaged too
    np.savez(path, identity=np.array("{}"), annotation_id=np.zeros(1, dtype=np.int64))
    with pytest.raises(ValueError, match=rf"{path} is damaged \(KeyError: .*image_id"):
        load_score_table(path)
    context.annotation_scores("pretrain", dataset=train)
    assert scoring.count == 5


# --- 4. a moved run folder keeps its tables; a changed checkpoint does not ----------------------------------------


def test_a_score_table_survives_moving_the_run_folder_not_a_changed_checkpoint(tmp_path, toy, scoring, caplog):
    train, _ = toy
    checkpoint = str(tmp_path / "run" / "pretrain" / "model_final.pth")
    write_checkpoint(checkpoint, value=0.0)
    first = scoring_context(tmp_path / "run").annotation_scores("pretrain", dataset=train)
    assert scoring.count == 1

    shutil.move(str(tmp_path / "run"), str(tmp_path / "moved"))
    scoring.fail = True
    moved = scoring_context(tmp_path / "moved")
    with caplog.at_level(logging.INFO, logger="detectron2"):
        again = moved.annotation_scores("pretrain", dataset=train)
    np.testing.assert_array_equal(again["score"], first["score"])
    assert not messages(caplog)

    # the same file rewritten with other weights (same size, even the same modification time): scored again
    checkpoint = moved.phases["pretrain"].final_checkpoint
    stat = os.stat(checkpoint)
    write_checkpoint(checkpoint, value=1.0)
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.path.getsize(checkpoint) == stat.st_size
    scoring.fail = False
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detectron2"):
        rescored = moved.annotation_scores("pretrain", dataset=train)
    assert scoring.count == 2 and not np.array_equal(rescored["score"], first["score"])
    assert any("comes from another model" in m for m in messages(caplog))


def test_a_table_cached_with_the_former_path_identity_is_reused(tmp_path, toy, scoring):
    from ltdet2.utils.files import file_identity

    train, _ = toy
    context = scoring_context(tmp_path / "run")
    write_checkpoint(context.phases["pretrain"].final_checkpoint)
    identity = context.table_identity("pretrain", dataset=train)
    former = dict(identity, checkpoint=file_identity(context.phases["pretrain"].final_checkpoint))
    path = context.table_path("pretrain", dataset=train)
    save_score_table(path, fake_table(train, value=0.75), former)  # cached before the identity was by content
    scoring.fail = True
    table = context.annotation_scores("pretrain", dataset=train)
    assert np.all(table["score"] == 0.75)
    load_score_table(path, expect=identity)  # stored again with today's identity


# --- 2. a finished phase whose derived json was lost or damaged --------------------------------------------------


class RecordingModel(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))


@pytest.fixture
def fake_training(monkeypatch):
    """do_train saves a final checkpoint, do_test returns fixed results, evaluate_phase loads the test set."""
    evaluated = []

    def do_train(cfg, *, resume=False):
        model = instantiate(cfg.model)
        os.makedirs(cfg.train.output_dir, exist_ok=True)
        torch.save({"model": model.state_dict()}, os.path.join(cfg.train.output_dir, "model_final.pth"))
        return model

    def evaluate_phase(phase, checkpoint=None):
        names = phase.cfg.dataloader.test.dataset.names
        evaluated.append((phase.name, len(DatasetCatalog.get(names))))
        return {"bbox": {"AP": 2.0}}

    monkeypatch.setattr(phases_module, "do_train", do_train)
    monkeypatch.setattr(phases_module, "do_test", lambda cfg, model: {"bbox": {"AP": 1.0}})
    monkeypatch.setattr(phases_module, "evaluate_phase", evaluate_phase)
    return evaluated


def phase_config(train_name, test_name, builders):
    return dict(
        model=L(RecordingModel)(),
        dataloader=dict(
            train=dict(dataset=dict(names=train_name), mapper=L(ValidityDatasetMapper)(is_train=True)),
            test=dict(dataset=dict(names=test_name)),
            evaluator=dict(),
        ),
        optimizer=dict(),
        lr_multiplier=dict(),
        train=dict(init_checkpoint="", seed=7, derived_datasets=builders),
    )


def lst_project(output_dir, toy):
    train, val = toy

    def lst_phase(t):
        name = f"{PREFIX}lst_phase{t}"
        builder = L(IncrementalPhaseBuilder)(
            name=name, source=train, source_val=val, base=2, num_phases=1, phase=t, seed=0
        )
        return phase_config(name, f"{name}_val", [builder])

    phases = {"base": lst_phase(0), "inc": lst_phase(1)}
    return OmegaConf.create({"train": {"output_dir": str(output_dir)}, "phases": phases})


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def test_a_finished_phases_lost_or_damaged_phase_set_is_rebuilt(tmp_path, toy, fake_training, caplog, monkeypatch):
    run = tmp_path / "lst"
    run_phases(lst_project(run, toy))
    base_train = str(run / "base" / f"{PREFIX}lst_phase0.json")
    inc_val = str(run / "inc" / f"{PREFIX}lst_phase1_val.json")
    written = {path: read_bytes(path) for path in (base_train, inc_val)}

    # lost (base's training set) and cut short (inc's val set): both phases finished, rebuilt, then skipped
    os.remove(base_train)
    with open(inc_val, "r+b") as f:
        f.truncate(len(written[inc_val]) - 40)
    with caplog.at_level(logging.WARNING):
        results = run_phases(lst_project(run, toy))
    assert results == {"base": {"bbox": {"AP": 1.0}}, "inc": {"bbox": {"AP": 1.0}}}
    assert {path: read_bytes(path) for path in written} == written  # the same sets, rebuilt
    warnings = messages(caplog)
    assert any(
        "phase 'base'" in m and f"derived dataset '{PREFIX}lst_phase0'" in m and base_train in m and "rebuilding" in m
        for m in warnings
    ), warnings
    assert any("phase 'inc'" in m and inc_val in m and "damaged" in m and "rebuilding" in m for m in warnings)

    # --eval-only of a finished phase whose test set (derived) was cut short: rebuilt, then evaluated
    with open(inc_val, "r+b") as f:
        f.truncate(100)
    results = run_phases(lst_project(run, toy), only="inc", eval_only=True)
    assert results == {"inc": {"bbox": {"AP": 2.0}}} and fake_training == [("inc", 3)]
    assert read_bytes(inc_val) == written[inc_val]

    # nothing wrong: a finished phase is skipped without parsing its derived jsons, nothing is rebuilt
    import ltdet2.data.derived as derived_module

    def no_parse(path, what="JSON"):
        raise AssertionError(f"{path} parsed while a finished phase was skipped")

    monkeypatch.setattr(derived_module, "read_json", no_parse)
    mtimes = {p: os.stat(p).st_mtime_ns for p in written}
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_phases(lst_project(run, toy))
    assert {p: os.stat(p).st_mtime_ns for p in written} == mtimes and not messages(caplog)


class SubsetBuilder:
    """A derived-dataset builder reading an earlier phase's final checkpoint (as ExemplarSetBuilder does): the
    source's first ``count`` annotations, the checkpoint's identity recorded."""

    def __init__(self, *, name, source, scores_from_phase, count=4):
        self.name, self.source, self.scores_from_phase, self.count = name, source, scores_from_phase, count

    def input_phases(self):
        return [self.scores_from_phase]

    def json_path(self, context):
        return os.path.join(context.output_dir, f"{self.name}.json")

    def prepare(self, context):
        from ltdet2.utils.files import file_identity

        checkpoint = context.phases[self.scores_from_phase].final_checkpoint
        build_derived_dataset(
            self.name,
            source=self.source,
            output_dir=context.output_dir,
            valid_annotation_ids=range(1, self.count + 1),
            inputs={"checkpoint": file_identity(checkpoint)},
        )

    def register(self, context):
        register_derived_dataset(self.name, self.json_path(context), source=self.source)


def subset_project(output_dir, toy):
    train, val = toy
    builder = L(SubsetBuilder)(name=f"{PREFIX}subset", source=train, scores_from_phase="pretrain")
    phases = {"pretrain": phase_config(train, val, []), "head": phase_config(f"{PREFIX}subset", val, [builder])}
    return OmegaConf.create({"train": {"output_dir": str(output_dir)}, "phases": phases})


def test_a_lost_set_that_cannot_be_rebuilt_names_what_is_missing(tmp_path, toy, fake_training, caplog):
    run = tmp_path / "subset"
    run_phases(subset_project(run, toy))
    subset = str(run / "head" / f"{PREFIX}subset.json")
    checkpoint = str(run / "pretrain" / "model_final.pth")
    written = read_bytes(subset)
    os.remove(subset)
    shutil.move(checkpoint, str(tmp_path / "kept.pth"))
    for eval_only in (False, True):
        with pytest.raises(
            FileNotFoundError,
            match=rf"phase 'head' has finished, but its derived dataset '{PREFIX}subset' cannot be registered: "
            rf"{subset} does not exist\. It cannot be rebuilt: .*needs phase 'pretrain''s final checkpoint "
            rf"{checkpoint}, which does not exist.*restore {subset}",
        ):
            run_phases(subset_project(run, toy), only="head", eval_only=eval_only)
    # its input back: rebuilt
    shutil.move(str(tmp_path / "kept.pth"), checkpoint)
    with caplog.at_level(logging.WARNING):
        assert run_phases(subset_project(run, toy), only="head") == {"head": {"bbox": {"AP": 1.0}}}
    assert read_bytes(subset) == written
    assert any(subset in m and "rebuilding" in m for m in messages(caplog))


# --- 3. an LST phase class without a training image --------------------------------------------------------------


def test_lst_phase_classes_without_images_are_warned_about_and_counted(tmp_path, toy, caplog):
    train, val = toy  # by instance count: big 12, k 9, n2 8, n1 4, one 1, ghost 0, shade 0

    def prepare(phase):
        builder = IncrementalPhaseBuilder(
            name=f"{PREFIX}empty_phase{phase}", source=train, source_val=val, base=2, num_phases=3, phase=phase, seed=0
        )
        context = SimpleNamespace(output_dir=str(tmp_path / f"p{phase}"), seed=0)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ltdet2.data.incremental"):
            builder.prepare(context)
        builder.register(context)
        return MetadataCatalog.get(builder.name), messages(caplog)

    # phases: [big, k], [n2, n1], [one, ghost], [shade]
    first, warnings = prepare(1)
    assert warnings == []
    metadata, warnings = prepare(2)
    assert len(warnings) == 1, warnings
    assert f"phase 2: 1 of its 2 new classes have no training image in {train}" in warnings[0]
    assert "'ghost' (category id 3)" in warnings[0]
    assert first.new_classes_without_images == [] and first.old_classes_without_replay == []
    assert metadata.new_classes_without_images == [{"id": 6, "source_id": 3, "name": "ghost"}]
    assert metadata.old_classes_without_replay == []
    # in the next phase ghost is old, with nothing to replay (no longer an error), and the new shade has no image
    metadata, warnings = prepare(3)
    assert len(warnings) == 2, warnings
    assert any(
        f"phase 3: 1 of its 6 old classes have no image in {train} to replay" in m and "'ghost' (category id 3)" in m
        for m in warnings
    )
    assert any("phase 3: 1 of its 1 new classes have no training image" in m and "'shade' (category id 6)" in m
               for m in warnings)  # fmt: skip
    assert metadata.old_classes_without_replay == [{"id": 6, "source_id": 3, "name": "ghost"}]
    assert metadata.new_classes_without_images == [{"id": 7, "source_id": 6, "name": "shade"}]
