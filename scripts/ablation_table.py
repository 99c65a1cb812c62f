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
``--paired fcbl_fhm-control ...`` adds paired differences per seed of those phase pairs: mean ± std, the paired
t-test's 95% interval and the Holm-corrected interval over the table's (pair, metric) cells; a gap is a result
only when its Holm-corrected interval excludes 0 (:func:`ltdet2.engine.results.format_paired_differences`).
``--phases pretrain control ...`` runs and collects only those phases (each with ``--phase``, in the project's
order; the phases they start from must have finished or be listed): a seed's results file then holds those,
and a later run with more phases adds theirs to it. The tables label a phase that only some seeds ran.
"""

import argparse
import os
import shlex
import subprocess

from ltdet2.engine.launch import train_command
from ltdet2.engine.phases import load_config, resolve_phases
from ltdet2.engine.results import (
    SUMMARY_METRICS,
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


def run_seed(config_file, seed, output_dir, overrides, phases=None):
    """Trains the seed's phases (``phases``: only those, one ``--phase`` run each; None: all)."""
    for phase in phases or [None]:
        command = train_command(
            TRAIN_SCRIPT, config_file, seed=seed, output_dir=output_dir, overrides=overrides, phase=phase
        )
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True)


def project_phases(config_file, overrides, only=None):
    """(every phase name of the project in its order, the names to run: ``only``'s, checked to exist, or all)."""
    names = [phase.name for phase in resolve_phases(load_config(config_file, list(overrides)))]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        hint = " (config overrides go before --phases)" if any("=" in name for name in unknown) else ""
        raise ValueError(f"--phases {unknown}: {config_file} has phases {names}{hint}")
    return names, [name for name in names if only is None or name in only]


def collect(config_file, output_dir, overrides, task, only=None):
    """{phase: {task: metrics, per_class_ap_<task>: [...]}} of a finished seed folder (``only``: those phases), for
    every task the phases were evaluated on (``task`` must be one of them)."""
    cfg = load_config(config_file, [f"train.output_dir={output_dir}", *overrides])
    phases = {}
    for phase in resolve_phases(cfg):
        if only is not None and phase.name not in only:
            continue
        if not os.path.isfile(phase.done_file):
            raise FileNotFoundError(f"phase '{phase.name}' has not finished: no {phase.done_file}")
        record = phase_record(phase.done_file)
        if task not in record:
            tasks = sorted(key for key in record if not key.startswith("per_class_ap_"))
            raise ValueError(f"phase '{phase.name}': {phase.done_file} holds no {task!r} results (it has {tasks})")
        phases[phase.name] = record
    return phases


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output-dir")
    parser.add_argument("--results-dir", help="write (and reuse) one results file per seed here")
    parser.add_argument("--from-results", help="only build the table from the results files in this folder")
    parser.add_argument("--task", default="bbox", help="the task of the tables (results files hold every task)")
    parser.add_argument("--no-run", action="store_true", help="only collect finished results")
    parser.add_argument("--phases", nargs="+", help="run and collect only these phases (default: all)")
    parser.add_argument(
        "--paired",
        nargs="+",
        default=[],
        metavar="METHOD-REFERENCE",
        help="also tabulate paired differences per seed of these phase pairs, e.g. fcbl_fhm-control",
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        help="the table's metric columns (default: AP AP50 APr APc APf; e.g. the instance-count buckets "
        "'AP(0,1]' 'AP(0,5]' 'AP(0,10]' 'AP[10,100)' 'AP[100,1000)')",
    )
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every seed")
    args = parser.parse_args()

    if args.from_results:
        records, table_dir = load_results_files(args.from_results), args.from_results
    else:
        if not (args.config_file and args.output_dir):
            parser.error("--config-file and --output-dir are required (or give --from-results)")
        all_phases, wanted = project_phases(args.config_file, args.overrides, args.phases)
        records = []
        for seed in args.seeds:
            results_file = os.path.join(args.results_dir, f"seed{seed}.json") if args.results_dir else None
            earlier = read_json(results_file, what="results") if results_file and os.path.isfile(results_file) else None
            if earlier is not None and all(args.task in earlier["phases"].get(name, {}) for name in wanted):
                print(f"seed {seed}: results file {results_file} holds {wanted}, not run again", flush=True)
                records.append(earlier)
                continue
            seed_dir = os.path.join(args.output_dir, f"seed{seed}")
            commit = git_commit()  # the code the seed runs on, not the HEAD when it finishes
            if not args.no_run:
                run_seed(args.config_file, seed, seed_dir, args.overrides, args.phases and wanted)
            phases = dict(earlier["phases"]) if earlier else {}  # a later run adds its phases to the file
            phases.update(collect(args.config_file, seed_dir, args.overrides, args.task, wanted))
            ordered = [name for name in all_phases if name in phases]
            listed = [] if ordered == all_phases else ["--phases", *ordered]
            listed += ["--task", args.task] if args.task != "bbox" else []
            # overrides before --phases: after it, argparse would read them as phase names
            command = shlex.join(
                ["scripts/ablation_table.py", "--config-file", args.config_file, "--seeds", str(seed)]
                + ["--output-dir", args.output_dir, *args.overrides, *listed]
            )
            record = results_record(
                project=args.config_file,
                seed=seed,
                command=command,
                commit=commit,
                phases={name: phases[name] for name in ordered},
            )
            if results_file:
                print(f"seed {seed}: wrote {write_results_file(results_file, record)}", flush=True)
            records.append(record)
        table_dir = args.results_dir or args.output_dir
    table = format_mean_std_table(records, args.task, args.metrics or SUMMARY_METRICS)
    if args.paired:
        pairs = [tuple(pair.split("-", 1)) for pair in args.paired]
        malformed = [p for p, pair in zip(args.paired, pairs) if len(pair) != 2]
        if malformed:
            parser.error(f"--paired takes METHOD-REFERENCE phase pairs, got {malformed}")
        if len(records) >= 2:
            table += "\n\n" + format_paired_differences(records, pairs, args.task)
        else:  # one seed so far (a run in pieces): its results file is written, the paired table waits
            table += f"\n\nPaired differences ({', '.join(args.paired)}): need at least 2 seeds, have {len(records)}."
    os.makedirs(table_dir, exist_ok=True)
    with open(os.path.join(table_dir, "ablation_table.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
