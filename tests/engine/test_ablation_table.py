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
