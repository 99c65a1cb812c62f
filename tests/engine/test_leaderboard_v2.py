"""The v2 leaderboard (projects/leaderboard_v2.py, docs/leaderboard/protocol.md): equal budgets, end-to-end entries
from scratch, decoupled entries with the control's trainable set and schedule, the shared pretrain's learning curve
(read from metrics.json, the convergence rule, its table), the v2 pairs."""

import json
import os

import numpy as np
import pytest
import torch

from detectron2.config import instantiate
from detectron2.utils.events import EventStorage

from ltdet2.engine.leaderboard import (
    chain_iterations,
    curve_gain,
    entry_chains,
    evaluate_entries_only,
    format_curves_table,
    format_leaderboard_table,
    paired_difference_points,
    plot_learning_curves,
    plot_paired_differences,
    read_learning_curve,
)
from ltdet2.engine.phases import load_config, run_phases
from ltdet2.utils.json_io import read_json

from fixtures.models import ROOT, load_repo_module, make_batch

PROJECT = os.path.join(ROOT, "projects", "leaderboard_v2.py")
QUICK = os.path.join(ROOT, "projects", "leaderboard_v2_quick.py")
END_TO_END = ["ce", "rfs", "rio_replay", "rio", "seesaw", "eqlv2", "federated"]
DECOUPLED = ["crt", "loce", "loce_rfs", "replay_ebl"]
ENTRIES = [*END_TO_END, *DECOUPLED, "stepwise_control", "stepwise", "bacl", "fcbl_replay", "lst"]


@pytest.fixture(scope="module")
def project():
    return load_config(PROJECT, ["train.device=cpu"])


def test_entries_regimes_and_equal_budgets(project):
    phases = project.phases
    chains = entry_chains(phases)
    assert list(chains) == ENTRIES
    pretrain_iters, total = phases.pretrain.train.max_iter, phases.ce.train.max_iter
    assert (pretrain_iters, total) == (4800, 5400)
    assert list(phases.pretrain.train.checkpointer.keep) == [3599]  # the last before its first step, for a 2P
    assert "keep" not in phases.crt.train.checkpointer and "keep" not in phases.ce.train.checkpointer
    quick = load_config(QUICK, ["train.device=cpu"])
    for cfg, budget in ((project, total), (quick, 72)):
        assert {chain_iterations(cfg.phases, c) for c in entry_chains(cfg.phases).values()} == {budget}
        for name, phase in cfg.phases.items():  # every schedule fits its phase
            scheduler = instantiate(phase.lr_multiplier)
            assert 0 < scheduler(0.0) <= 1.0 and 0 < scheduler(0.999) <= 1.0, name
    # end to end: one phase from scratch, the whole model, the whole budget
    for name in END_TO_END:
        assert chains[name] == [name] and phases[name].train.init_from_phase == "", name
        assert phases[name].train.trainable is None, name
    # the decoupled entries: from the shared pretrain, the control's trainable set and schedule
    for name in DECOUPLED + ["bacl", "fcbl_replay"]:
        assert list(phases[name].train.trainable) == list(phases.crt.train.trainable), name
        assert phases[name].lr_multiplier == phases.crt.lr_multiplier, name
    for name in DECOUPLED:
        assert chains[name] == ["pretrain", name]
        warmups = [hook for hook in phases[name].train.hooks if "MemoryWarmup" in str(hook._target_)]
        assert len(warmups) == (name != "crt"), name  # the memories of LOCE and the replay are warmed up
    assert list(phases.stepwise_control.train.trainable) == list(phases.stepwise.train.trainable)
    assert chains["stepwise"] == ["pretrain", "stepwise_head_expert", "stepwise"]
    assert chains["lst"] == ["lst_base", "lst_1", "lst_2", "lst"]
    # the controls train plain softmax CE: no loss, classifier, sampler or replay of a method
    for name in ("ce", "crt", "stepwise_control"):
        predictor = phases[name].model.roi_heads.box_predictor
        assert predictor.get("cls_loss") is None and predictor.get("classifier") is None, name
        assert "sampler" not in phases[name].dataloader.train, name
        assert not phases[name].model.roi_heads.get("feature_sources"), name
    # every entry evaluated alike: ltdet2's heads (Detectron2's with no option set), the mask head in float32 on every
    # machine (bfloat16 is slower on CPUs without bf16 instructions, and moves mask AP)
    assert {p.model.roi_heads.get("mask_inference_dtype") for p in phases.values()} == {"float32"}
    # the learning curve: only the shared pretrain evaluates periodically, and it keeps its evaluator
    periodic = {n: p.train.eval_period for n, p in phases.items() if p.train.eval_period}
    assert periodic == {"pretrain": pretrain_iters // 8}
    assert [n for n, p in phases.items() if "evaluator" in p.dataloader] == ["pretrain", *ENTRIES]


def test_the_doubled_pretrain_repeats_the_failed_one_up_to_its_first_step():
    """Seed 0's P = 4800 pretrain continued from the P = 2400 run's iteration-1799 checkpoint (protocol.md): the
    two schedules give the same learning rate, bit for bit, at every iteration before 2400's first step."""
    from ltdet2.config.leaderboard import from_scratch_schedule

    failed, doubled = instantiate(from_scratch_schedule(2400)), instantiate(from_scratch_schedule(4800))
    assert [failed(i / 2400) for i in range(1800)] == [doubled(i / 4800) for i in range(1800)]
    assert failed(1800 / 2400) == 0.1 and doubled(1800 / 4800) == 1.0  # 2400's first step


def test_models_that_v2_adds_train_a_step_with_masks(project):
    """The entries whose models v1 lacks (object replay with a linear classifier, Seesaw, EQLv2, the
    federated loss)."""
    batch = make_batch(num_images=2, size=64, mask=True)
    for name in ("rio_replay", "seesaw", "eqlv2", "federated"):
        torch.manual_seed(0)
        model = instantiate(project.phases[name].model).train()
        with EventStorage(0):
            losses = model(batch)
        assert "loss_mask" in losses and torch.isfinite(sum(losses.values())), name


def test_v2_pairs_name_entries_and_compare_each_with_its_regimes_control(project):
    script = load_repo_module("scripts/leaderboard.py")
    families = script.SETTINGS["v2", False].families
    pairs = [pair for _, family in families for pair in family]
    entries = set(entry_chains(project.phases))
    assert {name for pair in pairs for name in pair} <= entries
    assert len(set(pairs)) == len(pairs)
    controls = dict.fromkeys(entries - {"ce"})
    for entry, other in pairs:
        if other in ("ce", "crt", "stepwise_control") and controls.get(entry) is None:
            controls[entry] = other
    assert controls == {
        **dict.fromkeys(["crt", "stepwise_control", "rfs", "rio_replay", "rio", "seesaw", "eqlv2", "federated"], "ce"),
        "lst": "ce",
        **dict.fromkeys(["loce", "loce_rfs", "replay_ebl", "bacl", "fcbl_replay"], "crt"),
        "stepwise": "stepwise_control",
    }


def write_metrics(path, records):
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def test_learning_curve_from_metrics_json_and_the_convergence_rule(tmp_path):
    metrics = str(tmp_path / "metrics.json")
    train_line = {"iteration": 19, "total_loss": 1.0}
    evals = [(299, 20.0), (599, 40.0), (899, 50.0), (1199, 55.0)]
    records = [train_line]
    for iteration, ap in evals:
        records.append({"iteration": iteration, "bbox/AP": ap, "bbox/APr": ap / 10, "segm/AP": ap - 1, "lr": 0.02})
    records.append({"iteration": 1199, "bbox/AP": 55.5, "bbox/APr": 5.0})  # a resumed run's repeat: the last counts
    write_metrics(metrics, records)
    curve = read_learning_curve(metrics)
    assert [p["iteration"] for p in curve] == [300, 600, 900, 1200]
    assert curve[0] == {"iteration": 300, "bbox": {"AP": 20.0, "APr": 2.0}, "segm": {"AP": 19.0}}
    assert curve[-1]["bbox"] == {"AP": 55.5, "APr": 5.0} and curve[-1]["segm"] == {"AP": 54.0}
    # the last quarter: from iteration 900 (= 3/4 of 1200) to 1200
    assert curve_gain(curve) == pytest.approx(5.5)
    assert curve_gain(curve, fraction=0.5) == pytest.approx(15.5)
    assert curve_gain(curve[:1]) != curve_gain(curve[:1])  # NaN: one point
    with open(metrics, "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"metrics.json:7: not a JSON record"):
        read_learning_curve(metrics)

    flat = [{"iteration": i, "bbox": {"AP": 60.0 + i / 1000}} for i in (300, 600, 900, 1200)]
    records = [
        {"seed": 0, "entry": "crt", "curves": {"pretrain": curve}},
        {"seed": 0, "entry": "loce", "curves": {"pretrain": curve}},
        {"seed": 1, "entry": "crt", "curves": {"pretrain": flat}},
        {"seed": 1, "entry": "ce"},  # no curve
    ]
    table = format_curves_table(records, "pretrain").splitlines()
    assert table[0] == (
        "| pretrain bbox AP: seed | 300 | 600 | 900 | 1200 | gain over the last 25% | converged (gain < 1) |"
    )
    assert table[2] == "| 0 | 20.00 | 40.00 | 50.00 | 55.50 | +5.50 | no |"
    assert table[3] == "| 1 | 60.30 | 60.60 | 60.90 | 61.20 | +0.30 | yes |"
    assert format_curves_table(records, "lst_base") == ""
    out = plot_learning_curves(records, "pretrain", str(tmp_path / "curve.png"))
    assert os.path.getsize(out) > 10_000
    assert plot_learning_curves(records, "lst_base", str(tmp_path / "none.png")) is None


def test_learning_curve_script_judges_a_finished_run_only(tmp_path, capsys):
    script = load_repo_module("scripts/learning_curve.py")
    phase_dir = tmp_path / "pretrain"
    phase_dir.mkdir()
    (phase_dir / "config.yaml").write_text("train:\n  max_iter: 1200\n  eval_period: 300\n  seed: 0\n")
    evals = [(299, 20.0), (599, 40.0), (899, 54.5)]
    write_metrics(
        str(phase_dir / "metrics.json"), [{"iteration": i, "bbox/AP": ap, "segm/AP": ap - 1} for i, ap in evals]
    )
    record = script.main([str(phase_dir)])
    assert record["verdict"] == "unfinished" and record["gain"] != record["gain"]  # NaN: no verdict on a cut run
    assert "unfinished at iteration 900: no verdict (max_iter 1200, evaluated every 300)" in capsys.readouterr().out

    for last_ap, verdict in ((55.4, "converged"), (55.5, "not converged")):  # 1 AP over 900 -> 1200: not under 1
        write_metrics(
            str(phase_dir / "metrics.json"), [{"iteration": i, "bbox/AP": ap} for i, ap in [*evals, (1199, last_ap)]]
        )
        out = str(tmp_path / "curve.json")
        record = script.main([str(phase_dir), "--output", out])
        assert record["verdict"] == verdict and record["gain"] == pytest.approx(last_ap - 54.5)
        written = read_json(out)
        assert written["verdict"] == verdict and [p["iteration"] for p in written["curve"]] == [300, 600, 900, 1200]
        assert written["max_iter"] == 1200 and written["command"].startswith("scripts/learning_curve.py ")
        assert "machine" in written and "commit" in written
    assert "| 1200 | 55.50 | nan |" in capsys.readouterr().out
    assert script.main([str(phase_dir), "--tolerance", "2"])["verdict"] == "converged"
    os.remove(phase_dir / "config.yaml")
    with pytest.raises(FileNotFoundError, match=r"no config.yaml \(not a phase's training folder\?\)"):
        script.main([str(phase_dir)])


def test_evaluate_entries_only_keeps_the_named_phases():
    phases = {name: {"train": {}, "dataloader": {"evaluator": 1}} for name in ("a", "b")}
    assert "evaluator" in evaluate_entries_only(phases, keep=("a",))["a"]["dataloader"]
    with pytest.raises(KeyError, match=r"keep=\['z'\] are not phases"):
        evaluate_entries_only(phases, keep=("z",))


def test_families_are_separate_tables_each_holm_corrected_on_its_own():
    def record(entry, seed, ap):
        metrics = {"AP": ap, "AP50": ap, "APr": ap / 2, "APc": ap, "APf": ap + 1}
        phase = {"bbox": metrics, "segm": metrics}
        return {"entry": entry, "seed": seed, "phases": {entry: phase}, "wall_s": 60.0, "chain": [entry]}

    records = []
    for seed, (ce, crt, loce) in enumerate([(30.0, 31.0, 35.0), (32.0, 32.5, 38.0), (31.0, 31.5, 36.5)]):
        records += [record("ce", seed, ce), record("crt", seed, crt), record("loce", seed, loce)]
    families = (("Controls", (("crt", "ce"),)), ("Decoupled", (("loce", "crt"), ("eqlv2", "crt"))), ("None", ()))
    table = format_leaderboard_table(records, ["ce", "crt", "loce"], families=families)
    assert "\n\nControls\n\n" in table and "\n\nDecoupled\n\n" in table and "\n\nNone\n\n" not in table
    controls, decoupled = table.split("\n\nControls\n\n")[1].split("\n\nDecoupled\n\n")
    assert "| crt − ce |" in controls and "loce − crt" not in controls
    assert "| loce − crt |" in decoupled and "eqlv2" not in decoupled  # an entry without results: left out
    # Holm over each table's own 4 cells (AP, APr, APc, APf of its one pair), not over the 8 of both
    assert "m = 4 comparisons" in controls and "m = 4 comparisons" in decoupled


def test_paired_differences_plot_with_each_familys_holm_corrected_intervals(tmp_path):
    """The APr-against-APf picture of the paired differences: per family, each pair's mean differences with the
    intervals of its table (Holm within the family's 4 metrics), computed here from the per-seed differences."""
    from scipy.stats import t as student_t

    def record(entry, seed, ap):
        metrics = {"AP": ap, "AP50": ap, "APr": ap / 2, "APc": ap, "APf": ap + 1}
        return {"entry": entry, "seed": seed, "phases": {entry: {"bbox": metrics, "segm": metrics}}, "chain": [entry]}

    records = []
    for seed, (ce, crt, loce) in enumerate([(30.0, 31.0, 35.0), (32.0, 32.5, 38.0), (31.0, 31.5, 36.5)]):
        records += [record("ce", seed, ce), record("crt", seed, crt), record("loce", seed, loce)]
    families = (("Controls", (("crt", "ce"),)), ("Decoupled", (("loce", "crt"), ("eqlv2", "crt"))), ("None", ()))
    (controls, (control_point,)), (decoupled, (loce_point,)) = paired_difference_points(records, families)
    assert (controls, decoupled) == ("Controls", "Decoupled") and loce_point["pair"] == "loce − crt"

    def interval(differences, level):
        differences = np.array(differences)
        half = student_t.ppf(1 - level / 2, 2) * differences.std(ddof=1) / np.sqrt(3)
        return differences.mean() - half, differences.mean() + half

    # loce − crt: AP, APr, APc and APf differences have the same t (APr's are AP's halves), so Holm ranks them in
    # the table's order: APr second (level 0.05/3), APf last (0.05); each p = 0.0082 passes its level
    assert loce_point["APf"]["mean"] == pytest.approx(29 / 6)
    assert loce_point["APf"]["interval"] == pytest.approx(interval([4.0, 5.5, 5.0], 0.05))
    assert loce_point["APr"]["interval"] == pytest.approx(interval([2.0, 2.75, 2.5], 0.05 / 3))
    assert loce_point["APr"]["result"] and loce_point["APf"]["result"]
    # crt − ce: differences 1, 0.5, 0.5, tied the same way; Holm stops at the first rank (p = 0.057 >= 0.0125), so
    # none is a result, each interval at its rank's level
    assert control_point["APr"]["interval"] == pytest.approx(interval([0.5, 0.25, 0.25], 0.05 / 3))
    assert control_point["APf"]["interval"] == pytest.approx(interval([1.0, 0.5, 0.5], 0.05))
    assert not control_point["APr"]["result"] and not control_point["APf"]["result"]
    out = tmp_path / "paired_differences.png"
    assert plot_paired_differences(records, families, str(out)) == str(out) and out.stat().st_size > 10_000
    assert plot_paired_differences(records[:3], families, str(tmp_path / "none.png")) is None  # one seed


def test_v2_entry_trains_end_to_end_with_the_pretrains_learning_curve(tiny_dataset, tmp_path, monkeypatch):
    """scripts/leaderboard.py --protocol v2 with the real runner (in this process): the shared pretrain (4 iterations,
    evaluated every 2: a curve of 2 points) and the decoupled control `crt` (2 iterations); the curve is in the
    entry's results file, the table and the plot."""
    from fixtures.models import TEST_DEVICE, TINY_LT_SHAPES

    script = load_repo_module("scripts/leaderboard.py")
    (train_name, val_name), n = tiny_dataset, TINY_LT_SHAPES.num_classes
    overrides = [
        "train.max_iter=2",
        f"train.device={TEST_DEVICE}",
        "model.roi_heads.box_predictor.test_score_thresh=0.0",
        "model.roi_heads.box_predictor.test_topk_per_image=5",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "dataloader.train.total_batch_size=2",
        "phases.pretrain.train.max_iter=4",
        "phases.pretrain.train.eval_period=2",
        "phases.pretrain.train.log_period=1",  # metrics.json keeps every evaluation (scripts/leaderboard.py)
    ]
    for phase in ("pretrain", "crt"):
        overrides += [
            f"phases.{phase}.model.roi_heads.num_classes={n}",
            f"phases.{phase}.dataloader.train.dataset.names={train_name}",
            f"phases.{phase}.dataloader.test.dataset.names={val_name}",
        ]

    def run_in_process(config_file, phase, seed, seed_dir, phase_overrides):
        cfg = load_config(config_file, [f"train.seed={seed}", f"train.output_dir={seed_dir}", *phase_overrides])
        run_phases(cfg, only=phase.name)

    monkeypatch.setattr(script, "run_phase", run_in_process)
    docs = str(tmp_path / "docs")
    args = ["--protocol", "v2", "--output-dir", str(tmp_path / "out"), "--docs-dir", docs]
    script.main([*overrides, *args, "--seeds", "0", "--entries", "crt"])
    record = read_json(os.path.join(docs, "results", "crt_seed0.json"))
    assert record["project"] == "projects/leaderboard_v2.py" and record["iterations"] == 6
    assert record["command"].startswith("scripts/leaderboard.py train.max_iter=2 ")
    assert " --protocol v2 --entries crt --seeds 0" in record["command"]
    curve = record["curves"]["pretrain"]
    assert [point["iteration"] for point in curve] == [2, 4]
    assert all(set(point) == {"iteration", "bbox", "segm"} and "APr" in point["bbox"] for point in curve)
    table = open(os.path.join(docs, "leaderboard.md")).read()
    assert "| pretrain bbox AP: seed | 2 | 4 | gain over the last 25% | converged (gain < 1) |" in table
    assert os.path.getsize(os.path.join(docs, "learning_curve.png")) > 10_000
