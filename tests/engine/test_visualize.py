"""scripts/visualize.py on the tiny LT-Shapes with a saved random model: files and image sizes, side-by-side
panels, folder input, the choice of images holding rare classes, and the errors it names."""

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog

from ltdet2.engine.phases import load_config

from fixtures.models import ROOT, TINY_LT_SHAPES, load_repo_module, tiny_run_overrides

BASELINE = os.path.join(ROOT, "projects", "baseline.py")
SIZE = TINY_LT_SHAPES.image_size  # 64
SCALE = 2  # panels of 128 x 128 under a 16 px label strip (9% of 128 is less than its 16 px minimum)
PANEL, HEADER = SIZE * SCALE, 16


@pytest.fixture(scope="module")
def script():
    return load_repo_module("scripts/visualize.py")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_dataset):
    """(overrides, checkpoint): the baseline project on the tiny LT-Shapes and a saved seeded random model."""
    folder = tmp_path_factory.mktemp("visualize")
    overrides = tiny_run_overrides(tiny_dataset, str(folder / "run"))
    torch.manual_seed(0)
    checkpoint = folder / "random.pth"
    torch.save({"model": instantiate(load_config(BASELINE, overrides).model).state_dict()}, checkpoint)
    return overrides, str(checkpoint)


def _main(script, run, output, *flags):
    overrides, checkpoint = run
    argv = ["--config-file", BASELINE, "--checkpoint", checkpoint, "--output", str(output), "--device", "cpu"]
    return script.main(
        [*argv, "--scale", str(SCALE), "--score-threshold", "0", "--max-detections", "3", *flags, *overrides]
    )


def _size(path):
    with Image.open(path) as image:
        return image.size  # (width, height)


def test_dataset_images_get_ground_truth_and_predictions(script, run, tmp_path, tiny_dataset):
    written = _main(script, run, tmp_path, "--num-images", "3", "--seed", "1")
    val = DatasetCatalog.get(tiny_dataset[1])
    assert len(written) == 3 and sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in written)
    names = {os.path.splitext(os.path.basename(r["file_name"]))[0] + ".png" for r in val}
    assert {os.path.basename(p) for p in written} <= names
    for path in written:
        assert _size(path) == (2 * PANEL, HEADER + PANEL)  # [ground truth | model]
    assert _main(script, run, tmp_path / "again", "--num-images", "3", "--seed", "1") == [
        str(tmp_path / "again" / os.path.basename(p)) for p in written
    ]  # the same seed draws the same images


def test_side_by_side_has_one_panel_per_model_and_the_ground_truth(script, run, tmp_path):
    _, checkpoint = run
    compare = f"{BASELINE}:{checkpoint}"
    written = _main(
        script,
        run,
        tmp_path,
        "--num-images",
        "1",
        "--compare",
        compare,
        "--compare",
        compare,
        "--label",
        "a",
        "--label",
        "b",
        "--label",
        "c",
    )
    assert _size(written[0]) == (4 * PANEL, HEADER + PANEL)
    with Image.open(written[0]) as image:
        pixels = np.asarray(image.convert("RGB"))
    # the three models have the same weights: their panels are identical, the ground truth's is not
    model_panels = [pixels[HEADER:, k * PANEL : (k + 1) * PANEL] for k in (1, 2, 3)]
    assert np.array_equal(model_panels[0], model_panels[1]) and np.array_equal(model_panels[0], model_panels[2])
    assert not np.array_equal(pixels[HEADER:, :PANEL], model_panels[0])


def test_folder_images_get_predictions_only(script, run, tmp_path, tiny_dataset):
    folder = tmp_path / "images"
    folder.mkdir()
    for record in DatasetCatalog.get(tiny_dataset[1])[:2]:
        shutil.copy(record["file_name"], folder)
    (folder / "notes.txt").write_text("not an image")
    written = _main(script, run, tmp_path / "out", "--input", str(folder))
    assert sorted(os.path.basename(p) for p in written) == sorted(f for f in os.listdir(folder) if f.endswith(".png"))
    assert all(_size(p) == (PANEL, HEADER + PANEL) for p in written)


def test_rare_classes_pick_only_images_holding_them(script, tiny_dataset):
    train = tiny_dataset[0]
    names = list(MetadataCatalog.get(train).thing_classes)
    frequency = script.frequency_groups(train)
    rare = script.selected_classes(["rare"], names, frequency, train)
    assert rare == set(np.flatnonzero(frequency == "r").tolist()) and 0 < len(rare) < len(names)
    records = DatasetCatalog.get(train)
    holding = [r["image_id"] for r in records if any(a["category_id"] in rare for a in r["annotations"])]
    assert 0 < len(holding) < len(records)
    chosen = script.dataset_records(train, 1000, 0, rare)
    assert [r["image_id"] for r in chosen] == holding  # all of them, in dataset order
    assert [r["image_id"] for r in script.dataset_records(train, 3, 5, rare)] == [
        r["image_id"] for r in script.dataset_records(train, 3, 5, rare)
    ]
    assert len(script.dataset_records(train, 3, 5, rare)) == 3
    named = script.selected_classes([names[1], "common"], names, frequency, train)
    assert named == {1} | set(np.flatnonzero(frequency == "c").tolist())


def test_rare_marker_leads_the_label(script):
    """A label runs past the panel's right edge for a box near it: the rare marker comes first to stay visible."""
    style = script.Style(["circle", "star"], np.array(["f", "r"]), scale=1.0)
    assert style.labels([1, 0], [0.5, 0.25]) == ["(r) star 50%", "circle 25%"]


def test_errors_name_what_is_wrong(script, run, tmp_path, tiny_dataset):
    with pytest.raises(FileNotFoundError, match="baseline: checkpoint .*nope.pth is not a file"):
        script.main(["--config-file", BASELINE, "--checkpoint", str(tmp_path / "nope.pth"), "--output", str(tmp_path)])
    with pytest.raises(KeyError, match="dataset 'no_such_set' is not registered"):
        _main(script, run, tmp_path, "--dataset", "no_such_set")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="--input .*empty: no image file"):
        _main(script, run, tmp_path, "--input", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="--classes 'purple_cube': not a frequency group"):
        _main(script, run, tmp_path, "--classes", "purple_cube")
    with pytest.raises(ValueError, match="CONFIG:CHECKPOINT or CONFIG:PHASE:CHECKPOINT"):
        script.ModelSpec.parse("projects/baseline.py")
    with pytest.raises(ValueError, match=r"has phases \['pretrain', 'finetune'\]: name one"):
        script.load_model(script.ModelSpec(os.path.join(ROOT, "projects", "loce.py"), None, None), [], "cpu")
