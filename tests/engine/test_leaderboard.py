"""The leaderboard (projects/leaderboard.py, scripts/leaderboard.py, ltdet2.engine.leaderboard): every entry's phases
instantiate, every entry trains the same number of iterations, only entries are evaluated; the script trains a
shared phase once per seed, writes one results file per (entry, seed) and skips those that exist (the training
is faked: each phase run writes a finished phase's files); the table and plots from fake results files."""

import json
import os
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
    phase_inputs,
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
    """A stand-in for scripts/leaderboard.py's run_phase: writes what a finished phase leaves behind."""

    def run_phase(config_file, phase, seed, seed_dir, overrides):
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
            json.dump({"wall_s": 60.0, "cpu_s": 100.0, "load_avg": [1.0, 1.5, 2.0]}, f)
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
    assert timing["wall_s"] == wall > 0 and 0.05 < timing["cpu_s"] and len(timing["load_avg"]) == 3
    assert script.phase_timing(phase) == timing
    missing = SimpleNamespace(name="q", output_dir=str(tmp_path / "none"))
    unrecorded = script.phase_timing(missing)
    assert np.isnan(unrecorded["wall_s"]) and np.isnan(unrecorded["cpu_s"]) and unrecorded["load_avg"] is None


def test_quick_run_folders_are_its_own():
    script = load_repo_module("scripts/leaderboard.py")
    full, quick = script.SETTINGS[False], script.SETTINGS[True]
    assert quick[1] == [0] and full[1] == [0, 1, 2]
    assert quick[2] != full[2] and quick[3].startswith(full[3] + "/")


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


def test_jobs_run_each_seed_in_its_own_process_with_the_cores_split(tmp_path, monkeypatch, capsys):
    import threading

    script = load_repo_module("scripts/leaderboard.py")
    calls, lock, launched = [], threading.Lock(), []
    monkeypatch.setattr(script, "run_phase", fake_phase_run(calls, lambda name, seed: metrics(10.0 + seed)))
    monkeypatch.setattr(script.os, "cpu_count", lambda: 4)

    def run_in_process(command, env, log_path):  # the seed's process, here: its argv run by main under a lock
        assert command[1] == os.path.abspath(script.__file__) and log_path.endswith("leaderboard.log")
        with lock:
            launched.append((command[-1], env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]))
            monkeypatch.setenv("OMP_NUM_THREADS", env["OMP_NUM_THREADS"])  # what the process would see
            script.main(command[2:])
        return 0

    monkeypatch.setattr(script, "run_seed_job", run_in_process)
    out, docs = str(tmp_path / "out"), str(tmp_path / "docs")
    common = ["train.max_iter=9", "--quick", "--output-dir", out, "--docs-dir", docs, "--entries", "ce"]
    script.main([*common, "--seeds", "0", "1", "--jobs", "2"])
    assert sorted(launched) == [("0", "2", "2"), ("1", "2", "2")]  # 4 cores, 2 jobs: 2 threads each
    assert sorted(calls) == [(s, n) for s in (0, 1) for n in ("ce", "pretrain")]
    record = read_json(os.path.join(docs, "results", "ce_seed1.json"))
    assert record["command"] == "scripts/leaderboard.py train.max_iter=9 --quick --entries ce --seeds 1"
    table = open(os.path.join(docs, "leaderboard.md")).read()  # rebuilt once, by the parent
    assert "seed 1: 0.03 h for 1 of 10 entries, 2 thread(s) per process" in table  # pretrain + ce, 60 s each
    assert table.splitlines()[2].startswith("| ce | 10.50 ± 0.71 |")

    commands = script.seed_job_commands(
        script.argparse.Namespace(config_file="p.py", quick=False, entries=None, overrides=["a=1"]), [3], "o", "d", "r"
    )
    assert commands[3][2:] == [
        "a=1",
        "--config-file",
        "p.py",
        "--output-dir",
        "o",
        "--docs-dir",
        "d",
        "--results-dir",
        "r",
        "--no-outputs",
        "--seeds",
        "3",
    ]

    # rounds of --jobs seeds split the cores; a last, smaller round gets more threads per seed
    assert script.seed_threads([0, 1, 2], 2, 2) == {0: 1, 1: 1, 2: 2}
    assert script.seed_threads([5, 6, 7, 8, 9], 2, 4) == {5: 2, 6: 2, 7: 2, 8: 2, 9: 4}
    assert script.seed_threads([0, 1], 3, 2) == {0: 1, 1: 1}  # more jobs than seeds: one round of 2
    assert script.seed_threads([0, 1, 2], 4, 2) == {0: 1, 1: 1, 2: 1}  # never fewer than 1

    monkeypatch.setattr(script, "run_seed_job", lambda command, env, log_path: int(command[-1] == "1"))
    with pytest.raises(RuntimeError, match=r"seeds \[1\] failed; see .*seed1.leaderboard.log"):
        script.main([*common, "--seeds", "0", "1", "--jobs", "2"])
    with pytest.raises(SystemExit):
        script.main([*common, "--jobs", "0"])
    assert "--jobs 0: must be at least 1" in capsys.readouterr().err
