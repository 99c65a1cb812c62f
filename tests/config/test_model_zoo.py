"""ltdet2.model_zoo: names resolve to the shipped projects/ and configs/ from any working directory, every project of
the repository is shipped, and unknown names, paths leading outside and ``trained=True`` are refused clearly."""

import glob
import os

import pytest

from ltdet2 import model_zoo

from fixtures.models import ROOT


def test_every_repository_config_is_shipped_under_its_name():
    """The projects by their bare names, then every LazyConfig (.py) and YAML file of configs/."""
    projects = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "projects", "*.py")))
    pieces = sorted(
        os.path.relpath(p, ROOT).replace(os.sep, "/")
        for ext in ("py", "yaml", "yml")
        for p in glob.glob(os.path.join(ROOT, "configs", "**", f"*.{ext}"), recursive=True)
    )
    assert model_zoo.list_configs() == projects + pieces
    for name in projects:
        assert os.path.samefile(model_zoo.get_config_file(name), os.path.join(ROOT, "projects", name))
        assert model_zoo.get_config_file(name) == model_zoo.get_config_file(f"projects/{name}")


def test_get_config_loads_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = model_zoo.get_config("lst.py")
    assert sorted(cfg) == ["phases", "train"]
    assert list(cfg.phases) == ["base", "incremental_1", "incremental_2", "incremental_3"]
    model = model_zoo.get_config("configs/models/mask_rcnn_r18_fpn_small.py")
    assert sorted(model) == ["model"] and model.model.backbone.out_channels == 128


@pytest.mark.parametrize(
    "name, hint",
    [
        ("loce", "Did you mean 'loce.py'?"),
        ("projects/loce", "Did you mean"),
        ("configs/models/mask_rcnn_r50.py", "Did you mean 'configs/models/mask_rcnn_r50_fpn.py'"),
        ("nothing_like_it.py", "Available: bacl.py,"),
        ("../pyproject.toml", "Available:"),
        ("projects/../../README.md", "Available:"),
        ("configs/../../ltdet2/__init__.py", "Available:"),
    ],
)
def test_unknown_names_are_refused_with_the_closest_and_the_available_ones(name, hint):
    with pytest.raises(FileNotFoundError, match="is not a config shipped with ltdet2") as error:
        model_zoo.get_config(name)
    assert hint in str(error.value)
    assert "loce.py" in str(error.value) and "configs/models/faster_rcnn_r18_fpn_small.py" in str(error.value)


def test_no_trained_weights_are_hosted():
    with pytest.raises(NotImplementedError, match="hosts no trained checkpoints"):
        model_zoo.get_config("loce.py", trained=True)
    with pytest.raises(FileNotFoundError):  # the name is checked first
        model_zoo.get_config("locee.py", trained=True)
