#!/usr/bin/env python
"""The LT-Shapes leaderboard (projects/leaderboard.py): trains entries x seeds in pieces, writes one results file
per finished (entry, seed), and rebuilds the table and plots from those files alone.

    python scripts/leaderboard.py [key=value ...] [--entries ce loce ...] [--seeds 0 1 2] [--dry-run]
    python scripts/leaderboard.py --quick              # fewer iterations, seed 0, its own folders
    python scripts/leaderboard.py --from-results       # only the table and plots, from <docs-dir>/results
    python scripts/leaderboard.py --jobs 2             # the phases of all seeds, 2 processes at a time
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
Before anything trains (or, with ``--from-results``, before the table is built), results files of another protocol
are refused: those whose entry the project now trains over another chain or number of iterations. So are phase
folders that a wanted (entry, seed) needs and whose ``config.yaml`` differs from the project's config for that seed
(a finished phase would be skipped, an interrupted one resumed, under other values). A seed's folder is one run's
while it trains: the script holds its ``run.lock`` (its training processes run under
it), and another leaderboard or training run on that folder is refused (ltdet2.engine.launch.RunLock).
Then, from the results files alone: ``<docs-dir>/leaderboard.md`` (mean ± std over seeds of box AP, AP50, APr,
APc, APf, mask AP, mask APr and wall time per entry, and the paired differences to ``ce`` and of
``COMPOSITION_PAIRS``, with paired-t intervals, Holm-corrected over that table),
``<docs-dir>/apr_vs_apf.png``, ``<docs-dir>/per_class_ap/<entry>.png`` and ``<docs-dir>/ap_by_image_count.png``
(every entry's mean per-class AP per bin of training image count); with ``--protocol v2``, one paired table per
family (``V2_FAMILIES``, each Holm-corrected on its own), ``<docs-dir>/learning_curve.png`` and
``<docs-dir>/paired_differences.png`` (each family's paired differences, APr against APf, with their corrected
intervals).

``--rare-images SEED`` trains nothing: it draws the same 4 validation images holding rare classes for ``ce``, ``crt``
(those of the project that have results) and the entry with the best mean box APr, each from its final checkpoint of
SEED, side by side with the ground truth, into ``<docs-dir>/rare_images`` (scripts/visualize.py).

``--jobs N`` (N > 1) schedules phases instead of running them one after another: every phase that the wanted
(entry, seed) pairs still lack is one job (seed, phase), a shared phase one per seed, waiting for its input phases
of the same seed (ltdet2.engine.leaderboard.phase_jobs); the chains are independent otherwise (``pretrain``,
``bacl_representation`` and ``lst_base`` need nothing; after ``pretrain`` all its fine-tunes can run). Up to N jobs
run at once, each a ``lazyconfig_train_net.py --phase NAME`` process logging to ``<seed folder>/logs/<phase>.log``;
of the ready jobs, the one with the longest remaining path in iterations (its ``train.max_iter`` plus the longest
of the jobs that need it) starts first, ties by seed then the project's order. A job gets ``cores // min(N, jobs
running and ready when it starts)`` threads (OMP_NUM_THREADS, MKL_NUM_THREADS; at least 1), so one that starts
alone gets all the cores; its phase's ``leaderboard_wall.json`` records them, and the entry's results file the
threads of its last phase. A results file is written as soon as its chain is done. A failed phase's dependents are
not started, the other jobs go on, and the run ends with an error naming each failed phase and its log; otherwise
the table and plots are rebuilt once, when all have finished. The script holds the lock of every seed's folder
meanwhile. ``--dry-run --jobs N`` lists the jobs in the order they are preferred, with what each waits for and
its priority.

**Stopping and continuing.** ``kill -USR2 <this script's pid>`` asks the run to stop so that the same command
continues it exactly: every running phase saves a checkpoint of the iteration it is in and exits (a phase in its
final evaluation finishes it first; ltdet2.engine.launch.train_main_until_stopped), no new phase starts, the results
files of finished chains are written, and the script exits with status 75 (INTERRUPTED_EXIT_STATUS) without
rebuilding the table. A phase process stopped directly (``pkill -USR2 -f lazyconfig_train_net.py``) stops the run the
same way.

Budget: 3 first phases x 300 + 10 entries x 150 = 2,400 iterations and 10 evaluations per seed (v1); v2's is in
docs/leaderboard/protocol.md. Only entries are evaluated, and --quick evaluates COCO-style: a barely trained model
keeps 300 detections per image at score 1e-4. Measured times per seed, with and without ``--jobs``:
docs/benchmarks.md#leaderboard and docs/leaderboard.md. ``--quick`` (projects/leaderboard_quick.py): 48 + 24
iterations per entry, 384 in all, COCO-style evaluation.
"""

import argparse
import concurrent.futures
import contextlib
import glob
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from ltdet2.engine.launch import INTERRUPTED_EXIT_STATUS, RunLock, train_command, train_overrides
from ltdet2.engine.leaderboard import (
    apr_apf_points,
    chain_iterations,
    entry_chains,
    format_curves_table,
    format_leaderboard_table,
    load_entry_results,
    mismatched_records,
    phase_jobs,
    plot_ap_by_image_count,
    plot_apr_vs_apf,
    plot_entries_per_class_ap,
    plot_learning_curves,
    plot_paired_differences,
    read_learning_curve,
    results_path,
    seed_wall_times,
    write_entry_results,
)
from ltdet2.engine.phase_checks import changed_config_keys, format_config_changes
from ltdet2.engine.phases import load_config, resolve_phases
from ltdet2.engine.results import git_commit, phase_record, results_record
from ltdet2.utils.json_io import read_json, write_json_atomic

TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lazyconfig_train_net.py")
VISUALIZE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "visualize.py")
RARE_IMAGES_DIR = "rare_images"  # in the docs folder: the same rare-class val images for the controls and the best
PICTURE_CONTROLS = ("ce", "crt")  # drawn beside the entry with the best mean box APr
RARE_IMAGES = 4
WALL_FILE = "leaderboard_wall.json"  # in a phase's folder: the wall and CPU seconds of the runs that trained it
RUNS_FILE = "leaderboard_runs.json"  # in a phase's folder: each invocation that trained it, kept up while it runs
HEARTBEAT_S = 60.0  # how often a running invocation's RUNS_FILE entry is brought up to date
REFERENCE_ENTRY = "ce"
# the compositions against the entry that differs from them in one part (paired differences, after those to ce)
COMPOSITION_PAIRS = (
    ("loce_rfs", "loce"),  # RFS added to LOCE
    ("replay_ebl", "loce"),  # RIO's object replay instead of LOCE's MFS
    ("replay_ebl", "rio"),  # LOCE's EBL (decoupled) instead of RIO's RFS and cosine classifier
    ("fcbl_replay", "bacl"),  # RIO's object replay instead of BACL's FHM
)
# v2 (docs/leaderboard/protocol.md): families of paired comparisons, each its own table with Holm's correction
# within it: each entry against the control of its regime, the controls against each other, RIO's two parts apart
# and the compositions against their parts
V2_FAMILIES = (
    ("Controls: each against `ce`", (("crt", "ce"), ("stepwise_control", "ce"))),
    (
        "End to end: each against `ce`",
        tuple((entry, "ce") for entry in ("rfs", "rio_replay", "rio", "seesaw", "eqlv2", "federated", "lst")),
    ),
    (
        "Decoupled: each against `crt`",
        tuple((entry, "crt") for entry in ("loce", "loce_rfs", "replay_ebl", "bacl", "fcbl_replay")),
    ),
    ("Step-wise: against its control", (("stepwise", "stepwise_control"),)),
    (
        "Parts: RIO's replay and classifier apart, the compositions against the entry they change",
        (("rio_replay", "rfs"), ("rio", "rio_replay"), *COMPOSITION_PAIRS[:2], COMPOSITION_PAIRS[3]),
    ),
)
CURVE_PHASE = "pretrain"  # v2: the shared pretrain's learning curve (the protocol's convergence rule)


@dataclass(frozen=True)
class Setting:
    """Where a leaderboard's project, runs and docs are (``--protocol``, ``--quick``) and the pairs of its table.
    Everything goes under output/ by default (the docs dirs mirror the committed ones); the committed results and
    tables are regenerated with ``--docs-dir docs/<docs>`` (results: ``<docs-dir>/results``)."""

    config_file: str
    seeds: tuple
    output_dir: str
    docs_dir: str
    reference: str | None
    pairs: tuple
    families: tuple = ()


SETTINGS = {
    ("v1", False): Setting(
        "projects/leaderboard.py", (0, 1, 2), "output/leaderboard", "output/docs/leaderboard", "ce", COMPOSITION_PAIRS
    ),
    ("v1", True): Setting(
        "projects/leaderboard_quick.py",
        (0,),
        "output/leaderboard_quick",
        "output/docs/leaderboard/quick",
        "ce",
        COMPOSITION_PAIRS,
    ),
    ("v2", False): Setting(
        "projects/leaderboard_v2.py",
        (0, 1, 2, 3, 4),
        "output/leaderboard_v2",
        "output/docs/leaderboard/v2",
        None,
        (),
        V2_FAMILIES,
    ),
    ("v2", True): Setting(
        "projects/leaderboard_v2_quick.py",
        (0,),
        "output/leaderboard_v2_quick",
        "output/docs/leaderboard/v2/quick",
        None,
        (),
        V2_FAMILIES,
    ),
}


def seed_phases(cfg, seed_dir):
    """{name: Phase} of the loaded project with its phases in ``seed_dir``."""
    cfg.train.output_dir = seed_dir
    return {phase.name: phase for phase in resolve_phases(cfg)}


def check_results_match_project(results_dir, cfg, chains, config_file):
    """Refuses results files in ``results_dir`` whose entry the project has but which were trained over another chain
    or number of iterations (another protocol, e.g. another pretrain length): they would be skipped as done and
    tabulated with the project's own."""
    if not glob.glob(os.path.join(results_dir, "*.json")):  # none yet (load_entry_results refuses an empty folder)
        return
    mismatched = mismatched_records(load_entry_results(results_dir), cfg.phases, chains)
    if mismatched:
        raise ValueError(
            f"{results_dir}: {len(mismatched)} results file(s) were not trained as {config_file} trains their entries "
            f"now ({'; '.join(mismatched)}): they would be skipped as done and tabulated as this project's. Move "
            f"them out of {results_dir}, with the training folders they came from, and run again"
        )


def check_phases_match_project(config_file, overrides, chains, wanted, output_dir):
    """Refuses phases in the seeds' folders that the ``wanted`` (seed, entry) pairs need and that ran with another
    config than the project gives them now (their ``config.yaml``: :func:`ltdet2.engine.phase_checks.
    changed_config_keys`, against the config each seed's training processes load: ``train_overrides``). A finished
    one would be skipped (its entries fine-tuned from another start), an interrupted one resumed under the new
    config."""
    problems = []
    for seed in sorted({seed for seed, _ in wanted}):
        names = {name for s, entry in wanted if s == seed for name in chains[entry]}
        seed_dir = os.path.join(output_dir, f"seed{seed}")
        seed_cfg = load_config(config_file, train_overrides(seed=seed, output_dir=seed_dir, overrides=overrides))
        for phase in (phase for phase in resolve_phases(seed_cfg) if phase.name in names):
            changes = changed_config_keys(phase)
            if changes:
                path = os.path.join(phase.output_dir, "config.yaml")
                problems.append(f"seed {seed} phase '{phase.name}' ({path}): {format_config_changes(changes)}")
    if problems:
        raise ValueError(
            f"{len(problems)} phase(s) in {output_dir} ran with another config than {config_file} gives them now: "
            f"{'; '.join(problems)}. Their entries would train from or resume those runs. Move the seed folders "
            f"away (they keep those runs), or give --output-dir a new folder, and run again"
        )


class PhaseStopped(Exception):
    """A phase process stopped on request (exit status INTERRUPTED_EXIT_STATUS, after saving a checkpoint): the same
    command continues it. ``cpu_s``: the CPU seconds it used (None: it did not start)."""

    def __init__(self, message, *, cpu_s=None):
        super().__init__(message)
        self.cpu_s = cpu_s


class StopRequests:
    """The run's stop request (SIGUSR2, :meth:`armed`): it is passed on to every phase process running (each saves a
    checkpoint and exits with INTERRUPTED_EXIT_STATUS), and no phase starts after it. The handler runs in the main
    thread; the set of running processes is changed by the job threads (single set operations, atomic under the
    GIL), hence no lock, which the handler could wait on forever."""

    def __init__(self):
        self.requested = False
        self.running = set()  # subprocess.Popen of the phase processes running

    @contextlib.contextmanager
    def armed(self):
        """SIGUSR2 requests the stop while the block runs (its previous handler is put back after it); no stop is
        requested when it starts."""
        self.requested = False
        previous = signal.signal(signal.SIGUSR2, lambda signum, frame: self.request("signal SIGUSR2"))
        try:
            yield self
        finally:
            signal.signal(signal.SIGUSR2, previous)

    def request(self, reason):
        first = not self.requested
        self.requested = True
        for proc in list(self.running):
            self.signal(proc)
        if first:
            write_unbuffered(
                f"stop requested ({reason}): the running phases save a checkpoint and stop, no phase starts; "
                f"run the same command again to continue"
            )

    @staticmethod
    def signal(proc):
        # os.kill, not Popen.send_signal, whose poll() could reap a process another thread waits for (os.wait4)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGUSR2)


STOP = StopRequests()


def write_unbuffered(line):
    """Writes ``line`` to stdout's file descriptor directly: a signal handler may run while the main thread is inside
    ``print`` (re-entering it raises). Through ``print`` where stdout has no descriptor."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        print(line, flush=True)
        return
    os.write(descriptor, (line + "\n").encode())


def run_process(command, *, env=None, stdout=None):
    """Runs ``command`` to its end, as ``subprocess.run(command, env=env, check=True)`` does (its stderr goes with
    ``stdout`` when that is given), and returns the CPU seconds (user + system) of that process and of the children
    it waited for (its data workers): its own rusage (``os.wait4``), right when other processes run beside it.
    :class:`PhaseStopped` when it stopped on request (:data:`STOP`; :func:`run_phase` starts none after one)."""
    stderr = None if stdout is None else subprocess.STDOUT
    proc = subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr)
    STOP.running.add(proc)
    if STOP.requested:  # requested while it started: the handler may not have seen it
        STOP.signal(proc)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:  # as subprocess.run: the child does not outlive an interrupted wait
        proc.kill()
        proc.wait()
        raise
    finally:
        STOP.running.discard(proc)
    proc.returncode = os.waitstatus_to_exitcode(status)
    # a process signalled before it armed its handler ends by the signal (SIGUSR2's default): nothing was trained
    stopped = (INTERRUPTED_EXIT_STATUS, -signal.SIGUSR2)
    if proc.returncode in stopped and (STOP.requested or proc.returncode == INTERRUPTED_EXIT_STATUS):
        STOP.request(f"the phase process {proc.pid} stopped on request")
        raise PhaseStopped(f"stopped on request (exit status {proc.returncode})", cpu_s=usage.ru_utime + usage.ru_stime)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, command)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def recorded_invocation(phase, threads, *, heartbeat_s=None):
    """Records one invocation that trains ``phase`` in its :data:`RUNS_FILE`: ``{"runs": [{"start", "seen", "end",
    "cpu_s", "threads"}, ...], "unrecorded_earlier": bool}`` (epoch seconds). ``seen`` is brought up to date every
    ``heartbeat_s`` (default :data:`HEARTBEAT_S`) while it runs, so an invocation killed outright (a sitting that
    ends, a lost machine) still counts up to its last heartbeat; ``end`` is set however it ends. The caller sets
    the yielded run's ``cpu_s``. ``unrecorded_earlier``: the folder held checkpoints before its first record (a run
    of an older script, or checkpoints copied in), whose time is not known."""
    path = os.path.join(phase.output_dir, RUNS_FILE)
    if os.path.isfile(path):
        runs = read_json(path, what="phase runs")
    else:
        os.makedirs(phase.output_dir, exist_ok=True)
        earlier = glob.glob(os.path.join(phase.output_dir, "model_*.pth"))
        runs = {"runs": [], "unrecorded_earlier": bool(earlier)}
    now = time.time()
    run = {"start": now, "seen": now, "end": None, "cpu_s": None, "threads": threads}
    runs["runs"].append(run)
    writing = threading.Lock()

    def save():
        with writing:
            write_json_atomic(path, runs, indent=1)

    save()
    stop = threading.Event()

    def heartbeat():
        while not stop.wait(HEARTBEAT_S if heartbeat_s is None else heartbeat_s):
            run["seen"] = time.time()
            save()

    beating = threading.Thread(target=heartbeat, daemon=True)
    beating.start()
    try:
        yield run
    finally:
        stop.set()
        beating.join()
        run["seen"] = run["end"] = time.time()
        save()


def invocation_totals(runs):
    """The wall seconds of every recorded invocation (to its end, or its last heartbeat when it was killed), the CPU
    seconds of those that recorded them, their number and how many lack CPU seconds."""
    wall = sum((run["end"] if run["end"] is not None else run["seen"]) - run["start"] for run in runs["runs"])
    cpu = [run["cpu_s"] for run in runs["runs"] if run["cpu_s"] is not None]
    return {
        "wall_s": wall,
        "cpu_s": sum(cpu),
        "runs": len(runs["runs"]),
        "runs_without_cpu": len(runs["runs"]) - len(cpu),
        "unrecorded_earlier": bool(runs.get("unrecorded_earlier")),
    }


def run_phase(config_file, phase, seed, seed_dir, overrides, env=None, log_path=None):
    """Trains (and, for an entry, evaluates) one phase in its own process, with ``env`` (default: this process's
    environment) and its output appended to ``log_path`` (default: this process's stdout and stderr). Each
    invocation is recorded as it runs (:func:`recorded_invocation`); when the phase finishes, its :data:`WALL_FILE`
    gets the wall and CPU seconds (user + system, its data workers included: less sensitive than the wall time to
    other work on the machine) of every invocation that trained it, interrupted ones included
    (:func:`invocation_totals`), the machine's load average at the end and the last invocation's ``threads`` (its
    OMP_NUM_THREADS as the environment holds it, a string; None: the library default, all cores). Returns this
    invocation's wall seconds."""
    if STOP.requested:  # before its log and its record: it does not start
        raise PhaseStopped("not started: a stop was requested")
    command = train_command(
        TRAIN_SCRIPT, config_file, seed=seed, output_dir=seed_dir, overrides=overrides, phase=phase.name
    )
    threads = (os.environ if env is None else env).get("OMP_NUM_THREADS")
    with contextlib.ExitStack() as files:
        log = None
        if log_path is not None:
            os.makedirs(os.path.dirname(log_path), exist_ok=True)
            log = files.enter_context(open(log_path, "a"))
        print("+", shlex.join(command), file=log, flush=True)
        start = time.perf_counter()
        with recorded_invocation(phase, threads) as run:
            try:
                run["cpu_s"] = run_process(command, env=env, stdout=log)
            except PhaseStopped as stopped:  # its time counts: the phase continues from its checkpoint
                run["cpu_s"] = stopped.cpu_s
                raise
        wall_s = time.perf_counter() - start
    timing = {
        **invocation_totals(read_json(os.path.join(phase.output_dir, RUNS_FILE), what="phase runs")),
        "load_avg": list(os.getloadavg()),  # 1, 5, 15 min
        "threads": threads,
    }
    write_json_atomic(os.path.join(phase.output_dir, WALL_FILE), timing, indent=1)
    return wall_s


def phase_timing(phase):
    """The phase's recorded runs, read once: {"wall_s", "cpu_s", "load_avg", "threads", "runs",
    "runs_without_cpu", "unrecorded_earlier"} (:func:`run_phase`), NaN / None for what it lacks (a record of before
    2026-12-07 holds the last invocation's times only)."""
    path = os.path.join(phase.output_dir, WALL_FILE)
    timing = read_json(path, what="wall time") if os.path.isfile(path) else {}
    nan = float("nan")
    return {
        "wall_s": timing.get("wall_s", nan),
        "cpu_s": timing.get("cpu_s", nan),
        "load_avg": timing.get("load_avg"),
        "threads": timing.get("threads"),
        "runs": timing.get("runs"),
        "runs_without_cpu": timing.get("runs_without_cpu"),
        "unrecorded_earlier": timing.get("unrecorded_earlier"),
    }


def setting_flags(protocol, quick):
    """This script's options that choose the setting (:data:`SETTINGS`' key)."""
    return (["--protocol", protocol] if protocol != "v1" else []) + (["--quick"] if quick else [])


def entry_command(args, entry, seed):
    """The command line a results file records: this script for the one (entry, seed)."""
    # overrides first: after --entries / --seeds, argparse would read them as entries or seeds
    return shlex.join(
        ["scripts/leaderboard.py", *args.overrides]
        + setting_flags(args.protocol, args.quick)
        + ["--entries", entry, "--seeds", str(seed)]
    )


def entry_record(args, entry, chain, seed, cfg, phases, *, command, commit, omp_num_threads):
    """The (entry, seed) results record (ltdet2.engine.leaderboard's format) of a chain whose phases are all done
    in ``phases`` (the seed's {name: Phase}): the entry's metrics, ``command``, ``commit`` (the code it ran on),
    the iterations and each phase's recorded timing (:func:`phase_timing`), and ``omp_num_threads`` (a string, None:
    the library default)."""
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
        # how each phase's times were gathered: its invocations, those without CPU seconds, and whether it was
        # resumed from checkpoints whose time is not known (then its wall and CPU seconds are a lower bound)
        phase_runs={
            name: {key: timing[key] for key in ("runs", "runs_without_cpu", "unrecorded_earlier")}
            for name, timing in timings.items()
        },
        omp_num_threads=omp_num_threads,
    )
    curves = {
        name: phase_curve(phases[name], cfg.phases[name].train)
        for name in chain
        if int(cfg.phases[name].train.eval_period or 0) > 0
    }
    if curves:
        record["curves"] = curves
    return record


def phase_curve(phase, train):
    """The learning curve of a phase evaluated every ``train.eval_period`` iterations (its final evaluation the
    last point), from its metrics.json (ltdet2.engine.leaderboard.read_learning_curve); an error naming the
    evaluations metrics.json lacks (Detectron2's writers keep only the latest value of a metric between two writes,
    every ``train.log_period`` iterations: an eval_period that is not a multiple of it can lose points)."""
    path = os.path.join(phase.output_dir, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"phase {phase.name}: no {path} to read its learning curve from")
    curve = read_learning_curve(path)
    period, max_iter = int(train.eval_period), int(train.max_iter)
    expected = sorted({*range(period, max_iter + 1, period), max_iter})
    missing = sorted(set(expected) - {point["iteration"] for point in curve})
    if missing:
        raise ValueError(
            f"phase {phase.name}: {path} lacks the evaluations after iterations {missing} of its learning curve "
            f"(eval_period {period}, log_period {train.log_period}: make eval_period a multiple of log_period)"
        )
    return curve


def run_entry(args, entry, chain, seed, cfg, phases, seed_dir, command):
    """Trains what ``chain`` still lacks in ``seed_dir``, one phase after another, and returns the (entry, seed)
    results record."""
    commit = git_commit()  # the code the entry runs on
    for name in chain:
        if phases[name].is_done():
            print(f"  phase {name}: finished in {phases[name].output_dir}, not run again", flush=True)
        else:
            run_phase(args.config_file, phases[name], seed, seed_dir, args.overrides)
    threads = entry_threads(phases[entry])
    return entry_record(args, entry, chain, seed, cfg, phases, command=command, commit=commit, omp_num_threads=threads)


def entry_threads(phase):
    """The threads a results file records: those of the entry's own last phase as it ran (its :data:`WALL_FILE`,
    also when an earlier invocation trained it), else this process's OMP_NUM_THREADS (None: the library default,
    all cores)."""
    threads = phase_timing(phase)["threads"]
    return os.environ.get("OMP_NUM_THREADS") if threads is None else threads


# ---------------------------------------------------------------------------------------------------
# --jobs N > 1: the phases of every seed as jobs, N processes at a time


def job_threads(cores, jobs, runnable):
    """Intra-op threads (OMP / MKL) of a job started while ``runnable`` jobs (those running and those ready, this
    one included) share the ``cores``, ``jobs`` at most at once: the cores split evenly, at least 1 each, so that a
    job that starts alone gets them all."""
    return max(1, cores // min(jobs, runnable))


def phase_log_path(seed_dir, name):
    return os.path.join(seed_dir, "logs", f"{name}.log")


def missing_results(entries, seeds, results_dir):
    """The (seed, entry) pairs without a results file, in seed then entry order."""
    return [
        (seed, entry)
        for seed in seeds
        for entry in entries
        if not os.path.isfile(results_path(results_dir, entry, seed))
    ]


def wanted_entries(entries, seeds, results_dir):
    """:func:`missing_results`; the others are printed as skipped."""
    wanted = missing_results(entries, seeds, results_dir)
    for seed in seeds:
        for entry in entries:
            if (seed, entry) not in wanted:
                print(f"{entry} seed {seed}: {results_path(results_dir, entry, seed)} exists, skipped", flush=True)
    return wanted


def print_job_plan(jobs, workers):
    """--dry-run: the jobs in the scheduler's order of preference (the first ready one starts first)."""
    print(f"--jobs {workers}: {len(jobs)} phase run(s), in the order they are preferred", flush=True)
    for job in jobs:
        needs = ", ".join(name for _, name in job.needs) or "nothing"
        path = f"{job.priority} iterations over {job.path_phases} phase(s)"
        print(f"  seed {job.seed} phase {job.phase}: path {path}, needs {needs}", flush=True)


def failure_reason(error):
    if isinstance(error, subprocess.CalledProcessError):
        return f"exit status {error.returncode}"
    return f"{type(error).__name__}: {error}"


def skip_dependents(waiting, blocked):
    """Removes from ``waiting`` ({key: job}, in a topological order) every job that needs one of ``blocked`` (keys
    of failed or skipped jobs), transitively, and prints each; returns their keys."""
    skipped = set()
    for key, job in list(waiting.items()):
        failed_inputs = [need for need in job.needs if need in blocked or need in skipped]
        if failed_inputs:
            skipped.add(key)
            del waiting[key]
            names = ", ".join(name for _, name in failed_inputs)
            print(f"seed {job.seed} phase {job.phase}: skipped, it needs {names}, which did not finish", flush=True)
    return skipped


def run_phase_jobs(args, jobs, phases, seed_dirs, workers, on_finished):
    """Runs ``jobs`` (ltdet2.engine.leaderboard.phase_jobs, in their order of preference) ``workers`` at a time, each
    phase in its own process (:func:`run_phase`) with its output in ``<seed_dir>/logs/<phase>.log`` and
    :func:`job_threads` threads, decided when it starts; ``phases`` / ``seed_dirs``: {seed: {name: Phase}} /
    {seed: folder}. Whenever a slot is free, the first ready job (its needs finished) starts. ``on_finished(job)``
    runs in this thread as each job finishes. A failed job's dependents are not started; the others go on. After a
    stop request (:data:`STOP`) no job starts; those running stop (:class:`PhaseStopped`, neither finished nor
    failed). Returns {(seed, phase): (error, log path)} of the failed jobs."""
    cores = os.cpu_count() or 1
    rank = {job.key: index for index, job in enumerate(jobs)}
    waiting = {job.key: job for job in jobs}
    finished, failed, running = set(), {}, {}  # running: {future: (job, threads, log path)}

    def run(job, threads, log_path):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        phase = phases[job.seed][job.phase]
        seed_dir = seed_dirs[job.seed]
        return run_phase(args.config_file, phase, job.seed, seed_dir, args.overrides, env=env, log_path=log_path)

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        while waiting or running:
            ready = [job for job in waiting.values() if all(need in finished for need in job.needs)]
            starting = [] if STOP.requested else ready[: workers - len(running)]
            if starting:  # running + ready stays the same while these start: they all get the same threads
                threads = job_threads(cores, workers, len(running) + len(ready))
            for job in starting:
                del waiting[job.key]
                log_path = phase_log_path(seed_dirs[job.seed], job.phase)
                print(f"seed {job.seed} phase {job.phase}: started, {threads} thread(s), log {log_path}", flush=True)
                running[pool.submit(run, job, threads, log_path)] = (job, threads, log_path)
            if not running:
                if STOP.requested:
                    break
                raise RuntimeError(f"--jobs: jobs {list(waiting)} wait for phases that are neither done nor planned")
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: rank[running[f][0].key]):
                job, threads, log_path = running.pop(future)
                error = future.exception()
                where = f"seed {job.seed} phase {job.phase}"
                if isinstance(error, PhaseStopped):
                    print(f"{where}: stopped on request, log {log_path}", flush=True)
                    STOP.request(f"{where} stopped")  # already requested, unless the stop came from the phase
                    continue
                if error is not None:
                    failed[job.key] = (error, log_path)
                    print(f"{where}: failed ({failure_reason(error)}), log {log_path}", flush=True)
                    skip_dependents(waiting, {job.key})
                    continue
                finished.add(job.key)
                wall_min = future.result() / 60
                print(f"{where}: finished in {wall_min:.1f} min, {threads} thread(s), log {log_path}", flush=True)
                on_finished(job)
    return failed


def train_with_jobs(args, cfg, chains, entries, seeds, output_dir, results_dir):
    """``--jobs N`` > 1: the phases that the wanted (entry, seed) pairs (those without a results file) still lack,
    as jobs of ltdet2.engine.leaderboard.phase_jobs run N at a time (:func:`run_phase_jobs`), under the lock of
    every seed's folder; an (entry, seed)'s results file is written as soon as its whole chain is done. Raises,
    once every other job has ended, naming each failed (seed, phase) and its log."""
    seed_dirs = {seed: os.path.join(output_dir, f"seed{seed}") for seed in seeds}
    with contextlib.ExitStack() as locks:
        if not args.dry_run:  # one run per seed's folder; the training processes run under its lock
            for seed in seeds:
                locks.enter_context(RunLock(seed_dirs[seed]))
        phases = {seed: seed_phases(cfg, seed_dirs[seed]) for seed in seeds}  # a Phase keeps its own output_dir
        wanted = wanted_entries(entries, seeds, results_dir)
        done = {(seed, name) for seed in seeds for name, phase in phases[seed].items() if phase.is_done()}
        jobs = phase_jobs(cfg.phases, chains, wanted, done)
        if args.dry_run:
            print_job_plan(jobs, args.jobs)
            return
        commit = git_commit()  # the code the entries run on
        unwritten = list(wanted)

        def write_finished_entries():
            for seed, entry in list(unwritten):
                if all((seed, name) in done for name in chains[entry]):
                    unwritten.remove((seed, entry))
                    write_job_results(args, entry, chains[entry], seed, cfg, phases[seed], results_dir, commit)

        def on_finished(job):
            done.add(job.key)
            write_finished_entries()

        write_finished_entries()  # chains that finished in an earlier run without writing their results
        failed = run_phase_jobs(args, jobs, phases, seed_dirs, args.jobs, on_finished)
    if failed:
        named = "; ".join(
            f"seed {seed} phase {name} ({failure_reason(error)}, log {log_path})"
            for (seed, name), (error, log_path) in failed.items()
        )
        raise RuntimeError(f"--jobs: {len(failed)} phase(s) failed, the phases that need them were not run: {named}")
    if STOP.requested:
        exit_stopped()


def exit_stopped():
    print(
        f"stopped on request: the phases that ran saved their checkpoints; run the same command again to continue "
        f"(exit status {INTERRUPTED_EXIT_STATUS})",
        flush=True,
    )
    sys.exit(INTERRUPTED_EXIT_STATUS)


def write_job_results(args, entry, chain, seed, cfg, phases, results_dir, commit):
    """Writes the results file of an (entry, seed) whose chain is done; its ``omp_num_threads``:
    :func:`entry_threads`."""
    threads = entry_threads(phases[entry])
    command = entry_command(args, entry, seed)
    record = entry_record(
        args, entry, chain, seed, cfg, phases, command=command, commit=commit, omp_num_threads=threads
    )
    print(f"{entry} seed {seed}: wrote {write_entry_results(results_dir, record)}", flush=True)


def threads_note(records, seed):
    """ ", N thread(s) per process" from the seed's records' ``omp_num_threads`` ("" where none recorded it)."""
    recorded = {r["omp_num_threads"] for r in records if r["seed"] == seed and "omp_num_threads" in r}
    if not recorded:
        return ""
    labels = sorted("all cores" if n is None else f"{n} thread(s)" for n in recorded)
    return f", {' / '.join(labels)} per process"


def rebuild_command(results_dir, docs_dir, setting):
    """The command line that rebuilds ``docs_dir``'s table and plots from ``results_dir`` in ``setting``."""
    protocol, quick = next(key for key, known in SETTINGS.items() if known is setting)
    command = ["python", "scripts/leaderboard.py", *setting_flags(protocol, quick), "--from-results"]
    command += ["--docs-dir", docs_dir]
    if os.path.normpath(results_dir) != os.path.normpath(os.path.join(docs_dir, "results")):
        command += ["--results-dir", results_dir]
    return shlex.join(command)


def build_outputs(results_dir, docs_dir, order, setting=SETTINGS["v1", False]):
    """The table and plots from the results files of ``results_dir`` alone (the pairs of ``setting``); returns the
    table."""
    records = load_entry_results(results_dir)
    names = list(
        dict.fromkeys([*(n for n in order if any(r["entry"] == n for r in records)), *(r["entry"] for r in records)])
    )
    table = format_leaderboard_table(
        records, names, reference=setting.reference, pairs=setting.pairs, families=setting.families
    )
    curves = format_curves_table(records, CURVE_PHASE)
    if curves:
        table += (
            f"\n\nThe shared {CURVE_PHASE}'s learning curve (box AP on the val set; docs/leaderboard/protocol.md: "
            f"converged when the last quarter gains under 1 AP):\n\n{curves}"
        )
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
        f" {results_dir} by `{rebuild_command(results_dir, docs_dir, setting)}`.\n"
    )
    os.makedirs(docs_dir, exist_ok=True)
    with open(os.path.join(docs_dir, "leaderboard.md"), "w") as f:
        f.write(text)
    plot_apr_vs_apf(records, os.path.join(docs_dir, "apr_vs_apf.png"), entries=names)
    plot_entries_per_class_ap(records, os.path.join(docs_dir, "per_class_ap"), entries=names)
    plot_ap_by_image_count(records, os.path.join(docs_dir, "ap_by_image_count.png"), entries=names)
    plot_learning_curves(records, CURVE_PHASE, os.path.join(docs_dir, "learning_curve.png"))
    if setting.families:
        plot_paired_differences(records, setting.families, os.path.join(docs_dir, "paired_differences.png"))
    return text


def best_entry_by_apr(records, exclude=(), task="bbox"):
    """The entry with the highest mean APr over its seeds' records (:func:`ltdet2.engine.leaderboard.apr_apf_points`;
    ties: the first in the records' order), leaving out ``exclude``; None without one."""
    mean_apr = {entry: point[0] for entry, point in apr_apf_points(records, task=task).items() if entry not in exclude}
    return max(mean_apr, key=mean_apr.get) if mean_apr else None


def rare_images_arguments(args, cfg, records, seed, output_dir, docs_dir):
    """scripts/visualize.py's command line for the same :data:`RARE_IMAGES` validation images holding rare classes
    (drawn with seed 0) for :data:`PICTURE_CONTROLS` and the entry with the best mean box APr, each from its final
    checkpoint of ``seed``, into ``<docs_dir>/rare_images``. The entries need results files of ``seed``; a missing
    checkpoint is an error naming it."""
    have = {r["entry"] for r in records if r["seed"] == seed}
    best = best_entry_by_apr([r for r in records if r["entry"] in have], exclude=PICTURE_CONTROLS)
    entries = [entry for entry in (*PICTURE_CONTROLS, best) if entry in have]
    if not entries:
        raise FileNotFoundError(f"--rare-images {seed}: no results file of seed {seed} for {list(PICTURE_CONTROLS)}")
    seed_dir = os.path.join(output_dir, f"seed{seed}")
    phases = seed_phases(cfg, seed_dir)
    missing = [phases[entry].final_checkpoint for entry in entries if not phases[entry].has_final()]
    if missing:
        raise FileNotFoundError(f"--rare-images {seed}: the entries' final checkpoints are missing: {missing}")
    mean_apr = {entry: point[0] for entry, point in apr_apf_points(records, entries).items()}
    first, *others = entries
    argv = ["--config-file", args.config_file, "--phase", first, "--checkpoint", phases[first].final_checkpoint]
    for entry in others:
        argv += ["--compare", f"{args.config_file}:{entry}:{phases[entry].final_checkpoint}"]
    for entry in entries:
        role = "best box APr" if entry == best else "control"
        argv += ["--label", f"{entry} ({role}; mean box APr {mean_apr[entry]:.1f})"]
    argv += ["--classes", "rare", "--num-images", str(RARE_IMAGES), "--seed", "0", "--score-threshold", "0.3"]
    argv += ["--output", os.path.join(docs_dir, RARE_IMAGES_DIR)]
    return argv + train_overrides(seed=seed, output_dir=seed_dir, overrides=args.overrides)


def run_visualize(argv):
    run_process([sys.executable, VISUALIZE_SCRIPT, *argv])


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
    parser.add_argument(
        "--protocol",
        choices=("v1", "v2"),
        default="v1",
        help="v1: projects/leaderboard.py (450 iterations, unmatched controls; docs/leaderboard); v2: "
        "projects/leaderboard_v2.py (converged start, matched controls; docs/leaderboard/protocol.md)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would run, run nothing")
    parser.add_argument("--from-results", action="store_true", help="only rebuild the table and plots")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="train the phases of all seeds as jobs, this many processes at a time, each as soon as its input"
        " phases are done (longest remaining path first), the cores split evenly between the jobs running and ready"
        " when one starts; logs in <output-dir>/seed<N>/logs/<phase>.log (1: one phase after another, in this"
        " process's output; measured times: docs/benchmarks.md#leaderboard)",
    )
    parser.add_argument("--no-outputs", action="store_true", help="train only: leave the table and plots as they are")
    parser.add_argument(
        "--rare-images",
        type=int,
        metavar="SEED",
        help=f"train nothing: draw the same {RARE_IMAGES} rare-class val images for the controls "
        f"{list(PICTURE_CONTROLS)} and the entry with the best mean box APr, from their final checkpoints of SEED, "
        f"into <docs-dir>/{RARE_IMAGES_DIR} (scripts/visualize.py)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (before --entries / --seeds)")
    args = parser.parse_args(argv)
    setting = SETTINGS[args.protocol, args.quick]
    args.config_file = args.config_file or setting.config_file
    seeds = args.seeds or list(setting.seeds)
    output_dir = args.output_dir or setting.output_dir
    docs_dir = args.docs_dir or setting.docs_dir
    results_dir = args.results_dir or os.path.join(docs_dir, "results")

    cfg = load_config(args.config_file, args.overrides)
    chains = entry_chains(cfg.phases)
    unknown = sorted(set(args.entries or ()) - set(chains))
    if unknown:
        parser.error(f"--entries {unknown}: {args.config_file} has entries {list(chains)}")
    entries = [name for name in chains if args.entries is None or name in args.entries]
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: must be at least 1")

    check_results_match_project(results_dir, cfg, chains, args.config_file)
    if args.rare_images is not None:
        records = load_entry_results(results_dir) if os.path.isdir(results_dir) else []
        run_visualize(rare_images_arguments(args, cfg, records, args.rare_images, output_dir, docs_dir))
        print(f"rare-class images written to {os.path.join(docs_dir, RARE_IMAGES_DIR)}", flush=True)
        return None
    if not args.from_results:
        wanted = missing_results(entries, seeds, results_dir)
        check_phases_match_project(args.config_file, args.overrides, chains, wanted, output_dir)
        with STOP.armed():
            train(args, cfg, chains, entries, seeds, output_dir, results_dir)
    if args.dry_run or args.no_outputs:
        return None
    if not os.path.isdir(results_dir):
        print(f"no results in {results_dir} yet", flush=True)
        return None
    text = build_outputs(results_dir, docs_dir, list(chains), setting)
    print(text)
    return text


def train(args, cfg, chains, entries, seeds, output_dir, results_dir):
    """Trains what the wanted (entry, seed) pairs lack and writes their results files: phase jobs with ``--jobs``
    > 1 (:func:`train_with_jobs`), else each seed's entries one after another; ``--dry-run`` only lists them."""
    if args.jobs > 1:
        train_with_jobs(args, cfg, chains, entries, seeds, output_dir, results_dir)
    else:
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
                    command = entry_command(args, entry, seed)
                    try:
                        record = run_entry(args, entry, chain, seed, cfg, phases, seed_dir, command)
                    except PhaseStopped:
                        exit_stopped()
                    print(f"{entry} seed {seed}: wrote {write_entry_results(results_dir, record)}", flush=True)
        if STOP.requested:  # during the last phase's final evaluation: it finished, as the --jobs path says
            exit_stopped()


if __name__ == "__main__":
    main()
