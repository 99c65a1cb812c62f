#!/usr/bin/env python
"""Runs a multi-phase project for several training seeds and prints the mean table over seeds.

    python scripts/ablation_table.py --config-file projects/loce_ablation.py --seeds 0 1 \
        --output-dir output/loce_ablation [--no-run] [key=value ...]

Each seed trains in ``<output-dir>/seed<N>`` with ``train.seed=N`` (phases already finished there
are skipped, so an interrupted run continues). The table (markdown) gives, per phase, the mean over
seeds of bbox AP, AP50, APr, APc, APf (percent) and the per-seed values; it is also written to
``<output-dir>/ablation_table.md``.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from ltdet2.engine.phases import SUMMARY_METRICS, load_config, resolve_phases

TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lazyconfig_train_net.py")


def run_seed(config_file, seed, output_dir, overrides):
    command = [
        sys.executable,
        TRAIN_SCRIPT,
        "--config-file",
        config_file,
        "--resume",
        f"train.seed={seed}",
        f"train.output_dir={output_dir}",
        *overrides,
    ]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def collect(config_file, output_dir, overrides, task):
    cfg = load_config(config_file, [f"train.output_dir={output_dir}", *overrides])
    results = {}
    for phase in resolve_phases(cfg):
        if not os.path.isfile(phase.done_file):
            raise FileNotFoundError(f"phase '{phase.name}' has not finished: no {phase.done_file}")
        with open(phase.done_file) as f:
            results[phase.name] = json.load(f)["results"][task]
    return results


def format_table(per_seed, seeds, task):
    phases = list(per_seed[0])
    lines = [
        f"| phase ({task}, mean of seeds {', '.join(map(str, seeds))}) | "
        + " | ".join(SUMMARY_METRICS)
        + " | APr per seed |",
        "|---|" + "---:|" * (len(SUMMARY_METRICS) + 1),
    ]
    for phase in phases:
        values = np.array([[seed_results[phase][m] for m in SUMMARY_METRICS] for seed_results in per_seed])
        means = np.nanmean(values, axis=0)
        apr = ", ".join(f"{v:.2f}" for v in values[:, SUMMARY_METRICS.index("APr")])
        lines.append(f"| {phase} | " + " | ".join(f"{v:.2f}" for v in means) + f" | {apr} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--task", default="bbox")
    parser.add_argument("--no-run", action="store_true", help="only collect finished results")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every seed")
    args = parser.parse_args()
    per_seed = []
    for seed in args.seeds:
        seed_dir = os.path.join(args.output_dir, f"seed{seed}")
        if not args.no_run:
            run_seed(args.config_file, seed, seed_dir, args.overrides)
        per_seed.append(collect(args.config_file, seed_dir, args.overrides, args.task))
    table = format_table(per_seed, args.seeds, args.task)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "ablation_table.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
