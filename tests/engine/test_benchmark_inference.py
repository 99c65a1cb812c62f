"""scripts/benchmark_inference.py: JSON fields, identical detections for identical models, the weights it
picks, the test-time limits it sets, and the weight check."""

import json
import os

import pytest
import torch
from torch import nn

from detectron2.config import instantiate

from ltdet2.engine.phases import load_config

from fixtures.models import ROOT, load_repo_module, loce_tiny_overrides

SCRIPT = os.path.join(ROOT, "scripts", "benchmark_inference.py")
LOCE = os.path.join(ROOT, "projects", "loce.py")


@pytest.fixture(scope="module")
def script():
    return load_repo_module("scripts/benchmark_inference.py")


def _run(script, overrides, output, method_phase, *flags, rounds=2, warmup=1):
    argv = [
        *("--baseline-config", LOCE, "--baseline-phase", "pretrain"),
        *("--method-config", LOCE, "--method-phase", method_phase),
        *(
            "--num-images",
            "2",
            "--rounds",
            str(rounds),
            "--warmup",
            str(warmup),
            "--device",
            "cpu",
            "--output",
            str(output),
        ),
        *flags,
        *overrides,
    ]
    result = script.main(argv)
    with open(output) as f:
        assert json.load(f) == json.loads(json.dumps(result))
    return result


def test_identical_configs_give_identical_detections(script, tmp_path, tiny_dataset):
    overrides = loce_tiny_overrides(tiny_dataset, str(tmp_path / "run"))
    result = _run(script, overrides, tmp_path / "same.json", "pretrain")
    for part in ("baseline", "method"):
        assert result[part]["config"] == LOCE and result[part]["phase"] == "pretrain"
        assert result[part]["ms_per_image_median"] > 0
        assert result[part]["images_per_second"] == pytest.approx(1000 / result[part]["ms_per_image_mean"])
    assert result["ratio"] == pytest.approx(
        result["method"]["ms_per_image_mean"] / result["baseline"]["ms_per_image_mean"]
    )
    assert result["same_detections"] is True
    assert result["baseline"]["detections_per_image"] == result["method"]["detections_per_image"] == 300
    settings = result["settings"]
    assert settings["weights"].startswith("random initialisation (seed 0)")
    assert (settings["num_images"], settings["rounds"], settings["warmup"]) == (2, 2, 1)
    assert (settings["score_threshold"], settings["detections_per_image"], settings["device"]) == (1e-4, 300, "cpu")
    assert settings["machine"].startswith(f"{os.cpu_count()} ") and settings["commit"]  # where and at what commit
    assert len(settings["load_avg"]) == 3 and all(load >= 0 for load in settings["load_avg"])


def test_method_phase_final_checkpoint_is_the_default_weights(script, tmp_path, tiny_dataset):
    """LOCE's fine-tune scores with a softmax as its pretrain: same weights give the same detections."""
    overrides = loce_tiny_overrides(tiny_dataset, str(tmp_path / "run"))
    finetune = load_config(LOCE, overrides).phases.finetune
    torch.manual_seed(5)
    checkpoint = tmp_path / "run" / "finetune" / "model_final.pth"
    os.makedirs(checkpoint.parent)
    torch.save({"model": instantiate(finetune.model).state_dict()}, checkpoint)
    result = _run(
        script, overrides, tmp_path / "ft.json", "finetune", "--detections-per-image", "5", rounds=1, warmup=0
    )
    assert result["settings"]["weights"] == str(checkpoint)
    assert result["same_detections"] is True
    assert result["baseline"]["detections_per_image"] == result["method"]["detections_per_image"] == 5


def test_weight_check_names_parameters_and_allows_buffers_of_one_model(script):
    torch.manual_seed(0)
    baseline = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    method = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    method.load_state_dict(baseline.state_dict())
    method.register_buffer("memory", torch.zeros(4))
    assert script.check_same_weights(baseline, method) == ["memory"]

    method.extra = nn.Linear(1, 1)
    with torch.no_grad():
        method[0].bias += 1
    with pytest.raises(ValueError, match=r"unexpected in the method's model: \['extra.bias', 'extra.weight'\]"):
        script.check_same_weights(baseline, method)
    with pytest.raises(ValueError, match=r"other shapes or values: \['0.bias'\]"):
        script.check_same_weights(baseline, method)
    with pytest.raises(ValueError, match=r"missing in the method's model: \['extra.bias', 'extra.weight'\]"):
        script.check_same_weights(method, baseline)


def test_test_limits_need_a_detectron2_predictor(script):
    with pytest.raises(ValueError, match="where.py: no module with"):
        script.set_test_limits(nn.Linear(2, 2), 1e-4, 300, "where.py")


def test_a_config_with_phases_needs_one_named(script):
    with pytest.raises(ValueError, match=r"has phases \['pretrain', 'finetune'\]: name one with --\*-phase"):
        script.load_phase(LOCE, None, [])
    with pytest.raises(ValueError, match="--phase 'nope'"):
        script.load_phase(LOCE, "nope", [])
