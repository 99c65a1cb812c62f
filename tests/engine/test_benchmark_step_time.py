"""scripts/benchmark_step_time.py's results file: medians, ratio and what it records (the timing itself needs a
quiet machine and is not tested)."""

import pytest

from fixtures.models import load_repo_module


def test_step_time_result_holds_the_medians_their_ratio_and_the_step_times(monkeypatch):
    script = load_repo_module("scripts/benchmark_step_time.py")
    monkeypatch.setattr(script.sys, "argv", ["benchmark_step_time.py", "--config-file", "p.py", "--rounds", "2"])
    result = script.step_time_result(
        [0.2, 0.1, 0.3], [0.45, 0.15, 0.3, 0.25], baseline_phase="ce", method_phase="loce", settings={"rounds": 2}
    )
    assert result["baseline"] == {"phase": "ce", "median_ms": 200.0, "step_s": [0.2, 0.1, 0.3]}
    assert result["method"]["median_ms"] == 275.0 and result["ratio"] == 0.275 / 0.2
    assert result["command"] == "scripts/benchmark_step_time.py --config-file p.py --rounds 2"
    assert result["settings"] == {"rounds": 2} and "cores" in result["machine"] and "commit" in result
    assert result["first_step_losses"] is None  # not given here; main() records both sides' first-step losses


def test_two_detectors_share_no_checkpoint(monkeypatch, capsys):
    script = load_repo_module("scripts/benchmark_step_time.py")
    argv = ["benchmark_step_time.py", "--config-file", "projects/deformable_detr.py"]
    argv += ["--baseline-config-file", "projects/baseline.py", "--checkpoint", "model_final.pth"]
    monkeypatch.setattr(script.sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        script.main()
    assert exit_.value.code == 2
    assert "share no weights" in capsys.readouterr().err
