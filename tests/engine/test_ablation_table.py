"""scripts/ablation_table.py: ``--phases`` runs and collects a subset of a project's phases, and a later run adds
its phases to a seed's results file (no training here: the phases' records are written by hand)."""

import json
import os
import sys

import pytest

from ltdet2.utils.json_io import read_json

from fixtures.models import ROOT, load_repo_module

PROJECT = os.path.join(ROOT, "tests", "configs", "tiny_two_phase.py")


@pytest.fixture(scope="module")
def script():
    return load_repo_module("scripts/ablation_table.py")


def finish(output_dir, phase, ap):
    folder = os.path.join(output_dir, "seed0", phase)
    os.makedirs(folder)
    metrics = {"AP": ap, "AP50": ap, "APr": 1.0, "APc": 2.0, "APf": 3.0}
    with open(os.path.join(folder, "phase_done.json"), "w") as f:
        json.dump({"results": {"bbox": metrics}}, f)


def run(script, monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["ablation_table.py", "--config-file", PROJECT, "--seeds", "0", *args])
    script.main()


def test_phases_subset_then_the_rest_is_added_to_the_results_file(script, tmp_path, monkeypatch, capsys):
    output_dir, results_dir = str(tmp_path / "out"), str(tmp_path / "results")
    common = ["--output-dir", output_dir, "--results-dir", results_dir, "--no-run"]
    finish(output_dir, "pretrain", 10.0)
    run(script, monkeypatch, *common, "--phases", "pretrain")
    record = read_json(os.path.join(results_dir, "seed0.json"))
    assert list(record["phases"]) == ["pretrain"] and record["phases"]["pretrain"]["bbox"]["AP"] == 10.0
    assert "--phases pretrain" in record["command"]

    finish(output_dir, "finetune", 20.0)
    run(script, monkeypatch, *common, "--phases", "finetune")
    record = read_json(os.path.join(results_dir, "seed0.json"))
    assert [(name, p["bbox"]["AP"]) for name, p in record["phases"].items()] == [("pretrain", 10.0), ("finetune", 20.0)]
    assert "--phases" not in record["command"]  # every phase: the plain command reproduces it

    capsys.readouterr()
    run(script, monkeypatch, *common)  # every phase is in the file: nothing to collect
    assert "holds ['pretrain', 'finetune'], not run again" in capsys.readouterr().out

    with pytest.raises(ValueError, match=r"--phases \['distil'\]: .* has phases \['pretrain', 'finetune'\]"):
        run(script, monkeypatch, *common, "--phases", "distil")


def test_recorded_command_with_overrides_and_phases_parses_back(script, tmp_path, monkeypatch):
    output_dir, results_dir = str(tmp_path / "out"), str(tmp_path / "results")
    finish(output_dir, "pretrain", 10.0)
    override = "phases.pretrain.train.max_iter=8"
    run(
        script,
        monkeypatch,
        "--output-dir",
        output_dir,
        "--results-dir",
        results_dir,
        "--no-run",
        override,
        "--phases",
        "pretrain",
    )
    command = read_json(os.path.join(results_dir, "seed0.json"))["command"].split()
    parsed = []
    monkeypatch.setattr(script, "run_seed", lambda *args: parsed.append(args))
    monkeypatch.setattr(sys, "argv", [command[0], *command[1:], "--output-dir", str(tmp_path / "again")])
    with pytest.raises(FileNotFoundError):  # nothing trained there: the parse is what this test checks
        script.main()
    ((_config, _seed, _seed_dir, overrides, phases),) = parsed
    assert list(overrides) == [override] and phases == ["pretrain"]

    # the order that argparse cannot read (overrides after --phases) is named in the error
    with pytest.raises(ValueError, match=r"config overrides go before --phases"):
        run(script, monkeypatch, "--output-dir", output_dir, "--no-run", "--phases", "pretrain", override)


def test_from_results_paired_table_has_the_intervals_and_holm_note(script, tmp_path, monkeypatch, capsys):
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    for seed, gain in enumerate((1.0, 2.0, 3.0)):  # finetune - pretrain AP: +1, +2, +3
        phases = {
            "pretrain": {"bbox": {"AP": 10.0, "AP50": 10.0, "APr": 1.0, "APc": 2.0, "APf": 3.0}},
            "finetune": {"bbox": {"AP": 10.0 + gain, "AP50": 10.0, "APr": 1.0, "APc": 2.0, "APf": 3.0 - gain}},
        }
        (results_dir / f"seed{seed}.json").write_text(json.dumps({"seed": seed, "phases": phases}))
    monkeypatch.setattr(
        sys, "argv", ["ablation_table.py", "--from-results", str(results_dir), "--paired", "finetune-pretrain"]
    )
    script.main()
    printed = capsys.readouterr().out
    assert open(results_dir / "ablation_table.md").read() == printed
    row = next(line for line in printed.splitlines() if line.startswith("| finetune − pretrain"))
    # AP: mean 2, std 1, 95% CI 2 ± 4.302653/sqrt(3); APr, APc unchanged (p 1); APf -2 ± 1, p 0.074 like AP
    half = 4.302653 / 3**0.5
    assert row.startswith(
        f"| finetune − pretrain | +2.00 ± 1.00 (+1.00, +2.00, +3.00); p=0.074; 95% CI [{2 - half:+.2f}, "
    )
    assert row.endswith("| none |")  # nothing passes with 3 seeds here, Holm or not
    assert "Holm over this table's m = 4 comparisons" in printed and "0 results; Holm stopped at rank 1" in printed


def test_a_paired_table_of_one_seed_waits_for_the_second(script, tmp_path, monkeypatch, capsys):
    """A run in pieces: one seed's results so far; --paired notes that it needs 2 seeds instead of failing."""
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    metrics = {"AP": 10.0, "AP50": 10.0, "APr": 1.0, "APc": 2.0, "APf": 3.0}
    phases = {"pretrain": {"bbox": metrics}, "finetune": {"bbox": metrics}}
    (results_dir / "seed0.json").write_text(json.dumps({"seed": 0, "phases": phases}))
    monkeypatch.setattr(
        sys, "argv", ["ablation_table.py", "--from-results", str(results_dir), "--paired", "finetune-pretrain"]
    )
    script.main()
    assert "Paired differences (finetune-pretrain): need at least 2 seeds, have 1." in capsys.readouterr().out
