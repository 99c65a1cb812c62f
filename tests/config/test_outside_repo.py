"""ltdet2's method helpers (ltdet2.config) and shipped configs (ltdet2.model_zoo) work outside the checkout: in a
process started in an empty folder, with no PYTHONPATH entry into the repository, the repository's top-level
``configs`` is not importable, a LOCE fine-tune model is built from ltdet2.config helpers on a model piece from the
model zoo, and ``get_config("loce.py")`` loads the LOCE project."""

import os

import pytest

from fixtures.models import ROOT
from fixtures.outside import run_outside

SCRIPT = r"""
import json
import os

from detectron2.config import instantiate

import ltdet2
from ltdet2 import model_zoo
from ltdet2.config.loce import LOCE_TRAINABLE, add_ebl, add_mfs
from ltdet2.data.lt_shapes import NUM_CLASSES

out = {"sys_path": __import__("sys").path, "ltdet2_dir": os.path.dirname(ltdet2.__file__)}
try:
    import configs  # noqa: F401

    out["configs"] = getattr(configs, "__path__", None) and list(configs.__path__)
except ImportError as e:
    out["configs"] = f"ImportError: {e}"

# (b) an LT-Shapes LOCE fine-tune model from ltdet2.config helpers on a model piece of the model zoo
model = model_zoo.get_config("configs/models/faster_rcnn_r18_fpn_small.py").model
model.roi_heads.num_classes = NUM_CLASSES
add_ebl(model)
add_mfs(model, capacity=2)  # a small memory: [C, 2, 128, 7, 7]
built = instantiate(model)
predictor = built.roi_heads.box_predictor
out["built"] = {
    "predictor": type(predictor).__name__,
    "num_classes": predictor.num_classes,
    "cls_score_rows": predictor.cls_score.weight.shape[0],
    "cls_loss": type(predictor.cls_loss).__name__,
    "feature_sources": [type(s).__name__ for s in built.roi_heads.feature_sources],
    "indicators": sorted(built.roi_heads.indicators.keys()),
}

# (c) the LOCE project, loaded by name
project_file = model_zoo.get_config_file("loce.py")
cfg = model_zoo.get_config("loce.py")
finetune = cfg.phases.finetune
finetune.model.roi_heads.feature_sources[0].capacity = 2
finetune_model = instantiate(finetune.model)
out["project"] = {
    "file": project_file,
    "keys": sorted(cfg.keys()),
    "phases": list(cfg.phases.keys()),
    "trainable": list(finetune.train.trainable),
    "loce_trainable": list(LOCE_TRAINABLE),
    "predictor": type(finetune_model.roi_heads.box_predictor).__name__,
    "cls_loss": type(finetune_model.roi_heads.box_predictor.cls_loss).__name__,
    "num_classes": finetune_model.roi_heads.num_classes,
}
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """What the script reports, run by this Python in an empty folder with the repository off PYTHONPATH."""
    return run_outside(SCRIPT, tmp_path_factory.mktemp("outside_repo"))


def test_the_repository_is_not_importable(outside):
    # the editable install maps the ltdet2 package alone: the repository itself is not on sys.path
    root = os.path.realpath(ROOT)
    assert all(os.path.realpath(p) != root for p in outside["sys_path"] if p), outside["sys_path"]
    assert outside["configs"].startswith("ImportError"), outside["configs"]


def test_a_loce_finetune_model_from_ltdet2_config_helpers(outside):
    assert outside["built"] == {
        "predictor": "LongTailOutputLayers",
        "num_classes": 72,
        "cls_score_rows": 73,
        "cls_loss": "EquilibriumLoss",
        "feature_sources": ["MemoryFeatureSampler"],
        "indicators": ["mean_score"],
    }


def test_the_loce_project_loads_by_name_from_the_package(outside):
    project = outside["project"]
    assert project["file"] == os.path.join(outside["ltdet2_dir"], "model_zoo", "configs", "projects", "loce.py")
    assert project["keys"] == ["phases", "train"]
    assert project["phases"] == ["pretrain", "finetune"]
    assert project["trainable"] == project["loce_trainable"]
    assert (project["predictor"], project["cls_loss"], project["num_classes"]) == (
        "LongTailOutputLayers",
        "EquilibriumLoss",
        72,
    )
