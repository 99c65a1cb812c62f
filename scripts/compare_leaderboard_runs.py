#!/usr/bin/env python
"""Two runs of the same leaderboard entries side by side: a change of how they train (e.g. bf16 training,
``train.amp.enabled=True``) against the committed results, from the results files alone.

    python scripts/compare_leaderboard_runs.py --reference docs/leaderboard/results \
        --changed docs/results/bf16_training_check --label bf16 --entries ce loce \
        --output docs/results/bf16_training_check/comparison.md

The changed run's entries are renamed ``<entry> (<label>)``; the table shows, per entry and run, mean ± std over
the seeds (box AP, AP50, APr, APc, APf, mask AP, mask APr, training and wall time), then for box and for mask
metrics the paired differences changed − reference by seed (same seed: same data order and initialisation),
each task one table Holm-corrected over its cells (ltdet2.engine.results.format_paired_differences), and the
"within the seed spread" check a precision change is adopted on (issue 29): per entry and metric, whether
|mean(changed) − mean(reference)| is at most the reference's standard deviation over the seeds.
"""

import argparse
import os

import numpy as np

from ltdet2.engine.leaderboard import format_leaderboard_table, load_entry_results, records_by_seed
from ltdet2.engine.results import format_paired_differences

SPREAD_METRICS = (("bbox", "AP"), ("bbox", "APr"), ("bbox", "APf"), ("segm", "AP"), ("segm", "APr"), ("segm", "APf"))


def renamed(records, label):
    """The records with every entry named ``<entry> (<label>)`` (the phase key too)."""
    out = []
    for record in records:
        name = f"{record['entry']} ({label})"
        out.append({**record, "entry": name, "phases": {name: record["phases"][record["entry"]]}})
    return out


def spread_check(reference, changed, entries, label):
    """Markdown: per entry and metric, the reference's mean ± std, the changed run's mean, the difference and
    whether it is within the reference's std (seeds of each run as they are; at least 2 reference seeds)."""
    lines = [
        f"| entry | metric | reference mean ± std (seeds) | {label} mean (seeds) | difference | within the spread |",
        "|---|---|---:|---:|---:|---|",
    ]
    for entry in entries:
        ref = [r for r in reference if r["entry"] == entry]
        new = [r for r in changed if r["entry"] == f"{entry} ({label})"]
        if len(ref) < 2 or not new:
            lines.append(f"| {entry} | – | {len(ref)} seed(s) | {len(new)} seed(s) | – | not enough seeds |")
            continue
        for task, metric in SPREAD_METRICS:
            a = np.array([r["phases"][entry][task][metric] for r in ref], dtype=np.float64)
            b = np.array([r["phases"][f"{entry} ({label})"][task][metric] for r in new], dtype=np.float64)
            difference, std = b.mean() - a.mean(), a.std(ddof=1)
            lines.append(
                f"| {entry} | {task} {metric} | {a.mean():.2f} ± {std:.2f} ({len(a)}) | {b.mean():.2f} ({len(b)}) "
                f"| {difference:+.2f} | {'yes' if abs(difference) <= std else '**no**'} |"
            )
    return "\n".join(lines)


def comparison(reference_dir, changed_dir, label, entries):
    """The markdown report of the module docstring."""
    reference = [r for r in load_entry_results(reference_dir) if r["entry"] in entries]
    changed = renamed([r for r in load_entry_results(changed_dir) if r["entry"] in entries], label)
    if not changed:
        raise ValueError(f"{changed_dir}: no results of entries {entries}")
    order = [name for entry in entries for name in (entry, f"{entry} ({label})")]
    records = reference + changed
    parts = [
        f"Reference: `{reference_dir}`; {label}: `{changed_dir}`.",
        format_leaderboard_table(records, entries=order),
    ]
    merged = records_by_seed(records, order)
    seeds_with_both = [r for r in merged if any(e in r["phases"] and f"{e} ({label})" in r["phases"] for e in entries)]
    pairs = [(f"{e} ({label})", e) for e in entries]
    if len(seeds_with_both) >= 2:
        for task in ("bbox", "segm"):
            present = [(a, b) for a, b in pairs if any(a in r["phases"] and b in r["phases"] for r in merged)]
            parts.append(format_paired_differences(seeds_with_both, present, task))
    parts.append(spread_check(reference, changed, entries, label))
    return "\n\n".join(parts) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="results folder of the reference run")
    parser.add_argument("--changed", required=True, help="results folder of the changed run")
    parser.add_argument("--label", required=True, help="what changed, e.g. bf16")
    parser.add_argument("--entries", nargs="+", required=True)
    parser.add_argument("--output", help="also write the report here")
    args = parser.parse_args(argv)
    text = comparison(args.reference, args.changed, args.label, args.entries)
    print(text)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    return text


if __name__ == "__main__":
    main()
