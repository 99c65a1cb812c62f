"""scripts/compare_leaderboard_runs.py: two runs of the same entries, paired by seed, and the spread check."""

from ltdet2.engine.leaderboard import write_entry_results

from fixtures.models import load_repo_module


def record(entry, seed, ap, apr, apf):
    tasks = {task: {"AP": ap, "AP50": ap + 10, "APr": apr, "APc": ap, "APf": apf} for task in ("bbox", "segm")}
    return {"entry": entry, "seed": seed, "phases": {entry: tasks}, "wall_s": 600.0, "train_s": 540.0}


def test_changed_run_is_paired_by_seed_and_checked_against_the_reference_spread(tmp_path):
    script = load_repo_module("scripts/compare_leaderboard_runs.py")
    reference, changed = str(tmp_path / "fp32"), str(tmp_path / "bf16")
    for seed, ap in enumerate([30.0, 32.0, 34.0]):  # reference AP std 2.0
        write_entry_results(reference, record("ce", seed, ap, apr=2.0, apf=60.0 + seed))
        # AP +1 (within the spread), APf +5 on every seed (outside: the reference's APf std is 1.0)
        write_entry_results(changed, record("ce", seed, ap + 1.0, apr=2.0, apf=65.0 + seed))
    text = script.main(["--reference", reference, "--changed", changed, "--label", "bf16", "--entries", "ce"])
    assert "| ce (bf16) |" in text and "| ce |" in text
    assert "| ce | bbox AP | 32.00 ± 2.00 (3) | 33.00 (3) | +1.00 | yes |" in text
    assert "| ce | bbox APf | 61.00 ± 1.00 (3) | 66.00 (3) | +5.00 | **no** |" in text
    # paired by seed: the constant +5 APf is exact (std 0), so its interval excludes 0 in both tasks
    assert text.count("+5.00 ± 0.00 (+5.00, +5.00, +5.00)") == 2
