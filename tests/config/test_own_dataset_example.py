"""docs/examples/own_dataset.py is copyable: moved to another folder with its data next to it and loaded from a third
working directory, outside the repository, it registers its two datasets from its own folder."""

import json
import os
import shutil
import subprocess
import sys

from fixtures.models import ROOT
from fixtures.outside import run_outside

SCRIPT = r"""
import json

from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog, MetadataCatalog

cfg = LazyConfig.load({config!r})
train = DatasetCatalog.get(cfg.dataloader.train.dataset.names)
print("RESULT " + json.dumps({{
    "train_name": cfg.dataloader.train.dataset.names,
    "test_name": cfg.dataloader.test.dataset.names,
    "num_classes": cfg.model.roi_heads.num_classes,
    "train_images": len(train),
    "image_root": MetadataCatalog.get(cfg.dataloader.train.dataset.names).image_root,
    "files_exist": all(__import__("os").path.isfile(r["file_name"]) for r in train[:20]),
}}))
"""


def test_own_dataset_example_runs_from_a_copy(tmp_path):
    copy = tmp_path / "my_project"
    copy.mkdir()
    shutil.copy(os.path.join(ROOT, "docs", "examples", "own_dataset.py"), copy / "own_dataset.py")
    subset = copy / "lt_shapes_subset"
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "make_lt_shapes_subset.py"), "--out", str(subset)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_outside(SCRIPT.format(config=str(copy / "own_dataset.py")), elsewhere)
    with open(subset / "train.json") as f:
        expected_images = len(json.load(f)["images"])
    assert result == {
        "train_name": "shapes_subset_train",
        "test_name": "shapes_subset_val",
        "num_classes": 24,
        "train_images": expected_images,
        "image_root": str(subset),
        "files_exist": True,
    }
