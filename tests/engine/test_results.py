"""Results files and the mean ± std tables built from them (ltdet2.engine.results)."""

import json
import math
import os

import pytest

from ltdet2.engine.results import (
    format_mean_std_table,
    format_paired_differences,
    holm,
    load_results_files,
    mean_per_class_ap,
    mean_std_cell,
    paired_t_test,
    phase_record,
    results_record,
    t_interval,
    t_quantile,
    write_results_file,
)


def fake_record(seed, offset):
    metrics = {"AP": 40.0 + offset, "AP50": 60.0, "APr": 2.0 * offset, "APc": 35.0, "APf": 60.0 - offset}
    return results_record(
        project="projects/x.py",
        seed=seed,
        command="cmd",
        machine="test machine",
        commit="abc1234",
        phases={"pretrain": {"bbox": dict(metrics)}, "finetune": {"bbox": {k: v + 1 for k, v in metrics.items()}}},
    )


def test_table_gives_mean_and_sample_std_per_phase(tmp_path):
    for seed, offset in ((0, 1.0), (1, 3.0), (2, 5.0)):
        write_results_file(str(tmp_path / f"seed{seed}.json"), fake_record(seed, offset))
    records = load_results_files(str(tmp_path))
    assert [r["seed"] for r in records] == [0, 1, 2] and records[0]["machine"] == "test machine"
    lines = format_mean_std_table(records).splitlines()
    assert lines[0].startswith("| phase (bbox; mean ± std over seeds 0, 1, 2) | AP | AP50 | APr | APc | APf |")
    # AP 41, 43, 45: mean 43, sample std 2; APr 2, 6, 10: mean 6, std 4
    assert (
        lines[2]
        == "| pretrain | 43.00 ± 2.00 | 60.00 ± 0.00 | 6.00 ± 4.00 | 35.00 ± 0.00 | 57.00 ± 2.00 | 2.00, 6.00, 10.00 |"
    )
    assert lines[3].startswith("| finetune | 44.00 ± 2.00 | 61.00 ± 0.00 | 7.00 ± 4.00 |")


def test_table_columns_are_chosen_and_a_metric_no_class_has_is_a_dash():
    records = [fake_record(seed, offset) for seed, offset in ((0, 1.0), (1, 3.0))]
    for record in records:  # a phase without rare classes: APr undefined on every seed
        record["phases"]["pretrain"]["bbox"]["APr"] = float("nan")
    lines = format_mean_std_table(records, "bbox", ("AP", "APr")).splitlines()
    assert lines[0] == "| phase (bbox; mean ± std over seeds 0, 1) | AP | APr | APr per seed |"
    assert lines[2] == "| pretrain | 42.00 ± 1.41 | – |  |"
    assert lines[3] == "| finetune | 43.00 ± 1.41 | 5.00 ± 2.83 | 3.00, 7.00 |"


def test_one_seed_has_no_std_and_a_phase_some_seeds_ran_is_labelled_with_them():
    assert "| pretrain | 41.00 | 60.00 | 2.00 |" in format_mean_std_table([fake_record(0, 1.0)])
    partial = fake_record(1, 3.0)
    del partial["phases"]["finetune"]
    lines = format_mean_std_table([fake_record(0, 1.0), partial, fake_record(2, 5.0)]).splitlines()
    assert lines[2].startswith("| pretrain | 43.00 ± 2.00 |")
    # finetune: seeds 0 and 2 (AP 42, 46): mean 44, sample std 2.83
    assert lines[3].startswith("| finetune (seeds 0, 2 only) | 44.00 ± 2.83 |") and lines[3].endswith("| 3.00, 11.00 |")


def test_load_names_a_file_that_is_not_a_results_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results files"):
        load_results_files(str(tmp_path))
    (tmp_path / "notes.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match=r"notes.json is not a results file: no \['seed', 'phases'\]"):
        load_results_files(str(tmp_path))


def test_phase_record_reads_metrics_and_per_class_ap(tmp_path):
    done = tmp_path / "phase_done.json"
    done.write_text(json.dumps({"results": {"bbox": {"AP": 12.5}}}))
    assert phase_record(str(done)) == {"bbox": {"AP": 12.5}}
    os.makedirs(tmp_path / "inference")
    (tmp_path / "inference" / "per_class_ap_bbox.json").write_text(json.dumps([{"id": 1, "AP": 3.0}]))
    assert phase_record(str(done))["per_class_ap_bbox"] == [{"id": 1, "AP": 3.0}]
    with pytest.raises(ValueError, match="holds no 'segm' results"):
        phase_record(str(done), task="segm")
    done.write_text(json.dumps({"results": {"bbox": {"AP": 12.5}, "segm": {"AP": 11.0}}}))
    both = phase_record(str(done))  # every task the phase was evaluated on
    assert both["segm"] == {"AP": 11.0} and both["bbox"] == {"AP": 12.5} and "per_class_ap_segm" not in both
    assert phase_record(str(done), task="segm") == {"segm": {"AP": 11.0}}


def test_mean_per_class_ap_averages_seeds_and_keeps_undefined_classes():
    records = []
    for seed, (ap_a, ap_b) in enumerate(((10.0, None), (30.0, None))):
        record = fake_record(seed, 1.0)
        record["phases"]["pretrain"]["per_class_ap_bbox"] = [
            {"id": 2, "name": "b", "frequency": "r", "image_count": 1, "AP": ap_b},
            {"id": 1, "name": "a", "frequency": "f", "image_count": 50, "AP": ap_a},
        ]
        records.append(record)
    mean = mean_per_class_ap(records, "pretrain")
    assert [(c["id"], c["AP"]) for c in mean] == [(1, 20.0), (2, None)]
    assert mean[0]["image_count"] == 50
    with pytest.raises(
        ValueError, match=r"phase 'finetune' has no per_class_ap_bbox in the results of seed\(s\) \[0, 1\]"
    ):
        mean_per_class_ap(records, "finetune")


def test_t_quantile_matches_tables():
    # Student-t table values, and the closed form for 2 degrees of freedom: t_q = (2q - 1) / sqrt(2 q (1 - q))
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-6)
    assert t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-6)
    assert t_quantile(0.975, 9) == pytest.approx(2.262157, abs=1e-6)
    q = 1 - 0.05 / 6
    assert t_quantile(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-9)


def test_paired_t_test_of_three_seeds_by_hand():
    test = paired_t_test([1.0, 2.0, 3.0])
    assert (test["n"], test["mean"], test["std"]) == (3, 2.0, 1.0)
    half = 4.302653 / math.sqrt(3)  # t_{0.975, 2} * std / sqrt(n)
    assert test["ci95"] == pytest.approx((2.0 - half, 2.0 + half), abs=1e-6)
    t = 2.0 / (1.0 / math.sqrt(3))  # two-sided p with 2 degrees of freedom: 1 - t / sqrt(2 + t^2)
    assert test["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9) and test["p"] == pytest.approx(
        0.07418, abs=1e-5
    )
    assert t_interval(test, 0.05) == pytest.approx(test["ci95"])
    # a seed without the metric (NaN) is left out; with fewer than 2 there is no interval
    assert paired_t_test([1.0, float("nan"), 3.0])["n"] == 2
    assert paired_t_test([4.0, float("nan")]) == {"n": 1, "mean": 4.0, "differences": [4.0]}
    # every seed the same difference: no spread, p 0 and a zero-width interval (p 1 when it is 0)
    same = paired_t_test([1.0, 1.0, 1.0])
    assert (same["std"], same["p"], same["ci95"]) == (0.0, 0.0, (1.0, 1.0))
    assert paired_t_test([0.0, 0.0])["p"] == 1.0


def test_holm_steps_down_and_stops_at_the_first_p_at_or_above_its_level():
    # 3 comparisons: 0.01 < 0.05/3 rejected; 0.03 >= 0.05/2: Holm stops (rejected without correction: 0.03 < 0.05);
    # 0.04 after the stop is not rejected although 0.04 < 0.05, its own level
    decisions = holm([0.03, 0.04, 0.01])
    assert [d["rank"] for d in decisions] == [2, 3, 1]
    assert [d["alpha"] for d in decisions] == pytest.approx([0.025, 0.05, 0.05 / 3])
    assert [d["rejected"] for d in decisions] == [False, False, True]
    assert [d["after_stop"] for d in decisions] == [False, True, False]
    assert [d["rejected"] for d in holm([0.001, 0.02, 0.04])] == [
        True,
        True,
        True,
    ]  # 0.001<0.0167, 0.02<0.025, 0.04<0.05
    assert [d["rejected"] for d in holm([0.05 / 3, 0.0])] == [True, True]  # 0.0167 < 0.05/1 after 0 < 0.025
    assert holm([0.05, 0.05])[0]["rejected"] is False  # p equal to its level is not rejected


def paired_records(*diffs_per_seed):
    """Records of seeds 0.. whose finetune - pretrain differences are ``diffs_per_seed`` (AP, APr, APc)."""
    records = []
    for seed, diffs in enumerate(diffs_per_seed):
        base = {"AP": 40.0, "APr": 5.0, "APc": 30.0}
        finetune = {metric: value + diff for (metric, value), diff in zip(base.items(), diffs)}
        phases = {"pretrain": {"bbox": base}, "finetune": {"bbox": finetune}}
        records.append(results_record(project="p", seed=seed, command="c", machine="m", commit="x", phases=phases))
    return records


def test_paired_differences_give_the_interval_and_holm_decides_what_is_a_result():
    # finetune - pretrain: AP +9, +10, +11 (p 0.0033), APr +2, +3, +4 (p 0.035), APc +0, +1, +2 (p 0.23)
    records = paired_records((9.0, 2.0, 0.0), (10.0, 3.0, 1.0), (11.0, 4.0, 2.0))
    lines = format_paired_differences(records, [("finetune", "pretrain")], metrics=("AP", "APr", "APc")).splitlines()
    assert lines[0] == (
        "| bbox: method − reference (paired by seed; seeds 0, 1, 2) | AP (per seed) | APr (per seed) | APc (per seed) "
        "| result (Holm-corrected CI excludes 0) |"
    )
    # AP: 10 ± t_{0.975,2}/sqrt(3) = 10 ± 2.48; Holm rank 1 of 3: t_{1-0.05/6, 2} = 7.6488, 10 ± 4.42
    # APr: rejected without correction (95% CI [0.52, 5.48]), not with it: rank 2 at 97.5%, t = 6.2053, 3 ± 3.58
    # APc: after the stop, at rank 3's level (95%)
    assert lines[2] == (
        "| finetune − pretrain "
        "| +10.00 ± 1.00 (+9.00, +10.00, +11.00); p=0.0033; 95% CI [+7.52, +12.48]; Holm 98.33% CI [+5.58, +14.42]: "
        "**result** "
        "| +3.00 ± 1.00 (+2.00, +3.00, +4.00); p=0.035; 95% CI [+0.52, +5.48]; Holm 97.50% CI [-0.58, +6.58]: "
        "no result "
        "| +1.00 ± 1.00 (+0.00, +1.00, +2.00); p=0.23; 95% CI [-1.48, +3.48]; Holm 95.00% CI [-1.48, +3.48]: no result "
        "| AP |"
    )
    assert lines[4] == (
        "Paired t-test over the seeds that ran both phases (n − 1 degrees of freedom); 95% CI uncorrected; Holm over "
        "this table's m = 3 comparisons (each (pair, metric) cell with an interval; family-wise α = 0.05): 1 result; "
        "Holm stopped at rank 2 (finetune − pretrain APr, p=0.035 ≥ 0.05/2 = 0.025): it and every comparison ranked "
        "after it are no result."
    )
    # alone in its table (m = 1), APr's interval is the 95% one and excludes 0: a result
    alone = format_paired_differences(records, [("finetune", "pretrain")], metrics=("APr",)).splitlines()
    assert alone[2].endswith("Holm 95.00% CI [+0.52, +5.48]: **result** | APr |")
    assert alone[4].endswith(
        "m = 1 comparison (each (pair, metric) cell with an interval; family-wise α = 0.05): 1 result; "
        "Holm rejected every comparison."
    )
    with pytest.raises(ValueError, match="phase 'missing' is not in the results of seed"):
        format_paired_differences(records, [("missing", "pretrain")])
    with pytest.raises(ValueError, match="at least 2 seeds"):
        format_paired_differences(records[:1], [("finetune", "pretrain")])


def test_paired_differences_say_when_holm_stopped_before_an_interval_that_excludes_0():
    # AP p 0.0033 (rank 1, result), APr p 0.035 (rank 2 at 0.025: Holm stops), APc +1.6, +2.6, +3.6: p 0.046 (rank 3
    # at 0.05, so its own 95% interval excludes 0, but Holm stopped before it)
    records = paired_records((9.0, 2.0, 1.6), (10.0, 3.0, 2.6), (11.0, 4.0, 3.6))
    line = format_paired_differences(records, [("finetune", "pretrain")], metrics=("AP", "APr", "APc")).splitlines()[2]
    assert line.endswith(
        "| +2.60 ± 1.00 (+1.60, +2.60, +3.60); p=0.046; 95% CI [+0.12, +5.08]; Holm 95.00% CI [+0.12, +5.08]: "
        "no result (Holm stopped) | AP |"
    )


def test_paired_differences_use_the_seeds_that_ran_both_phases():
    records = [fake_record(seed, offset) for seed, offset in ((0, 1.0), (1, 3.0), (2, 5.0))]
    records[1]["phases"]["finetune"]["bbox"]["AP"] = 50.0  # seed 1 differs; then drop its finetune
    del records[1]["phases"]["finetune"]
    lines = format_paired_differences(records, [("finetune", "pretrain")], metrics=("AP",)).splitlines()
    # 2 seeds, both +1: no spread, a zero-width interval that excludes 0
    assert lines[2] == (
        "| finetune − pretrain (seeds 0, 2 only) | +1.00 ± 0.00 (+1.00, +1.00); p=0; 95% CI [+1.00, +1.00]; "
        "Holm 95.00% CI [+1.00, +1.00]: **result** | AP |"
    )
    del records[2]["phases"]["finetune"]
    lines = format_paired_differences(
        records, [("finetune", "pretrain"), ("pretrain", "finetune")], metrics=("AP",)
    ).splitlines()
    assert (
        lines[2]
        == "| finetune − pretrain (seed 0 only) | +1.00 (+1.00); n<2, no interval | no result: seeds with both: 0 |"
    )
    assert lines[5].endswith(
        "m = 0 comparisons (each (pair, metric) cell with an interval; family-wise α = 0.05; "
        "2 cells with n<2 not counted): none (every cell has n<2), so no result."
    )


def test_mean_std_cell_uses_the_seeds_that_have_the_value():
    nan = float("nan")
    assert mean_std_cell([1.0, 2.0, 4.0]) == "2.33 ± 1.53"  # sample std (n-1)
    assert mean_std_cell([1.0, nan, 3.0]) == "2.00 ± 1.41" and mean_std_cell([nan, 5.0]) == "5.00"
    assert mean_std_cell([nan, nan]) == "–"


def test_machine_description_names_the_cpu_instructions(monkeypatch):
    """bf16's speed depends on them (docs/benchmarks.md#cpu-speed): "... cores (<cpu>, AVX2), no GPU"."""
    from ltdet2.engine.results import machine_description
    from ltdet2.utils import cpu

    monkeypatch.setattr(cpu.torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(cpu, "has_native_cpu_bfloat16", lambda: True)
    assert ", AVX512, bf16), " in machine_description()
    monkeypatch.setattr(cpu, "has_native_cpu_bfloat16", lambda: False)
    assert ", AVX512), " in machine_description()
