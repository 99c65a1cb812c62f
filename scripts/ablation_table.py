#!/usr/bin/env python
"""Runs a multi-phase project for several training seeds and prints the mean ± std table over seeds.

    python scripts/ablation_table.py --config-file projects/loce_ablation.py --seeds 0 1 2 \
        --output-dir output/loce_ablation [--results-dir docs/results/loce_ablation] [--no-run] [key=value ...]
    # the table from committed results files alone (no training, no output folder):
    python scripts/ablation_table.py --from-results docs/results/loce_ablation

Each seed trains in ``<output-dir>/seed<N>`` with ``train.seed=N`` (phases already finished there
are skipped, so an interrupted run continues). With ``--results-dir``, each finished seed writes
``<results-dir>/seed<N>.json`` (metrics and per-class AP per phase, command, commit, machine; see
:mod:`ltdet2.engine.results`); a seed whose results file already exists is not run again. The table
(markdown) gives, per phase, the mean ± sample std over seeds of AP, AP50, APr, APc, APf (percent)
and the per-seed APr; it is also written to ``<output-dir>/ablation_table.md`` (or the results dir).
``--paired fcbl_fhm-control ...`` adds paired differences per seed of those phase pairs, with whether each
gap is beyond the seed spread (:func:`ltdet2.engine.results.format_paired_differences`).
"""

import argparse
import os
import shlex
import subprocess
import sys

from ltdet2.engine.phases import load_config, resolve_phases
from ltdet2.engine.results import (
    format_mean_std_table,
    format_paired_differences,
    git_commit,
    load_results_files,
    phase_record,
    results_record,
    write_results_file,
)
from ltdet2.utils.json_io import read_json

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
    """{phase: {task: metrics, per_class_ap_<task>: [...]}} of a finished seed folder."""
    cfg = load_config(config_file, [f"train.output_dir={output_dir}", *overrides])
    phases = {}
    for phase in resolve_phases(cfg):
        if not os.path.isfile(phase.done_file):
            raise FileNotFoundError(f"phase '{phase.name}' has not finished: no {phase.done_file}")
        phases[phase.name] = phase_record(phase.done_file, task)
    return phases


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output-dir")
    parser.add_argument("--results-dir", help="write (and reuse) one results file per seed here")
    parser.add_argument("--from-results", help="only build the table from the results files in this folder")
    parser.add_argument("--task", default="bbox")
    parser.add_argument("--no-run", action="store_true", help="only collect finished results")
    parser.add_argument(
        "--paired",
        nargs="+",
        default=[],
        metavar="METHOD-REFERENCE",
        help="also tabulate paired differences per seed of these phase pairs, e.g. fcbl_fhm-control",
    )
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every seed")
    args = parser.parse_args()

    if args.from_results:
        records, table_dir = load_results_files(args.from_results), args.from_results
    else:
        if not (args.config_file and args.output_dir):
            parser.error("--config-file and --output-dir are required (or give --from-results)")
        records = []
        for seed in args.seeds:
            results_file = os.path.join(args.results_dir, f"seed{seed}.json") if args.results_dir else None
            if results_file and os.path.isfile(results_file):
                print(f"seed {seed}: results file {results_file} exists, not run again", flush=True)
                records.append(read_json(results_file, what="results"))
                continue
            seed_dir = os.path.join(args.output_dir, f"seed{seed}")
            commit = git_commit()  # the code the seed runs on, not the HEAD when it finishes
            if not args.no_run:
                run_seed(args.config_file, seed, seed_dir, args.overrides)
            command = shlex.join(
                ["scripts/ablation_table.py", "--config-file", args.config_file, "--seeds", str(seed)]
                + ["--output-dir", args.output_dir, *args.overrides]
            )
            record = results_record(
                project=args.config_file,
                seed=seed,
                command=command,
                commit=commit,
                phases=collect(args.config_file, seed_dir, args.overrides, args.task),
            )
            if results_file:
                print(f"seed {seed}: wrote {write_results_file(results_file, record)}", flush=True)
            records.append(record)
        table_dir = args.results_dir or args.output_dir
    table = format_mean_std_table(records, args.task)
    if args.paired:
        pairs = [tuple(pair.split("-", 1)) for pair in args.paired]
        malformed = [p for p, pair in zip(args.paired, pairs) if len(pair) != 2]
        if malformed:
            parser.error(f"--paired takes METHOD-REFERENCE phase pairs, got {malformed}")
        table += "\n\n" + format_paired_differences(records, pairs, args.task)
    os.makedirs(table_dir, exist_ok=True)
    with open(os.path.join(table_dir, "ablation_table.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
