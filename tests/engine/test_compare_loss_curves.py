"""scripts/compare_loss_curves.py: where two trainings' logged losses part, from their metrics.json."""

import json

import pytest

from fixtures.models import load_repo_module


def write_metrics(folder, losses):
    """A phase folder whose metrics.json logs ``losses`` ({iteration: (total_loss, loss_cls)}) and a row without
    losses (as Detectron2 writes for evaluation results)."""
    folder.mkdir()
    with open(folder / "metrics.json", "w") as f:
        for iteration, (total, cls) in losses.items():
            f.write(json.dumps({"iteration": iteration, "total_loss": total, "loss_cls": cls, "lr": 0.02}) + "\n")
        f.write(json.dumps({"iteration": max(losses), "bbox/AP": 12.0}) + "\n")
    return str(folder)


def test_first_differing_iteration_and_the_largest_relative_difference(tmp_path):
    script = load_repo_module("scripts/compare_loss_curves.py")
    reference = write_metrics(tmp_path / "a", {0: (4.0, 3.0), 1: (3.0, 2.0), 2: (2.0, 1.0)})
    same = write_metrics(tmp_path / "b", {0: (4.0, 3.0), 1: (3.0, 2.0), 2: (2.0, 1.0), 3: (1.0, 0.5)})
    parted = write_metrics(tmp_path / "c", {0: (4.0, 3.0), 1: (3.0, 2.5), 2: (2.5, 1.0)})
    output = tmp_path / "out.json"
    result = script.main(
        ["--runs", f"a={reference}", f"b={same}", f"c={parted}", "--reference", "a", "--output", str(output)]
    )
    assert json.loads(output.read_text()) == result
    b, c = result["comparisons"]["b"], result["comparisons"]["c"]
    assert b["iterations"] == [0, 2] and b["first_differing_iteration"] is None  # iteration 3: only b logged it
    assert b["max_relative_total_loss_difference"] == 0.0
    assert c["first_differing_iteration"] == 1  # loss_cls parts first, total_loss equal there
    assert c["at_first_difference"] == {"loss_cls": [2.0, 2.5], "total_loss": [3.0, 3.0]}
    assert c["max_relative_total_loss_difference"] == pytest.approx(0.25)  # 2.5 against 2.0 at iteration 2
    assert c["final_total_loss"] == [2.0, 2.5]


def test_a_folder_without_losses_or_an_unknown_reference_is_refused(tmp_path):
    script = load_repo_module("scripts/compare_loss_curves.py")
    with pytest.raises(FileNotFoundError, match="no metrics.json in the phase folder"):
        script.main(["--runs", f"a={tmp_path}", "--reference", "a"])
    (tmp_path / "metrics.json").write_text('{"iteration": 0, "bbox/AP": 1.0}\n')
    with pytest.raises(ValueError, match="no row with total_loss"):
        script.main(["--runs", f"a={tmp_path}", "--reference", "a"])
    with pytest.raises(SystemExit):
        script.main(["--runs", f"a={tmp_path}", "--reference", "b"])
