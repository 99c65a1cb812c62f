#!/usr/bin/env python
"""Mean per-class AP of groups of classes, per phase, mean ± std over the seeds of an ablation's results files.

Groups are ranges of one phase's per-class list (``--order-phase``; LST's phases list classes in their
contiguous order, the base classes first):

    python scripts/class_group_ap.py docs/results/lst_ablation --order-phase incremental_3 --task segm \\
        --groups base:0:30 phase_1:30:44 phase_2:44:58 phase_3:58:72 --phases joint incremental_3 no_distill_3

A class is matched by name across phases; a class whose AP is undefined is left out of its group's mean.
"""

import argparse

import numpy as np

from ltdet2.engine.results import load_results_files, mean_std_cell


def group_means(records, *, order_phase, groups, phases, task="bbox"):
    """{phase: {group: [per-seed mean AP of the group's classes]}}; ``groups``: {name: (start, stop)} ranges of
    ``order_phase``'s per-class list."""
    means = {phase: {group: [] for group in groups} for phase in phases}
    for record in records:
        order = [c["name"] for c in record["phases"][order_phase][f"per_class_ap_{task}"]]
        for phase in phases:
            ap = {c["name"]: c["AP"] for c in record["phases"][phase][f"per_class_ap_{task}"]}
            for group, (start, stop) in groups.items():
                values = [ap[name] for name in order[start:stop] if ap.get(name) is not None]
                means[phase][group].append(float(np.nanmean(values)) if values else float("nan"))
    return means


def parse_group(text):
    name, start, stop = text.split(":")
    return name, (int(start), int(stop))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir")
    parser.add_argument("--order-phase", required=True)
    parser.add_argument("--groups", nargs="+", required=True, type=parse_group, metavar="NAME:START:STOP")
    parser.add_argument("--phases", nargs="+", required=True)
    parser.add_argument("--task", default="bbox")
    args = parser.parse_args(argv)
    records = load_results_files(args.results_dir)
    groups = dict(args.groups)
    means = group_means(records, order_phase=args.order_phase, groups=groups, phases=args.phases, task=args.task)
    seeds = ", ".join(str(r["seed"]) for r in records)
    lines = [f"| phase ({args.task}; mean AP of the group's classes, mean ± std over seeds {seeds}) | "
             + " | ".join(groups) + " |", "|---|" + "---:|" * len(groups)]  # fmt: skip
    for phase in args.phases:
        cells = [mean_std_cell(v) for v in means[phase].values()]
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return means


if __name__ == "__main__":
    main()
