"""The leaderboard (projects/leaderboard.py, scripts/leaderboard.py, ltdet2.engine.leaderboard): every entry's phases
instantiate, every entry trains the same number of iterations, only entries are evaluated; the script trains a
shared phase once per seed, writes one results file per (entry, seed) and skips those that exist (the training
is faked: each phase run writes a finished phase's files), and with --jobs schedules the phases of all seeds as
jobs; the table and plots from fake results files."""

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from detectron2.config import instantiate
from detectron2.utils.events import EventStorage

from ltdet2.data.lt_shapes import NUM_CLASSES
from ltdet2.engine.leaderboard import (
    chain_iterations,
    entry_chains,
    evaluate_entries_only,
    format_leaderboard_table,
    load_entry_results,
    mismatched_records,
    phase_inputs,
    phase_jobs,
    plot_apr_vs_apf,
    plot_entries_per_class_ap,
    write_entry_results,
)
from ltdet2.engine.phases import load_config
from ltdet2.utils.json_io import read_json

from fixtures.models import ROOT, load_repo_module, make_batch

PROJECT = os.path.join(ROOT, "projects", "leaderboard.py")
QUICK = os.path.join(ROOT, "projects", "leaderboard_quick.py")
ENTRIES = ["ce", "rfs", "rio", "loce", "loce_rfs", "replay_ebl", "stepwise", "bacl", "fcbl_replay", "lst"]
PRETRAIN_ITERS, FINETUNE_ITERS = 300, 150  # projects/leaderboard.py's budget
QUICK_ITERS = 48 + 24


@pytest.fixture(scope="module")
def project():
    return load_config(PROJECT, ["train.device=cpu"])


def test_entries_chains_and_equal_iteration_budgets(project):
    chains = entry_chains(project.phases)
    assert list(chains) == ENTRIES
    assert chains["stepwise"] == ["pretrain", "stepwise_head_expert", "stepwise"]
    assert chains["fcbl_replay"] == ["bacl_representation", "fcbl_replay"]
    assert chains["lst"] == ["lst_base", "lst_1", "lst_2", "lst"]
    assert {entry: chain_iterations(project.phases, c) for entry, c in chains.items()} == dict.fromkeys(
        ENTRIES, PRETRAIN_ITERS + FINETUNE_ITERS
    )
    quick = load_config(QUICK, ["train.device=cpu"])
    assert {chain_iterations(quick.phases, c) for c in entry_chains(quick.phases).values()} == {QUICK_ITERS}
    for cfg in (project, quick):  # every schedule fits its phase (a warm-up longer than a short phase does not)
        for name, phase in cfg.phases.items():
            scheduler = instantiate(phase.lr_multiplier)
            assert 0 < scheduler(0.0) <= 1.0 and 0 < scheduler(0.999) <= 1.0, name
    # only the entries are evaluated; every phase is Mask R-CNN on all 72 classes but LST's first ones
    assert [n for n, p in project.phases.items() if "evaluator" in p.dataloader] == ENTRIES
    assert all(project.phases[n].dataloader.train.mapper.use_instance_mask for n in project.phases)
    assert {n: project.phases[n].model.roi_heads.num_classes for n in chains["lst"]} == dict(
        lst_base=30, lst_1=44, lst_2=58, lst=72
    )
    assert {project.phases[n].model.roi_heads.num_classes for n in project.phases if not n.startswith("lst")} == {
        NUM_CLASSES
    }


def test_phase_inputs_follow_the_runners_rules():
    phases = {name: {"train": {}} for name in ("a", "b", "c")}
    builder = SimpleNamespace(name="d", input_phases=lambda: [])  # a derived dataset built from no phase
    phases["c"]["train"] = {"init_from_phase": "", "teacher_from_phase": "a", "derived_datasets": [builder]}
    assert phase_inputs(phases, "a") == [] and phase_inputs(phases, "b") == ["a"] and phase_inputs(phases, "c") == ["a"]
    assert entry_chains(phases) == {"b": ["a", "b"], "c": ["a", "c"]}
    phases["c"]["train"]["teacher_from_phase"] = "z"
    with pytest.raises(ValueError, match=r"phase 'c' needs phases \['z'\]"):
        phase_inputs(phases, "c")
    phases = {name: {"train": {}, "dataloader": {"evaluator": 1}} for name in ("a", "b")}
    assert "evaluator" not in evaluate_entries_only(phases)["a"]["dataloader"] and phases["b"]["dataloader"]


def test_every_phase_instantiates_and_trains_a_step_with_masks(project):
    """Each phase's model (teachers left out: they are the earlier phases' models) takes a training step on a batch
    with masks: every method's heads work with the mask head."""
    batch = make_batch(num_images=2, size=64, mask=True)
    seen = []
    for name, phase in project.phases.items():
        cfg = phase.model
        plain = OmegaConf.to_container(cfg, resolve=False)
        if "teacher" in cfg or plain in seen:
            continue  # a TeacherStudentRCNN's student has the heads of the phase before it; a model tested already
        seen.append(plain)
        num_classes = cfg.roi_heads.num_classes
        for image in batch:
            image["instances"].gt_classes = image["instances"].gt_classes % num_classes
        torch.manual_seed(0)
        model = instantiate(cfg).train()
        with EventStorage(0):
            losses = model(batch)
        assert "loss_mask" in losses and torch.isfinite(sum(losses.values())), name
    assert len(seen) == 8  # pretrain (= ce, rfs, head expert), rio, loce (= loce_rfs), replay_ebl, BACL's 3, lst_base


def fake_phase_run(calls, metrics_of):
    """A stand-in for scripts/leaderboard.py's run_phase: writes what a finished phase leaves behind (its timing
    with the OMP_NUM_THREADS of the environment it is given)."""

    def run_phase(config_file, phase, seed, seed_dir, overrides, env=None, log_path=None):
        calls.append((seed, phase.name))
        os.makedirs(os.path.join(phase.output_dir, "inference"), exist_ok=True)
        open(phase.final_checkpoint, "wb").close()
        results = metrics_of(phase.name, seed) if "evaluator" in phase.cfg.dataloader else {}
        with open(phase.done_file, "w") as f:
            json.dump({"results": results, "train_seconds": 40.0, "eval_seconds": 15.0 if results else 0.0}, f)
        for task in results:
            per_class = [
                dict(id=i + 1, name=f"c{i}", frequency="rcf"[i % 3], image_count=3 * i + 1, AP=float(i + seed))
                for i in range(4)
            ]
            with open(os.path.join(phase.output_dir, "inference", f"per_class_ap_{task}.json"), "w") as f:
                json.dump(per_class, f)
        with open(os.path.join(phase.output_dir, "leaderboard_wall.json"), "w") as f:
            threads = (os.environ if env is None else env).get("OMP_NUM_THREADS")
            json.dump({"wall_s": 60.0, "cpu_s": 100.0, "load_avg": [1.0, 1.5, 2.0], "threads": threads}, f)
        return 60.0

    return run_phase


def metrics(ap, apr=1.0, apf=3.0):
    box = {"AP": ap, "AP50": ap + 10, "APr": apr, "APc": 2.0, "APf": apf}
    return {"bbox": box, "segm": {**box, "AP": ap - 1}}


def test_script_trains_shared_phases_once_writes_results_and_skips_them(tmp_path, monkeypatch, capsys):
    script = load_repo_module("scripts/leaderboard.py")
    calls = []
    monkeypatch.setattr(
        script, "run_phase", fake_phase_run(calls, lambda name, seed: metrics(10.0 + seed + len(name), apr=seed))
    )
    out, docs = str(tmp_path / "out"), str(tmp_path / "docs")
    common = ["--quick", "--output-dir", out, "--docs-dir", docs, "--seeds", "0", "1"]
    script.main([*common, "--entries", "ce", "loce", "--dry-run"])
    assert calls == [] and "loce seed 0: phases ['pretrain', 'loce'], to train ['loce']" in capsys.readouterr().out

    script.main([*common, "--entries", "ce", "loce"])
    assert calls == [(s, n) for s in (0, 1) for n in ("pretrain", "ce", "loce")]  # pretrain once per seed
    results = str(tmp_path / "docs" / "results")
    assert sorted(os.listdir(results)) == ["ce_seed0.json", "ce_seed1.json", "loce_seed0.json", "loce_seed1.json"]
    record = read_json(os.path.join(results, "loce_seed1.json"))
    assert record["entry"] == "loce" and record["chain"] == ["pretrain", "loce"] and record["iterations"] == QUICK_ITERS
    assert record["phases"]["loce"]["bbox"]["AP"] == 15.0 and record["phases"]["loce"]["segm"]["AP"] == 14.0
    assert [c["AP"] for c in record["phases"]["loce"]["per_class_ap_segm"]] == [1.0, 2.0, 3.0, 4.0]
    assert record["wall_s"] == 120.0 and record["eval_s"] == 15.0 and record["train_s"] == 105.0
    assert record["cpu_s"] == 200.0 and record["phase_load_avg"]["loce"] == [1.0, 1.5, 2.0]
    assert record["phase_runs"]["loce"] == {"runs": None, "runs_without_cpu": None, "unrecorded_earlier": None}
    assert record["command"] == "scripts/leaderboard.py --quick --entries loce --seeds 1"
    assert record["project"] == "projects/leaderboard_quick.py" and record["seed"] == 1

    calls.clear()
    script.main([*common, "--entries", "ce", "rfs"])  # ce is done: only rfs trains, from the finished pretrain
    assert calls == [(0, "rfs"), (1, "rfs")]
    text = capsys.readouterr().out
    assert "ce seed 1: " in text and "exists, skipped" in text
    table = open(os.path.join(docs, "leaderboard.md")).read()
    assert table.splitlines()[2].startswith("| ce | 12.50 ± 0.71 | 22.50 ± 0.71 | 0.50 ± 0.71 |")
    assert os.path.isfile(os.path.join(docs, "apr_vs_apf.png"))
    assert sorted(os.listdir(os.path.join(docs, "per_class_ap"))) == ["ce.png", "loce.png", "rfs.png"]

    os.remove(os.path.join(docs, "leaderboard.md"))
    calls.clear()
    script.main(["--quick", "--docs-dir", docs, "--from-results"])  # the files alone, nothing trains
    assert calls == [] and os.path.isfile(os.path.join(docs, "leaderboard.md"))
    with pytest.raises(SystemExit):
        script.main([*common, "--entries", "pretrain"])  # not an entry
    assert "--entries ['pretrain']" in capsys.readouterr().err


def test_results_and_phases_of_another_protocol_are_refused_before_anything_trains(tmp_path, monkeypatch):
    from detectron2.config import LazyConfig

    script = load_repo_module("scripts/leaderboard.py")
    calls = []
    monkeypatch.setattr(script, "run_phase", fake_phase_run(calls, lambda name, seed: metrics(10.0)))
    out, docs = str(tmp_path / "out"), str(tmp_path / "docs")
    common = ["--quick", "--output-dir", out, "--docs-dir", docs, "--seeds", "0"]
    script.main([*common, "--entries", "loce"])
    assert calls == [(0, "pretrain"), (0, "loce")]

    # a pretrain of another length (the protocol's P changed): loce's file is not this project's, for training
    # and for the table alike
    calls.clear()
    longer = "phases.pretrain.train.max_iter=96"
    for extra in ([], ["--from-results"]):
        with pytest.raises(
            ValueError, match=r"1 results file\(s\) were not trained as .*leaderboard_quick.py trains"
        ) as e:
            script.main([longer, *common, "--entries", "loce", "ce", *extra])
        assert "(loce seed 0: 72 iterations, the project's 120)" in str(e.value) and calls == []

    # the pretrain's own config, as the training process saved it (seed set), then the same change with no results
    # file in the way: the finished pretrain is refused, named with its key, before ce or loce train
    project = load_config(QUICK, ["train.seed=0"])
    LazyConfig.save(project.phases.pretrain, os.path.join(out, "seed0", "pretrain", "config.yaml"))
    os.remove(os.path.join(docs, "results", "loce_seed0.json"))
    script.main([*common, "--entries", "loce", "--dry-run"])  # the config it ran with: accepted
    with pytest.raises(
        ValueError, match=r"1 phase\(s\) in .* ran with another config than .*leaderboard_quick.py"
    ) as e:
        script.main([longer, *common, "--entries", "loce", "ce"])
    assert "seed 0 phase 'pretrain' (" in str(e.value) and "train.max_iter: 48 -> 96" in str(e.value)
    assert calls == []
    script.main([longer, *common, "--seeds", "1", "--entries", "loce"])  # another seed's folder: not judged
    assert calls == [(1, "pretrain"), (1, "loce")]


def test_mismatched_records_name_the_chain_and_the_iterations_that_differ():
    phases = {"pretrain": {"train": SimpleNamespace(max_iter=300)}, "loce": {"train": SimpleNamespace(max_iter=150)}}
    chains = {"loce": ["pretrain", "loce"]}
    records = [
        {"entry": "loce", "seed": 0, "chain": ["pretrain", "loce"], "iterations": 450},  # as the project trains it
        {"entry": "loce", "seed": 1, "chain": ["pretrain", "loce"], "iterations": 600},
        {"entry": "loce", "seed": 2, "chain": ["loce"], "iterations": 150},
        {"entry": "loce", "seed": 3},  # nothing recorded to judge
        {"entry": "gone", "seed": 0, "chain": ["gone"], "iterations": 1},  # an entry the project no longer has
    ]
    assert mismatched_records(records, phases, chains) == [
        "loce seed 1: 600 iterations, the project's 450",
        "loce seed 2: chain ['loce'], the project's ['pretrain', 'loce']; 150 iterations, the project's 450",
    ]


def fake_record(entry, seed, ap, apr, apf, wall_s=600.0, train_s=540.0):
    per_class = [dict(id=i, name=f"c{i}", frequency="rcf"[i], image_count=10**i, AP=ap + i) for i in range(3)]
    phase = {**metrics(ap, apr, apf), "per_class_ap_bbox": per_class}
    record = {"entry": entry, "seed": seed, "phases": {entry: phase}, "wall_s": wall_s, "chain": [entry]}
    return record if train_s is None else {**record, "train_s": train_s}  # None: a record from before train_s


def test_table_and_plots_from_fake_results(tmp_path):
    results = str(tmp_path / "results")
    for seed, (ce, loce) in enumerate([(30.0, 33.0), (32.0, 36.0), (31.0, 36.0)]):
        train_s = None if seed == 0 else 420.0 + 60 * seed  # seed 0 ran before the timings were recorded
        write_entry_results(results, fake_record("ce", seed, ce, apr=2.0 + seed, apf=60.0, train_s=train_s))
        write_entry_results(results, fake_record("loce", seed, loce, apr=10.0 + 2 * seed, apf=58.0, wall_s=900.0))
    write_entry_results(results, fake_record("bacl", 0, 40.0, apr=20.0, apf=50.0))  # one seed so far
    for seed in (0, 1):  # a timing in one seed of two: its value, no spread
        write_entry_results(results, fake_record("rio", seed, 33.0, 5.0, 60.0, train_s=None if seed else 300.0))
    records = load_entry_results(results)
    table = format_leaderboard_table(records, ["ce", "loce", "bacl", "rio"], reference="ce").splitlines()
    assert table[5].startswith("| rio (seeds 0, 1 only) | 33.00 ± 0.00 |") and "| 5.00 | 10.00 ± 0.00 |" in table[5]
    assert table[0].startswith("| entry (leaderboard; mean ± std over seeds 0, 1, 2) | AP | AP50 | APr | APc | APf |")
    assert "| mask AP | mask APr | train (min) | wall (min) | APr per seed |" in table[0]
    assert table[2] == (
        "| ce | 31.00 ± 1.00 | 41.00 ± 1.00 | 3.00 ± 1.00 | 2.00 ± 0.00 | 60.00 ± 0.00 | 30.00 ± 1.00 | 3.00 ± 1.00 "
        "| 8.50 ± 0.71 | 10.00 ± 0.00 | 2.00, 3.00, 4.00 |"
    )  # train: the mean and std of the seeds that have it (8, 9 min)
    assert table[3].startswith("| loce | 35.00 ± 1.73 |") and "| 9.00 ± 0.00 | 15.00 ± 0.00 |" in table[3]
    assert table[4].startswith("| bacl (seed 0 only) | 40.00 |")
    paired = next(line for line in table if line.startswith("| loce − ce"))
    # AP, paired by seed: +3, +4, +5, 95% CI 4 ± 4.302653/sqrt(3), not a result after Holm over the table's 8 cells
    assert "+4.00 ± 1.00 (+3.00, +4.00, +5.00); p=0.02; 95% CI [+1.52, +6.48]; Holm " in paired
    assert "+9.00 ± 1.00 (+8.00, +9.00, +10.00); p=0.0041; 95% CI [+6.52, +11.48]; Holm " in paired  # APr
    assert paired.endswith("| APr, APf |")  # APf -2 on every seed: no spread, p 0
    assert table[-1].endswith(
        "Holm stopped at rank 3 (loce − ce AP, p=0.02 ≥ 0.05/6 = 0.0083): it and every "
        "comparison ranked after it are no result."
    )
    # extra pairs after those to the reference: computed over the seeds holding both, a repeat or one naming an
    # entry without results left out
    extra = [("loce", "rio"), ("loce", "ce"), ("lst", "ce")]
    table = format_leaderboard_table(records, ["ce", "loce", "bacl", "rio"], reference="ce", pairs=extra)
    paired = [line for line in table.splitlines() if line.startswith("| ") and " − " in line.split(" | ")[0]]
    paired = [line for line in paired if not line.startswith("| bbox:")]
    assert [line.split(" | ")[0] for line in paired] == [
        "| loce − ce",
        "| bacl − ce (seed 0 only)",
        "| rio − ce (seeds 0, 1 only)",
        "| loce − rio (seeds 0, 1 only)",
    ]
    # AP, APr over seeds 0 and 1 (1 degree of freedom: t_{0.975, 1} = 12.706)
    assert "| +1.50 ± 2.12 (+0.00, +3.00); p=0.5; 95% CI [-17.56, +20.56]; Holm " in paired[-1]
    assert "| +6.00 ± 1.41 (+5.00, +7.00); p=0.11; 95% CI [-6.71, +18.71]; Holm " in paired[-1]
    assert paired[1] == (
        "| bacl − ce (seed 0 only) | +10.00 (+10.00); n<2, no interval | +18.00 (+18.00); n<2, no interval "
        "| +0.00 (+0.00); n<2, no interval | -10.00 (-10.00); n<2, no interval | no result: seeds with both: 0 |"
    )
    assert "m = 12 comparisons" in table and "4 cells with n<2 not counted): 3 results" in table

    out = plot_apr_vs_apf(records, str(tmp_path / "scatter.png"), entries=["ce", "loce", "bacl"])
    assert os.path.getsize(out) > 10_000
    paths = plot_entries_per_class_ap(records, str(tmp_path / "per_class"), entries=["ce", "bacl"])
    assert [os.path.basename(p) for p in paths] == ["ce.png", "bacl.png"] and all(map(os.path.isfile, paths))

    with pytest.raises(
        ValueError, match=r"entries \['lst'\] asked for, the records hold \['bacl', 'ce', 'loce', 'rio'\]"
    ):
        format_leaderboard_table(records, ["lst"])
    os.rename(os.path.join(results, "ce_seed0.json"), os.path.join(results, "ce_0.json"))
    with pytest.raises(ValueError, match=r"is not named <entry>_seed<N>.json"):
        load_entry_results(results)


def test_apr_apf_points_mean_and_std():
    from ltdet2.engine.leaderboard import apr_apf_points

    records = [fake_record("ce", s, 30.0, apr=a, apf=f) for s, (a, f) in enumerate([(2.0, 60.0), (4.0, 62.0)])]
    [(apr, apr_std, apf, apf_std, seeds)] = apr_apf_points(records).values()
    np.testing.assert_allclose([apr, apr_std, apf, apf_std, seeds], [3.0, np.sqrt(2), 61.0, np.sqrt(2), 2])


def test_ap_by_image_count_bins_and_plot(tmp_path):
    from ltdet2.engine.leaderboard import ap_by_image_count, plot_ap_by_image_count

    per_class = [
        dict(image_count=count, AP=ap)
        for count, ap in [(1, 2.0), (9, 4.0), (10, 30.0), (29, None), (150, 60.0), (299, 70.0), (1000, 99.0)]
    ]
    means, counts = ap_by_image_count(per_class, edges=(1, 10, 30, 100, 300, 1000))
    np.testing.assert_allclose(means, [3.0, 30.0, np.nan, 65.0, np.nan])  # None and 1000 (past the edges) left out
    np.testing.assert_array_equal(counts, [2, 1, 0, 2, 0])

    records = [fake_record("ce", s, 30.0 + s, apr=1.0, apf=60.0) for s in (0, 1)]  # image counts 1, 10, 100
    out = plot_ap_by_image_count(records, str(tmp_path / "bins.png"))
    assert out and os.path.getsize(out) > 10_000
    undefined = fake_record("x", 0, 1.0, 1.0, 1.0)
    undefined["phases"]["x"]["per_class_ap_bbox"] = [dict(id=1, image_count=5, AP=None)]
    assert plot_ap_by_image_count([undefined], str(tmp_path / "none.png")) is None
    assert not os.path.exists(tmp_path / "none.png")


def test_seed_wall_times_count_a_shared_phase_once():
    from ltdet2.engine.leaderboard import seed_wall_times

    def timed(entry, seed, walls):
        return {**fake_record(entry, seed, 30.0, 1.0, 60.0), "phase_wall_s": walls}

    records = [
        timed("ce", 0, {"pretrain": 700.0, "ce": 500.0}),
        timed("rfs", 0, {"pretrain": 700.0, "rfs": 450.0}),
        timed("ce", 1, {"pretrain": 650.0, "ce": 400.0}),
    ]
    assert seed_wall_times(records) == {0: (1650.0, ["ce", "rfs"]), 1: (1050.0, ["ce"])}
    records.append(timed("loce", 1, {"pretrain": 600.0, "loce": 1.0}))
    with pytest.raises(ValueError, match=r"seed 1: phase 'pretrain' has two wall times \(650.0 and 600.0 s\)"):
        seed_wall_times(records)


def test_a_phase_run_records_its_wall_and_cpu_time_and_the_load(tmp_path, monkeypatch):
    import sys
    from types import SimpleNamespace

    script = load_repo_module("scripts/leaderboard.py")
    busy = [sys.executable, "-c", "sum(i * i for i in range(3 * 10**6))"]  # ~0.3 s of CPU in a child process
    monkeypatch.setattr(script, "train_command", lambda *args, **kwargs: busy)
    phase = SimpleNamespace(name="p", output_dir=str(tmp_path))
    wall = script.run_phase("projects/x.py", phase, 0, str(tmp_path), [])
    timing = read_json(os.path.join(tmp_path, script.WALL_FILE))
    assert timing["wall_s"] == pytest.approx(wall, abs=0.2) and 0.05 < timing["cpu_s"] and len(timing["load_avg"]) == 3
    assert timing["runs"] == 1 and timing["runs_without_cpu"] == 0 and timing["unrecorded_earlier"] is False
    assert script.phase_timing(phase) == timing
    missing = SimpleNamespace(name="q", output_dir=str(tmp_path / "none"))
    unrecorded = script.phase_timing(missing)
    assert np.isnan(unrecorded["wall_s"]) and np.isnan(unrecorded["cpu_s"]) and unrecorded["load_avg"] is None


def test_a_phase_s_times_add_up_over_its_invocations_killed_ones_to_their_last_heartbeat(tmp_path, monkeypatch):
    """A phase resumed over several sittings: its WALL_FILE counts every invocation, not only the last; one killed
    outright counts to its last heartbeat, one that failed without CPU seconds is counted as such, and checkpoints
    found before the first record mark its times as a lower bound."""
    script = load_repo_module("scripts/leaderboard.py")
    commands = [
        [sys.executable, "-c", "raise SystemExit(3)"],
        [sys.executable, "-c", "sum(i * i for i in range(10**6))"],
    ]
    monkeypatch.setattr(script, "train_command", lambda *args, **kwargs: commands.pop(0))
    phase = SimpleNamespace(name="p", output_dir=str(tmp_path))
    open(tmp_path / "model_0000199.pth", "wb").close()  # from a run nobody recorded
    runs_file = os.path.join(tmp_path, script.RUNS_FILE)
    killed = {"start": 1000.0, "seen": 1600.0, "end": None, "cpu_s": None, "threads": "2"}  # a sitting that ended
    with pytest.raises(subprocess.CalledProcessError):
        script.run_phase("p.py", phase, 0, str(tmp_path), [])
    runs = read_json(runs_file)
    assert runs["unrecorded_earlier"] is True and runs["runs"][0]["cpu_s"] is None and runs["runs"][0]["end"]
    runs["runs"].insert(0, killed)
    with open(runs_file, "w") as f:
        json.dump(runs, f)
    failed_wall = runs["runs"][1]["end"] - runs["runs"][1]["start"]
    wall = script.run_phase("p.py", phase, 0, str(tmp_path), [])
    timing = script.phase_timing(phase)
    assert timing["wall_s"] == pytest.approx(600.0 + failed_wall + wall, abs=0.2)
    assert timing["runs"] == 3 and timing["runs_without_cpu"] == 2 and timing["unrecorded_earlier"] is True
    assert 0 < timing["cpu_s"] < 60  # the one invocation that ended with its CPU seconds

    # while an invocation runs, its entry's "seen" follows it at every heartbeat
    fresh = SimpleNamespace(name="q", output_dir=str(tmp_path / "q"))
    with script.recorded_invocation(fresh, "1", heartbeat_s=0.02) as run:
        time.sleep(0.2)
        during = read_json(os.path.join(fresh.output_dir, script.RUNS_FILE))["runs"][0]
        assert during["end"] is None and during["seen"] > during["start"] and run["threads"] == "1"
    after = read_json(os.path.join(fresh.output_dir, script.RUNS_FILE))
    assert after["unrecorded_earlier"] is False and after["runs"][0]["end"] >= during["seen"]


def test_a_results_file_records_the_threads_its_entry_s_phase_ran_with(tmp_path, monkeypatch):
    """Sequential and --jobs runs alike: the threads of the entry's phase as it ran (also in an earlier invocation),
    the environment's only for a phase without its record."""
    script = load_repo_module("scripts/leaderboard.py")
    phase = SimpleNamespace(name="loce", output_dir=str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert script.entry_threads(phase) == "2"  # no record
    with open(os.path.join(tmp_path, script.WALL_FILE), "w") as f:
        json.dump({"wall_s": 1.0, "cpu_s": 1.0, "load_avg": [1, 1, 1], "threads": "1"}, f)
    assert script.entry_threads(phase) == "1"
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert script.entry_threads(SimpleNamespace(name="ce", output_dir=str(tmp_path / "none"))) is None


def test_concurrent_phase_runs_record_their_own_cpu_time_threads_and_log(tmp_path, monkeypatch):
    """Two phases at once (--jobs): each records its own process's CPU seconds (os.wait4), not those of whichever
    process ended meanwhile, the threads of the environment it was given, and its output in its log."""
    script = load_repo_module("scripts/leaderboard.py")
    commands = {
        "busy": [sys.executable, "-c", "sum(i * i for i in range(3 * 10**6)); print('busy done')"],
        "idle": [sys.executable, "-c", "import time; time.sleep(1.5)"],  # ends after "busy"
        "failing": [sys.executable, "-c", "raise SystemExit(3)"],
    }
    monkeypatch.setattr(script, "train_command", lambda *args, phase, **kwargs: commands[phase])
    phases = {name: SimpleNamespace(name=name, output_dir=str(tmp_path / name)) for name in commands}
    for phase in phases.values():
        os.makedirs(phase.output_dir)
    logs = {name: str(tmp_path / "logs" / f"{name}.log") for name in commands}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        idle = pool.submit(script.run_phase, "p.py", phases["idle"], 0, str(tmp_path), [], env, logs["idle"])
        script.run_phase("p.py", phases["busy"], 0, str(tmp_path), [], env, logs["busy"])
        idle.result()
    busy, idle = (read_json(os.path.join(phases[name].output_dir, script.WALL_FILE)) for name in ("busy", "idle"))
    assert idle["wall_s"] > 1.5 and idle["cpu_s"] < 0.5 * busy["cpu_s"] and busy["threads"] == idle["threads"] == "1"
    assert open(logs["busy"]).read().splitlines()[1:] == ["busy done"]  # after the command's "+ ..." line
    with pytest.raises(subprocess.CalledProcessError) as failed:
        script.run_phase("p.py", phases["failing"], 0, str(tmp_path), [], env, logs["failing"])
    assert failed.value.returncode == 3 and not os.path.exists(
        os.path.join(phases["failing"].output_dir, script.WALL_FILE)
    )


def test_quick_run_folders_are_its_own():
    script = load_repo_module("scripts/leaderboard.py")
    for protocol, seeds in (("v1", (0, 1, 2)), ("v2", (0, 1, 2, 3, 4))):
        full, quick = script.SETTINGS[protocol, False], script.SETTINGS[protocol, True]
        assert quick.seeds == (0,) and full.seeds == seeds
        assert quick.output_dir != full.output_dir and quick.docs_dir.startswith(full.docs_dir + "/")
    v1, v2 = script.SETTINGS["v1", False], script.SETTINGS["v2", False]
    assert v2.output_dir != v1.output_dir and v2.docs_dir.startswith(v1.docs_dir + "/")  # v1's table stays


def test_two_entries_train_end_to_end_on_a_tiny_lt_shapes(tiny_dataset, tmp_path, monkeypatch):
    """The script with the real runner (in this process instead of one per phase): the pretrain and the RIO replay +
    LOCE EBL composition (its memory warm-up included), 2 iterations each."""
    from ltdet2.engine.phases import run_phases

    from fixtures.models import TEST_DEVICE, TINY_LT_SHAPES

    script = load_repo_module("scripts/leaderboard.py")
    (train_name, val_name), n = tiny_dataset, TINY_LT_SHAPES.num_classes
    # every box kept (score > 0): a model of 2 iterations has detections, so box and mask AP are computed
    overrides = [
        "train.max_iter=2",
        f"train.device={TEST_DEVICE}",
        "model.roi_heads.box_predictor.test_score_thresh=0.0",
        "model.roi_heads.box_predictor.test_topk_per_image=5",  # 5 boxes and masks per image: a fast evaluation
    ]
    overrides += [
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "dataloader.train.total_batch_size=2",
    ]
    for phase in ("pretrain", "replay_ebl"):
        overrides += [
            f"phases.{phase}.model.roi_heads.num_classes={n}",
            f"phases.{phase}.dataloader.train.dataset.names={train_name}",
            f"phases.{phase}.dataloader.test.dataset.names={val_name}",
        ]
    pieces = "phases.replay_ebl.model.roi_heads"
    overrides += [f"{pieces}.indicators.mean_score.num_classes={n}", f"{pieces}.feature_sources.0.num_classes={n}"]
    overrides += [f"{pieces}.feature_sources.0.dataset_name={train_name}"]

    def run_in_process(config_file, phase, seed, seed_dir, phase_overrides):
        cfg = load_config(config_file, [f"train.seed={seed}", f"train.output_dir={seed_dir}", *phase_overrides])
        run_phases(cfg, only=phase.name)

    monkeypatch.setattr(script, "run_phase", run_in_process)
    docs = str(tmp_path / "docs")
    args = ["--output-dir", str(tmp_path / "out"), "--docs-dir", docs, "--seeds", "0", "--entries", "replay_ebl"]
    script.main([*overrides, *args])
    for entry in ("replay_ebl",):
        record = read_json(os.path.join(docs, "results", f"{entry}_seed0.json"))
        assert {"bbox", "segm", "per_class_ap_bbox", "per_class_ap_segm"} <= set(record["phases"][entry])
        assert len(record["phases"][entry]["per_class_ap_segm"]) == n and record["iterations"] == 4
        assert record["command"].startswith("scripts/leaderboard.py train.max_iter=2 ")  # overrides before options
    assert not os.path.isdir(os.path.join(str(tmp_path / "out"), "seed0", "pretrain", "inference"))  # not evaluated
    assert os.path.isfile(os.path.join(docs, "leaderboard.md")) and os.path.isfile(os.path.join(docs, "apr_vs_apf.png"))
    assert os.path.isfile(os.path.join(docs, "per_class_ap", "replay_ebl.png"))

    # the rare-class pictures, from the entry's final checkpoint (no control has results here)
    visualize, drawn = load_repo_module("scripts/visualize.py"), []
    monkeypatch.setattr(script, "run_visualize", lambda argv: drawn.append((argv, visualize.main(argv))))
    script.main([*overrides, *args, "--rare-images", "0"])
    ((argv, written),) = drawn
    assert argv[argv.index("--phase") + 1] == "replay_ebl" and "--compare" not in argv
    assert argv[argv.index("--label") + 1].startswith("replay_ebl (best box APr; mean box APr ")
    assert 1 <= len(written) <= script.RARE_IMAGES
    assert all(os.path.dirname(path) == os.path.join(docs, "rare_images") for path in written)


def test_rare_images_draw_the_controls_and_the_best_entry_by_apr_from_their_checkpoints(tmp_path):
    script = load_repo_module("scripts/leaderboard.py")
    cfg = load_config(os.path.join(ROOT, "projects", "leaderboard_v2.py"))
    aprs = {"ce": (10.0, 12.0), "crt": (20.0, 22.0), "loce": (30.0, 20.0), "rfs": (26.0, 26.0), "bacl": (40.0, 5.0)}
    records = [
        {"entry": entry, "seed": seed, "phases": {entry: {"bbox": {"APr": apr, "APf": 50.0}}}}
        for entry, values in aprs.items()
        for seed, apr in enumerate(values)
    ]
    assert script.best_entry_by_apr(records, exclude=("ce", "crt")) == "rfs"  # mean 26 against loce's 25, bacl's 22.5
    out, docs = str(tmp_path / "out"), str(tmp_path / "docs")
    args = SimpleNamespace(config_file="projects/leaderboard_v2.py", overrides=["train.device=cpu"])
    final = {e: os.path.join(out, "seed1", e, "model_final.pth") for e in ("ce", "crt", "rfs")}
    with pytest.raises(FileNotFoundError, match=re.escape(str([final["ce"], final["crt"], final["rfs"]]))):
        script.rare_images_arguments(args, cfg, records, 1, out, docs)
    for path in final.values():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").close()
    argv = script.rare_images_arguments(args, cfg, records, 1, out, docs)
    assert argv[:6] == ["--config-file", "projects/leaderboard_v2.py", "--phase", "ce", "--checkpoint", final["ce"]]
    compared = [argv[i + 1] for i, token in enumerate(argv) if token == "--compare"]
    assert compared == [f"projects/leaderboard_v2.py:{e}:{final[e]}" for e in ("crt", "rfs")]
    labels = [argv[i + 1] for i, token in enumerate(argv) if token == "--label"]
    assert labels == [
        "ce (control; mean box APr 11.0)",
        "crt (control; mean box APr 21.0)",
        "rfs (best box APr; mean box APr 26.0)",
    ]
    assert argv[argv.index("--output") + 1] == os.path.join(docs, "rare_images")
    assert argv[argv.index("--classes") + 1] == "rare" and argv[argv.index("--num-images") + 1] == "4"
    assert argv[-3:] == ["train.seed=1", f"train.output_dir={os.path.join(out, 'seed1')}", "train.device=cpu"]
    with pytest.raises(FileNotFoundError, match="no results file of seed 7"):
        script.rare_images_arguments(args, cfg, records, 7, out, docs)


def test_phase_jobs_plan_the_missing_phases_of_each_seed_longest_path_first(project):
    chains = entry_chains(project.phases)
    # seed 0's pretrain is done; seed 1's lst has its results file: neither is planned, nor what only lst needs
    wanted = [(seed, entry) for seed in (0, 1) for entry in ENTRIES if (seed, entry) != (1, "lst")]
    jobs = phase_jobs(project.phases, chains, wanted, done={(0, "pretrain")})
    keys = [job.key for job in jobs]
    assert len(keys) == len(set(keys))  # a shared phase is one job per seed
    fine_tunes = ["ce", "rfs", "rio", "loce", "loce_rfs", "replay_ebl", "bacl", "fcbl_replay"]  # ending a chain
    # the first phases (P = 300) tie at 300 + 150 (every entry has the same budget): the longer path in phases goes
    # first (LST's 4, the pretrain's 3 through step-wise, BACL's 2); then seed, then the project's order
    assert keys == [
        (0, "lst_base"),
        (1, "pretrain"),
        (0, "bacl_representation"),
        (1, "bacl_representation"),
        (0, "lst_1"),
        (0, "stepwise_head_expert"),
        (1, "stepwise_head_expert"),
        *[(0, name) for name in fine_tunes],
        *[(1, name) for name in fine_tunes],
        (0, "lst_2"),
        (0, "stepwise"),
        (1, "stepwise"),
        (0, "lst"),
    ]
    assert {job.key: job.path_phases for job in jobs if job.key[0] == 0 and job.phase.startswith("lst")} == {
        (0, "lst_base"): 4,
        (0, "lst_1"): 3,
        (0, "lst_2"): 2,
        (0, "lst"): 1,
    }
    priorities = {job.key: job.priority for job in jobs}
    assert {priorities[0, "lst_base"], priorities[1, "pretrain"], priorities[1, "bacl_representation"]} == {450}
    assert [priorities[0, name] for name in ("lst_1", "lst_2", "lst")] == [150, 100, 50]  # 50 iterations each
    assert priorities[0, "stepwise_head_expert"] == 150 and priorities[0, "stepwise"] == 75
    assert {priorities[seed, name] for seed in (0, 1) for name in [*fine_tunes, "stepwise_head_expert"]} == {150}
    needs = {job.key: job.needs for job in jobs}
    assert needs[1, "ce"] == ((1, "pretrain"),) and needs[0, "ce"] == ()  # seed 0's pretrain is done
    assert needs[0, "stepwise"] == ((0, "stepwise_head_expert"),)  # its input and its teacher: one job
    assert needs[0, "lst_2"] == ((0, "lst_1"),) and needs[1, "fcbl_replay"] == ((1, "bacl_representation"),)
    assert all(keys.index(need) < keys.index(key) for key, inputs in needs.items() for need in inputs)
    # only what the wanted entries need: ce alone needs its pretrain, which now leads by its own path only
    jobs = phase_jobs(project.phases, chains, [(3, "ce")])
    assert [(job.key, job.needs, job.priority) for job in jobs] == [
        ((3, "pretrain"), (), PRETRAIN_ITERS + FINETUNE_ITERS),
        ((3, "ce"), ((3, "pretrain"),), FINETUNE_ITERS),
    ]
    assert phase_jobs(project.phases, chains, [(3, "ce")], done={(3, "pretrain"), (3, "ce")}) == []


class PhaseRuns:
    """A thread-safe stand-in for run_phase under --jobs: fake_phase_run's files, each run a little long, and what
    the tests check: the starts and ends in order, the most runs at once, each run's OMP_NUM_THREADS and log. The
    runs of ``together`` wait for each other (a barrier), so they provably run at once; those of ``fail`` raise as
    a failed process does."""

    def __init__(self, metrics_of, together=(), fail=()):
        self.calls, self.events, self.threads, self.logs = [], [], {}, {}
        self.running = self.most = 0
        self.lock = threading.Lock()
        self.write = fake_phase_run(self.calls, metrics_of)
        self.together, self.fail = set(together), set(fail)
        self.barrier = threading.Barrier(max(1, len(self.together)))

    def __call__(self, config_file, phase, seed, seed_dir, overrides, env=None, log_path=None):
        key = (seed, phase.name)
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.events.append(("start", *key))
            self.threads[key], self.logs[key] = env["OMP_NUM_THREADS"], log_path
        try:
            if key in self.together:
                self.barrier.wait(timeout=10)
            time.sleep(0.01)
            if key in self.fail:
                raise subprocess.CalledProcessError(1, ["train"])
            with self.lock:
                return self.write(config_file, phase, seed, seed_dir, overrides, env=env, log_path=log_path)
        finally:
            with self.lock:
                self.events.append(("end", *key))
                self.running -= 1


def test_jobs_run_the_phases_of_all_seeds_two_at_a_time_with_the_cores_split(tmp_path, monkeypatch, capsys):
    script = load_repo_module("scripts/leaderboard.py")
    runs = PhaseRuns(lambda name, seed: metrics(10.0 + seed), together=[(0, "pretrain"), (1, "pretrain")])
    monkeypatch.setattr(script, "run_phase", runs)
    monkeypatch.setattr(script.os, "cpu_count", lambda: 2)
    rebuilt, build_outputs = [], script.build_outputs
    monkeypatch.setattr(script, "build_outputs", lambda *args: rebuilt.append(args) or build_outputs(*args))
    out, docs = str(tmp_path / "out"), str(tmp_path / "docs")
    common = ["train.max_iter=9", "--quick", "--output-dir", out, "--docs-dir", docs, "--entries", "ce", "loce"]
    common += ["--jobs", "2"]

    script.main([*common, "--seeds", "0", "1", "--dry-run"])  # every phase 9 iterations
    assert capsys.readouterr().out.splitlines() == [
        "--jobs 2: 6 phase run(s), in the order they are preferred",
        "  seed 0 phase pretrain: path 18 iterations over 2 phase(s), needs nothing",
        "  seed 1 phase pretrain: path 18 iterations over 2 phase(s), needs nothing",
        "  seed 0 phase ce: path 9 iterations over 1 phase(s), needs pretrain",
        "  seed 0 phase loce: path 9 iterations over 1 phase(s), needs pretrain",
        "  seed 1 phase ce: path 9 iterations over 1 phase(s), needs pretrain",
        "  seed 1 phase loce: path 9 iterations over 1 phase(s), needs pretrain",
    ]
    assert runs.calls == [] and not os.path.exists(out)

    script.main([*common, "--seeds", "0", "1"])
    assert sorted(runs.calls) == sorted((s, n) for s in (0, 1) for n in ("pretrain", "ce", "loce"))  # once each
    started, ended = ({(s, n): runs.events.index((kind, s, n)) for s, n in runs.calls} for kind in ("start", "end"))
    assert all(started[s, n] > ended[s, "pretrain"] for s in (0, 1) for n in ("ce", "loce"))
    assert runs.most == 2  # the pretrains met at their barrier; never more than 2
    assert runs.threads[0, "pretrain"] == runs.threads[1, "pretrain"] == "1"  # 2 cores, 2 runnable
    assert runs.logs[1, "ce"] == os.path.join(out, "seed1", "logs", "ce.log")
    printed = capsys.readouterr().out
    log = os.path.join(out, "seed0", "logs", "pretrain.log")
    assert f"seed 0 phase pretrain: started, 1 thread(s), log {log}" in printed
    assert f"seed 0 phase pretrain: finished in 1.0 min, 1 thread(s), log {log}" in printed  # the fake's 60 s
    results = os.path.join(docs, "results")
    assert sorted(os.listdir(results)) == ["ce_seed0.json", "ce_seed1.json", "loce_seed0.json", "loce_seed1.json"]
    for seed, entry in ((0, "ce"), (0, "loce"), (1, "ce"), (1, "loce")):
        record = read_json(os.path.join(results, f"{entry}_seed{seed}.json"))
        assert record["omp_num_threads"] == runs.threads[seed, entry]  # its own last phase's
        assert record["chain"] == ["pretrain", entry] and record["wall_s"] == 120.0
    assert record["command"] == "scripts/leaderboard.py train.max_iter=9 --quick --entries loce --seeds 1"
    assert len(rebuilt) == 1 and not os.path.exists(os.path.join(out, "seed0", "run.lock"))
    assert open(os.path.join(docs, "leaderboard.md")).read().splitlines()[2].startswith("| ce | 10.50 ± 0.71 |")

    # seed 0's results exist: only seed 2 trains; its pretrain is the only runnable job (both cores), then ce and
    # loce split them
    runs.calls.clear()
    runs.threads.clear()
    script.main([*common, "--seeds", "0", "2"])
    assert sorted(runs.calls) == [(2, "ce"), (2, "loce"), (2, "pretrain")]
    assert runs.threads == {(2, "pretrain"): "2", (2, "ce"): "1", (2, "loce"): "1"}
    assert read_json(os.path.join(results, "ce_seed2.json"))["omp_num_threads"] == "1"
    assert "ce seed 0: " in capsys.readouterr().out
    table = open(os.path.join(docs, "leaderboard.md")).read()
    assert len(rebuilt) == 2 and "seed 2: 0.05 h for 2 of 10 entries, 1 thread(s) per process" in table
    assert table.endswith(
        f"Rebuilt from {results} by `python scripts/leaderboard.py --quick --from-results --docs-dir {docs}`.\n"
    )
    command = script.rebuild_command("elsewhere", "docs/leaderboard/v2", script.SETTINGS["v2", False])
    assert command == (
        "python scripts/leaderboard.py --protocol v2 --from-results --docs-dir docs/leaderboard/v2"
        " --results-dir elsewhere"
    )

    assert [script.job_threads(2, 2, n) for n in (1, 2, 3)] == [2, 1, 1]
    assert script.job_threads(16, 4, 3) == 5 and script.job_threads(2, 4, 3) == 1  # never fewer than 1


def test_a_failed_phase_job_skips_the_phases_that_need_it(tmp_path, monkeypatch, capsys):
    script = load_repo_module("scripts/leaderboard.py")
    runs = PhaseRuns(lambda name, seed: metrics(10.0 + seed), fail=[(0, "pretrain")])
    monkeypatch.setattr(script, "run_phase", runs)
    out, docs = str(tmp_path / "out"), str(tmp_path / "docs")
    common = ["--quick", "--output-dir", out, "--docs-dir", docs, "--entries", "ce", "loce"]
    log = os.path.join(out, "seed0", "logs", "pretrain.log")
    named = re.escape(f": seed 0 phase pretrain (exit status 1, log {log})")
    with pytest.raises(RuntimeError, match=rf"--jobs: 1 phase\(s\) failed, .*{named}$"):
        script.main([*common, "--seeds", "0", "1", "--jobs", "2"])
    assert sorted(runs.calls) == [(1, "ce"), (1, "loce"), (1, "pretrain")]  # seed 1 went on
    assert ("start", 0, "ce") not in runs.events and ("start", 0, "loce") not in runs.events
    printed = capsys.readouterr().out
    assert "seed 0 phase ce: skipped, it needs pretrain, which did not finish" in printed
    assert f"seed 0 phase pretrain: failed (exit status 1), log {log}" in printed
    assert sorted(os.listdir(os.path.join(docs, "results"))) == ["ce_seed1.json", "loce_seed1.json"]
    assert not os.path.exists(os.path.join(docs, "leaderboard.md"))  # no table after a failure
    with pytest.raises(SystemExit):
        script.main([*common, "--jobs", "0"])
    assert "--jobs 0: must be at least 1" in capsys.readouterr().err
