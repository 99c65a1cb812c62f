"""User mistakes get one line with a suggestion, before the model is built (issue #28): a misspelt dataset name (the
closest registered names), a COCO-format json given to the LVIS evaluator (register it with
register_lvis_format_dataset), and a YAML (yacs) config given to the LazyConfig training script (scripts/train_net.py).
Tiny LT-Shapes; nothing trains."""

import itertools
import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from ltdet2.data import register_lvis_format_dataset
from ltdet2.data.datasets import derived_source
from ltdet2.engine import phases as phases_module
from ltdet2.engine import train_loop
from ltdet2.engine.epochs import resolve_epoch_schedule
from ltdet2.engine.phase_checks import check_lvis_evaluator_dataset
from ltdet2.engine.phases import Phase, load_config, run_phases
from ltdet2.evaluation import COCOFormatGroundTruth, LTLVISEvaluator
from ltdet2.evaluation.lvis_evaluation import LVIS_GROUND_TRUTH_FIELDS, evaluate_lvis

from fixtures.models import ROOT, load_repo_module
from fixtures.runs import load_tiny_run

SCRIPT = os.path.join(ROOT, "scripts", "lazyconfig_train_net.py")
_names = itertools.count()


@pytest.fixture
def no_model(monkeypatch):
    """Building a model fails the test: the mistakes are found before."""
    monkeypatch.setattr(train_loop, "build_model", lambda cfg: pytest.fail("the model was built"))
    monkeypatch.setattr(phases_module, "build_model", lambda cfg: pytest.fail("the model was built"))


# --- a misspelt dataset name ------------------------------------------------------------------------------------


def test_a_misspelt_training_set_is_refused_with_the_closest_name_before_the_model_is_built(
    tiny_dataset, tmp_path, no_model
):
    train_name, _ = tiny_dataset
    misspelt = train_name.replace("train", "trian")
    out = tmp_path / "run"
    with pytest.raises(ValueError) as raised:
        run_phases(load_tiny_run(out, tiny_dataset, f"dataloader.train.dataset.names={misspelt}"), only="pretrain")
    message = str(raised.value)
    assert message == (
        f"training in {out / 'pretrain'}: dataloader.train.dataset.names: dataset {misspelt!r} is not registered; "
        f"did you mean {train_name!r}? Detectron2 registers its built-in datasets (lvis_v1_val, coco_2017_train, ...) "
        f"and ltdet2 LT-Shapes (lt_shapes_train, lt_shapes_val) on import; register your own with "
        f"ltdet2.data.register_lvis_format_dataset(name, json_file, image_root) before the run (e.g. in the config "
        f"file)"
    )
    assert "\n" not in message
    assert not list((out / "pretrain").glob("model_*.pth"))


def test_a_misspelt_test_set_is_refused_before_an_evaluation_only_builds_the_model(tiny_dataset, tmp_path, no_model):
    _, val_name = tiny_dataset
    misspelt = val_name + "l"
    checkpoint = tmp_path / "model.pth"
    checkpoint.touch()
    cfg = load_tiny_run(tmp_path / "run", tiny_dataset, f"dataloader.test.dataset.names={misspelt}", evaluator=True)
    with pytest.raises(
        ValueError,
        match=rf"^phase 'pretrain': dataloader.test.dataset.names: dataset '{misspelt}' is not registered; did you "
        rf"mean '{val_name}'\? Detectron2 registers",
    ):
        run_phases(cfg, only="pretrain", eval_only=True, eval_checkpoint=str(checkpoint))


def test_a_misspelt_training_set_of_a_length_in_epochs_is_named(tiny_dataset):
    train_name, _ = tiny_dataset
    cfg = OmegaConf.create(
        {
            "train": {"epochs": 1, "max_iter": None},
            "dataloader": {"train": {"dataset": {"names": [train_name, "lt_shapes_e2e_tarin"]}, "total_batch_size": 2}},
        }
    )
    with pytest.raises(ValueError, match=r"^phase 'x': .*'lt_shapes_e2e_tarin' is not registered; did you mean "):
        resolve_epoch_schedule(cfg, "phase 'x'")


def test_a_name_close_to_none_and_a_derived_datasets_source_are_named_too(tiny_dataset):
    train_name, _ = tiny_dataset
    cfg = OmegaConf.create({"dataloader": {"train": {"dataset": {"names": "zzqqxx"}}}})
    with pytest.raises(ValueError, match=r"'zzqqxx' is not registered \(no registered name is close to it\)\. Detec"):
        train_loop.check_dataset_names(cfg)
    with pytest.raises(
        ValueError, match=rf"dataset 'lt_shapes_e2e_trian' is not registered; did you mean '{train_name}'"
    ):
        derived_source("lt_shapes_e2e_trian")


# --- a COCO json given to the LVIS evaluator -----------------------------------------------------------------------


@pytest.fixture
def coco_json(tiny_dataset, tmp_path):
    """The tiny validation set as a COCO-format json (its LVIS fields removed), and its image root."""
    _, val_name = tiny_dataset
    DatasetCatalog.get(val_name)  # made on first use
    metadata = MetadataCatalog.get(val_name)
    with open(metadata.json_file) as f:
        data = json.load(f)
    strip = set(LVIS_GROUND_TRUTH_FIELDS) | {"image_count", "instance_count"}
    for key in ("images", "categories"):
        data[key] = [{k: v for k, v in entry.items() if k not in strip} for entry in data[key]]
    path = tmp_path / "coco_val.json"
    path.write_text(json.dumps(data))
    return str(path), metadata.image_root


@pytest.fixture
def coco_registered(coco_json):
    """The COCO json registered by Detectron2's register_coco_instances (evaluator_type "coco")."""
    name = f"ltdet2_tests_coco_val_{next(_names)}"
    register_coco_instances(name, {}, *coco_json)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


COCO_ADVICE = (
    r"is a COCO-format file, not LVIS \(no image has neg_category_ids / not_exhaustive_category_ids, no category a "
    r"frequency\): register it with ltdet2.data.register_lvis_format_dataset\(name, json_file, image_root\), which "
    r"evaluates a COCO file as exhaustively annotated, and evaluate that name \(LTLVISEvaluator\(dataset_name=name\); "
    r"evaluate_lvis takes ltdet2.data.evaluation_ground_truth\(name\)\), or use Detectron2's COCOEvaluator for COCO "
    r"metrics$"
)


def test_a_coco_json_given_to_evaluate_lvis_says_how_to_evaluate_it(coco_json):
    path, _ = coco_json
    with pytest.raises(COCOFormatGroundTruth, match=rf"^LVIS ground truth {path} {COCO_ADVICE}"):
        evaluate_lvis(path, [])


def test_a_coco_dataset_given_to_the_lvis_evaluator_says_how_to_evaluate_it(coco_registered, coco_json):
    with pytest.raises(
        COCOFormatGroundTruth,
        match=rf"^LTLVISEvaluator\(dataset_name='{coco_registered}'\): its json_file {coco_json[0]} {COCO_ADVICE}",
    ):
        LTLVISEvaluator(coco_registered)


def test_a_coco_test_set_of_the_lvis_evaluator_is_refused_before_training(
    coco_registered, coco_json, tiny_dataset, tmp_path, monkeypatch
):
    monkeypatch.setattr(phases_module, "do_train", lambda *a, **k: pytest.fail("trained"))
    cfg = load_tiny_run(
        tmp_path / "run", tiny_dataset, f"dataloader.test.dataset.names={coco_registered}", evaluator=True
    )
    with pytest.raises(
        ValueError,
        match=rf"^phase 'pretrain': dataloader.evaluator \(LTLVISEvaluator\) evaluates dataset '{coco_registered}', "
        rf"whose json_file {coco_json[0]} {COCO_ADVICE}",
    ):
        run_phases(cfg)
    assert not (tmp_path / "run" / "pretrain").exists()


def test_the_same_file_registered_by_register_lvis_format_dataset_is_evaluated(coco_json, tiny_dataset, tmp_path):
    name = register_lvis_format_dataset(f"ltdet2_tests_coco_as_lvis_{next(_names)}", *coco_json)
    try:
        cfg = load_tiny_run(tmp_path / "run", tiny_dataset, f"dataloader.test.dataset.names={name}", evaluator=True)
        phase = Phase("pretrain", cfg.phases.pretrain, str(tmp_path / "run" / "pretrain"))
        check_lvis_evaluator_dataset(phase)  # passes
        evaluator = LTLVISEvaluator(name)  # a COCO file completed as exhaustively annotated
        assert len(evaluator._lvis_api.imgs) == len(DatasetCatalog.get(name))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# --- a YAML (yacs) config given to the LazyConfig script -----------------------------------------------------------


YACS = "_BASE_: ../Base-RCNN-FPN.yaml\nMODEL:\n  WEIGHTS: model.pkl\n  MASK_ON: false\nSOLVER:\n  BASE_LR: 0.02\n"


def test_a_yacs_config_stops_the_lazyconfig_script_in_one_line(tmp_path, capsys):
    path = tmp_path / "faster_rcnn.yaml"
    path.write_text(YACS)
    expected = (
        f"{path} is a YAML (yacs) config (top-level keys _BASE_, MODEL, SOLVER), not a LazyConfig: "
        f"scripts/lazyconfig_train_net.py trains LazyConfigs (a .py file, or the config.yaml a LazyConfig run saved); "
        f"train it with scripts/train_net.py --config-file {path}"
    )
    script = load_repo_module("scripts/lazyconfig_train_net.py")
    with pytest.raises(SystemExit) as exited:
        script.parse_args(["--config-file", str(path), "--resume"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"lazyconfig_train_net.py: error: {expected}\n"
    with pytest.raises(ValueError) as raised:
        load_config(str(path))
    assert str(raised.value) == expected


def test_the_lazyconfig_script_refuses_a_yacs_config_before_anything_starts(tmp_path):
    path = tmp_path / "retinanet.yml"
    path.write_text("MODEL:\n  META_ARCHITECTURE: RetinaNet\nOUTPUT_DIR: ./out\n")
    done = subprocess.run(
        [sys.executable, SCRIPT, "--config-file", str(path)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert errors == [
        f"lazyconfig_train_net.py: error: {path} is a YAML (yacs) config (top-level keys MODEL, OUTPUT_DIR), not a "
        f"LazyConfig: scripts/lazyconfig_train_net.py trains LazyConfigs (a .py file, or the config.yaml a LazyConfig "
        f"run saved); train it with scripts/train_net.py --config-file {path}"
    ]
    assert not (tmp_path / "out").exists()


def test_a_lazyconfig_yaml_dump_still_loads(tiny_dataset, tmp_path):
    phase = load_tiny_run(tmp_path / "run", tiny_dataset).phases.pretrain
    path = str(tmp_path / "config.yaml")
    LazyConfig.save(phase, path)  # what every run saves in its folder
    cfg = load_config(path, ["train.max_iter=7"])
    assert cfg.train.max_iter == 7 and cfg.dataloader.train.dataset.names == tiny_dataset[0]
