#!/usr/bin/env python
"""The LT-Shapes leaderboard (projects/leaderboard.py): trains entries x seeds in pieces, writes one results file
per finished (entry, seed), and rebuilds the table and plots from those files alone.

    python scripts/leaderboard.py [key=value ...] [--entries ce loce ...] [--seeds 0 1 2] [--dry-run]
    python scripts/leaderboard.py --quick              # fewer iterations, seed 0, its own folders (< 30 min)
    python scripts/leaderboard.py --from-results       # only the table and plots, from <docs-dir>/results
    python scripts/leaderboard.py --jobs 2             # the seeds as 2 concurrent processes, cores split between them
    python scripts/leaderboard.py --from-results --docs-dir docs/leaderboard   # the committed table and plots

By default everything is written under output/: training folders in ``output/leaderboard[_quick]``, results files,
table and plots in ``output/docs/leaderboard[/quick]`` (``--docs-dir``; ``--results-dir``, default
``<docs-dir>/results``), so a run in a fresh clone trains (the committed results under docs/ are not its own) and
writes no tracked file. ``--docs-dir docs/leaderboard`` (``docs/leaderboard/quick`` with ``--quick``) continues and
rebuilds the committed ones.

Each (entry, seed) trains its chain (ltdet2.engine.leaderboard) in ``<output-dir>/seed<N>/<phase>``, one
``lazyconfig_train_net.py --phase NAME`` run per phase; a phase that already finished there (a shared pretrain)
is not run again, so a shared phase trains once per seed. When the entry's last phase has finished,
``<results-dir>/<entry>_seed<N>.json`` is written (box and mask metrics with per-class AP of the entry's last
phase, the command, commit, machine, iterations and the wall time of each phase's run); an (entry, seed) whose
results file exists is skipped. The results files of docs/ are committed, so the work spans machines and sittings.
A seed's folder is one run's while it trains: the script holds its ``run.lock`` (its training processes run under
it), and another leaderboard or training run on that folder is refused (ltdet2.engine.launch.RunLock).
Then, from the results files alone: ``<docs-dir>/leaderboard.md`` (mean ± std over seeds of box AP, AP50, APr,
APc, APf, mask AP, mask APr and wall time per entry, and the paired differences to ``ce`` and of
``COMPOSITION_PAIRS``, with paired-t intervals, Holm-corrected over that table),
``<docs-dir>/apr_vs_apf.png``, ``<docs-dir>/per_class_ap/<entry>.png`` and ``<docs-dir>/ap_by_image_count.png``
(every entry's mean per-class AP per bin of training image count).

Budget, 2 AMD EPYC cores, no GPU. Measured: the small Mask R-CNN trains at 1.58 s per iteration (batch 8, quiet
machine, nice 10; 4-19 s when other trainings share the cores). An evaluation of an entry (400 val images, score
1e-4, 300 detections, box and mask) took ~5 min for a trained model on busy cores (README, LST); a barely trained
model keeps 300 detections per image and takes ~10 s per image on busy cores, hence only entries are evaluated
and --quick evaluates COCO-style. Per seed: 3 first phases x 300 + 10 entries x 150 = 2,400 iterations + 10
evaluations. Measured (the results files' phase wall times, 2026-11-23): seed 0 alone (2 threads) 2.89 h, ~2.5 h
without the other work that shared the cores then; seeds 1 and 2 together (``--jobs 2``, two 1-thread processes)
3.79 h, ~1.5x one seed. All 3 seeds: 6.68 h (~6.3 h quiet) instead of ~7.5 h one after another; ``--jobs 2`` over
3 seeds runs that schedule (two seeds together, then the third alone with both cores). ``--quick``
(projects/leaderboard_quick.py): 48 + 24 iterations per entry, 384 in all, COCO-style evaluation: see its header
and the measured time in the README.
"""

import argparse
import concurrent.futures
import contextlib
import os
import resource
import shlex
import subprocess
import sys
import time

from ltdet2.engine.launch import RunLock, train_command
from ltdet2.engine.leaderboard import (
    chain_iterations,
    entry_chains,
    format_leaderboard_table,
    load_entry_results,
    plot_ap_by_image_count,
    plot_apr_vs_apf,
    plot_entries_per_class_ap,
    results_path,
    seed_wall_times,
    write_entry_results,
)
from ltdet2.engine.phases import load_config, resolve_phases
from ltdet2.engine.results import git_commit, phase_record, results_record
from ltdet2.utils.json_io import read_json, write_json_atomic

TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lazyconfig_train_net.py")
WALL_FILE = "leaderboard_wall.json"  # in a phase's folder: the wall seconds of the run that trained it
REFERENCE_ENTRY = "ce"
# the compositions against the entry that differs from them in one part (paired differences, after those to ce)
COMPOSITION_PAIRS = (
    ("loce_rfs", "loce"),  # RFS added to LOCE
    ("replay_ebl", "loce"),  # RIO's object replay instead of LOCE's MFS
    ("replay_ebl", "rio"),  # LOCE's EBL (decoupled) instead of RIO's RFS and cosine classifier
    ("fcbl_replay", "bacl"),  # RIO's object replay instead of BACL's FHM
)
# (config, seeds, output dir, docs dir) of the full leaderboard and of --quick. Everything goes under output/ by
# default (the docs dirs mirror the committed docs/leaderboard[/quick]); the committed results and tables are
# regenerated with --docs-dir docs/leaderboard[/quick] (results: <docs-dir>/results).
SETTINGS = {
    False: ("projects/leaderboard.py", [0, 1, 2], "output/leaderboard", "output/docs/leaderboard"),
    True: ("projects/leaderboard_quick.py", [0], "output/leaderboard_quick", "output/docs/leaderboard/quick"),
}


def seed_phases(cfg, seed_dir):
    """{name: Phase} of the loaded project with its phases in ``seed_dir``."""
    cfg.train.output_dir = seed_dir
    return {phase.name: phase for phase in resolve_phases(cfg)}


def children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_phase(config_file, phase, seed, seed_dir, overrides):
    """Trains (and, for an entry, evaluates) one phase in its own process; records its wall time, the CPU
    seconds of the process (user + system, its data workers included: less sensitive than the wall time to
    other work on the machine) and the machine's load average at its end."""
    command = train_command(
        TRAIN_SCRIPT, config_file, seed=seed, output_dir=seed_dir, overrides=overrides, phase=phase.name
    )
    print("+", shlex.join(command), flush=True)
    cpu_start, start = children_cpu_seconds(), time.perf_counter()
    subprocess.run(command, check=True)
    timing = {
        "wall_s": time.perf_counter() - start,
        "cpu_s": children_cpu_seconds() - cpu_start,
        "load_avg": list(os.getloadavg()),  # 1, 5, 15 min
    }
    write_json_atomic(os.path.join(phase.output_dir, WALL_FILE), timing, indent=1)
    return timing["wall_s"]


def phase_timing(phase):
    """The phase's recorded run, read once: {"wall_s", "cpu_s", "load_avg"}, NaN / None for what it lacks."""
    path = os.path.join(phase.output_dir, WALL_FILE)
    timing = read_json(path, what="wall time") if os.path.isfile(path) else {}
    nan = float("nan")
    return {"wall_s": timing.get("wall_s", nan), "cpu_s": timing.get("cpu_s", nan), "load_avg": timing.get("load_avg")}


def run_entry(args, entry, chain, seed, cfg, phases, seed_dir, command):
    """Trains what ``chain`` still lacks in ``seed_dir`` and returns the (entry, seed) results record."""
    commit = git_commit()  # the code the entry runs on
    for name in chain:
        if phases[name].is_done():
            print(f"  phase {name}: finished in {phases[name].output_dir}, not run again", flush=True)
        else:
            run_phase(args.config_file, phases[name], seed, seed_dir, args.overrides)
    record = results_record(
        project=args.config_file,
        seed=seed,
        command=command,
        commit=commit,
        phases={entry: phase_record(phases[entry].done_file)},
    )
    timings = {name: phase_timing(phases[name]) for name in chain}
    walls = {name: timing["wall_s"] for name, timing in timings.items()}
    cpu = {name: timing["cpu_s"] for name, timing in timings.items()}
    eval_s = phases[entry].load_done().get("eval_seconds", float("nan"))  # absent in records before 2026-11-23
    record.update(
        entry=entry,
        chain=chain,
        iterations=chain_iterations(cfg.phases, chain),
        phase_wall_s=walls,
        wall_s=sum(walls.values()),
        eval_s=eval_s,
        train_s=sum(walls.values()) - eval_s,
        phase_cpu_s=cpu,
        cpu_s=sum(cpu.values()),
        phase_load_avg={name: timing["load_avg"] for name, timing in timings.items()},
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"),  # None: the library default (all cores)
    )
    return record


def seed_job_commands(args, seeds, output_dir, docs_dir, results_dir):
    """{seed: argv} of ``--jobs``: this script for one seed with this run's project, entries, overrides and
    folders, without rebuilding the table (the parent does, once all have finished)."""
    options = ["--config-file", args.config_file, "--output-dir", output_dir, "--docs-dir", docs_dir]
    options += ["--results-dir", results_dir, "--no-outputs", *(["--quick"] if args.quick else [])]
    options += ["--entries", *args.entries] if args.entries else []
    script = os.path.abspath(__file__)
    # overrides first: after --entries / --seeds, argparse would read them as entries or seeds
    return {seed: [sys.executable, script, *args.overrides, *options, "--seeds", str(seed)] for seed in seeds}


def run_seed_job(command, env, log_path):
    """Runs one seed's process with its output in ``log_path``; returns its exit status."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a") as log:
        return subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def seed_threads(seeds, jobs, cores):
    """{seed: intra-op threads} of ``--jobs``: the seeds, taken ``jobs`` at a time in order, split the cores evenly
    with the others of their group; a last, smaller group splits them among fewer (3 seeds, 2 jobs, 2 cores: 1, 1,
    then 2 threads: a lone seed with one thread would leave a core idle). A seed starts as soon as a process ends,
    so a later group's first seed overlaps the tail of the group before it."""
    return {seed: max(1, cores // min(jobs, len(seeds) - i // jobs * jobs)) for i, seed in enumerate(seeds)}


def run_seed_jobs(commands, jobs, threads, output_dir):
    """Runs the seeds' processes, ``jobs`` at a time, each with ``threads[seed]`` intra-op threads (OMP / MKL),
    and raises naming every seed that failed and its log."""
    logs = {seed: os.path.join(output_dir, f"seed{seed}", "leaderboard.log") for seed in commands}
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {}
        for seed, command in commands.items():
            n = str(threads[seed])
            env = {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}
            print(f"seed {seed}: {n} thread(s), log in {logs[seed]}", flush=True)
            futures[seed] = pool.submit(run_seed_job, command, env, logs[seed])
        status = {seed: future.result() for seed, future in futures.items()}
    failed = {seed: logs[seed] for seed, code in status.items() if code != 0}
    if failed:
        raise RuntimeError(f"--jobs: seeds {sorted(failed)} failed; see {', '.join(failed.values())}")


def threads_note(records, seed):
    """ ", N thread(s) per process" from the seed's records' ``omp_num_threads`` ("" where none recorded it)."""
    recorded = {r["omp_num_threads"] for r in records if r["seed"] == seed and "omp_num_threads" in r}
    if not recorded:
        return ""
    labels = sorted("all cores" if n is None else f"{n} thread(s)" for n in recorded)
    return f", {' / '.join(labels)} per process"


def build_outputs(results_dir, docs_dir, order):
    """The table and plots from the results files of ``results_dir`` alone; returns the table."""
    records = load_entry_results(results_dir)
    names = list(
        dict.fromkeys([*(n for n in order if any(r["entry"] == n for r in records)), *(r["entry"] for r in records)])
    )
    table = format_leaderboard_table(records, names, reference=REFERENCE_ENTRY, pairs=COMPOSITION_PAIRS)
    machines = sorted({r.get("machine", "?") for r in records})
    commits = sorted({str(r.get("commit")) for r in records})
    totals = "; ".join(
        f"seed {seed}: {seconds / 3600:.2f} h for {len(done)} of {len(order)} entries{threads_note(records, seed)}"
        for seed, (seconds, done) in seed_wall_times(records).items()
    )
    text = (
        f"{table}\n\nBox AP columns are bbox, mask columns segm (LVIS-style, percent); wall = the entry's phases "
        f"run alone (each shared phase counted in full), its evaluation included; train = wall without the "
        f"evaluation (results files without eval_s count as missing). Machine: {'; '.join(machines)}."
        f" Total wall time (each shared phase once): {totals}. Commits: {', '.join(commits)}. Rebuilt from"
        f" {results_dir}.\n"
    )
    os.makedirs(docs_dir, exist_ok=True)
    with open(os.path.join(docs_dir, "leaderboard.md"), "w") as f:
        f.write(text)
    plot_apr_vs_apf(records, os.path.join(docs_dir, "apr_vs_apf.png"), entries=names)
    plot_entries_per_class_ap(records, os.path.join(docs_dir, "per_class_ap"), entries=names)
    plot_ap_by_image_count(records, os.path.join(docs_dir, "ap_by_image_count.png"), entries=names)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", help="the project (default: projects/leaderboard.py, --quick: its own)")
    parser.add_argument("--entries", nargs="+", help="run only these entries (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 (--quick: 0)")
    parser.add_argument("--output-dir", help="training folders (default output/leaderboard[_quick])")
    parser.add_argument(
        "--docs-dir",
        help="table and plots (default output/docs/leaderboard[/quick]; the committed ones: docs/leaderboard[/quick])",
    )
    parser.add_argument("--results-dir", help="results files (default <docs-dir>/results)")
    parser.add_argument("--quick", action="store_true", help="the short setting: fewer iterations, seed 0")
    parser.add_argument("--dry-run", action="store_true", help="list what would run, run nothing")
    parser.add_argument("--from-results", action="store_true", help="only rebuild the table and plots")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="run the seeds as this many concurrent processes, the cores split evenly between them (on 2 cores,"
        " two seeds as 2 one-thread processes take ~1.5x the time of one seed with both cores)",
    )
    parser.add_argument("--no-outputs", action="store_true", help="train only: leave the table and plots as they are")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (before --entries / --seeds)")
    args = parser.parse_args(argv)
    config_file, seeds, output_dir, docs_dir = SETTINGS[args.quick]
    args.config_file = args.config_file or config_file
    seeds = args.seeds or seeds
    output_dir = args.output_dir or output_dir
    docs_dir = args.docs_dir or docs_dir
    results_dir = args.results_dir or os.path.join(docs_dir, "results")

    cfg = load_config(args.config_file, args.overrides)
    chains = entry_chains(cfg.phases)
    unknown = sorted(set(args.entries or ()) - set(chains))
    if unknown:
        parser.error(f"--entries {unknown}: {args.config_file} has entries {list(chains)}")
    entries = [name for name in chains if args.entries is None or name in args.entries]
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: must be at least 1")

    if args.jobs > 1 and len(seeds) > 1 and not (args.from_results or args.dry_run):
        threads = seed_threads(seeds, args.jobs, os.cpu_count() or 1)
        commands = seed_job_commands(args, seeds, output_dir, docs_dir, results_dir)
        run_seed_jobs(commands, args.jobs, threads, output_dir)
    elif not args.from_results:
        for seed in seeds:
            seed_dir = os.path.join(output_dir, f"seed{seed}")
            # one run per seed's folder (ltdet2.engine.launch.RunLock); the training processes it starts run under
            # its lock
            with contextlib.nullcontext() if args.dry_run else RunLock(seed_dir):
                phases = seed_phases(cfg, seed_dir)
                planned = set()  # --dry-run: phases an earlier entry of this seed would train
                for entry in entries:
                    path = results_path(results_dir, entry, seed)
                    chain = chains[entry]
                    if os.path.isfile(path):
                        print(f"{entry} seed {seed}: {path} exists, skipped", flush=True)
                        continue
                    todo = [name for name in chain if not phases[name].is_done() and name not in planned]
                    print(f"{entry} seed {seed}: phases {chain}, to train {todo}", flush=True)
                    planned.update(todo)
                    if args.dry_run:
                        continue
                    # overrides first: after --entries / --seeds, argparse would read them as entries or seeds
                    command = shlex.join(
                        ["scripts/leaderboard.py", *args.overrides, *(["--quick"] if args.quick else [])]
                        + ["--entries", entry, "--seeds", str(seed)]
                    )
                    record = run_entry(args, entry, chain, seed, cfg, phases, seed_dir, command)
                    print(f"{entry} seed {seed}: wrote {write_entry_results(results_dir, record)}", flush=True)
    if args.dry_run or args.no_outputs:
        return None
    if not os.path.isdir(results_dir):
        print(f"no results in {results_dir} yet", flush=True)
        return None
    text = build_outputs(results_dir, docs_dir, list(chains))
    print(text)
    return text


if __name__ == "__main__":
    main()
