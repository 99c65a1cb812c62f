"""Results files and the mean ± std tables built from them (ltdet2.engine.results)."""

import json
import os

import pytest

from ltdet2.engine.results import (
    format_mean_std_table,
    format_paired_differences,
    load_results_files,
    mean_per_class_ap,
    mean_std_cell,
    phase_record,
    results_record,
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


def test_paired_differences_say_whether_a_gap_is_beyond_the_seed_spread():
    records = [fake_record(seed, offset) for seed, offset in ((0, 1.0), (1, 3.0), (2, 5.0))]
    # finetune - pretrain is +1 on every metric and seed: paired std 0 < 1 (yes); seeds' AP spread 2 > 1 (no),
    # APc spread 0 < 1 (yes)
    lines = format_paired_differences(records, [("finetune", "pretrain")], metrics=("AP", "APc")).splitlines()
    assert lines[0] == (
        "| bbox: method − reference (paired by seed; seeds 0, 1, 2) | AP (per seed) | APc (per seed) "
        "| beyond spread (paired / seeds) |"
    )
    assert lines[2] == (
        "| finetune − pretrain | +1.00 ± 0.00 (+1.00, +1.00, +1.00) | +1.00 ± 0.00 (+1.00, +1.00, +1.00) "
        "| AP yes/no, APc yes/yes |"
    )
    # signs that disagree between seeds are no result whatever the mean
    records[1]["phases"]["finetune"]["bbox"]["APc"] = 30.0
    assert lines[2] != format_paired_differences(records, [("finetune", "pretrain")], metrics=("APc",)).splitlines()[2]
    assert format_paired_differences(records, [("finetune", "pretrain")], metrics=("APc",)).endswith("| APc no/no |")
    with pytest.raises(ValueError, match="phase 'missing' is not in the results of seed"):
        format_paired_differences(records, [("missing", "pretrain")])
    with pytest.raises(ValueError, match="at least 2 seeds"):
        format_paired_differences(records[:1], [("finetune", "pretrain")])


def test_paired_differences_use_the_seeds_that_ran_both_phases():
    records = [fake_record(seed, offset) for seed, offset in ((0, 1.0), (1, 3.0), (2, 5.0))]
    records[1]["phases"]["finetune"]["bbox"]["AP"] = 50.0  # seed 1 differs; then drop its finetune
    del records[1]["phases"]["finetune"]
    lines = format_paired_differences(records, [("finetune", "pretrain")], metrics=("AP",)).splitlines()
    assert lines[2] == "| finetune − pretrain (seeds 0, 2 only) | +1.00 ± 0.00 (+1.00, +1.00) | AP yes/no |"
    del records[2]["phases"]["finetune"]
    lines = format_paired_differences(records, [("finetune", "pretrain")], metrics=("AP",)).splitlines()
    assert lines[2] == "| finetune − pretrain (seed 0 only) | — | no result: seeds with both: 0 |"


def test_mean_std_cell_uses_the_seeds_that_have_the_value():
    nan = float("nan")
    assert mean_std_cell([1.0, 2.0, 4.0]) == "2.33 ± 1.53"  # sample std (n-1)
    assert mean_std_cell([1.0, nan, 3.0]) == "2.00 ± 1.41" and mean_std_cell([nan, 5.0]) == "5.00"
    assert mean_std_cell([nan, nan]) == "–"
