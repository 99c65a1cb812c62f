"""A leaderboard: entries of a multi-phase project, one small results file per (entry, seed), and the table and
plots rebuilt from those files alone (``scripts/leaderboard.py``, ``projects/leaderboard.py``).

An *entry* of a project is a phase that no other phase starts from, distils from or scores with (its last
phase); its *chain* is that phase and, transitively, every phase it needs (``train.init_from_phase`` or the
previous phase, ``train.teacher_from_phase``, the input phases of its derived datasets' builders: the runner's
rules, :func:`ltdet2.engine.phase_graph.phase_input_names`), in the project's order. Chains share phases (one
pretrain for several fine-tunes): a shared phase trains once per seed. Only entries are evaluated
(:func:`evaluate_entries_only`).

Results file of one (entry, seed), ``<results-dir>/<entry>_seed<N>.json``: the format of
:mod:`ltdet2.engine.results` (``phases`` holds the entry's last phase under the entry's name) plus ``entry``,
``chain`` (its phases), ``phase_wall_s`` (wall seconds of each phase's run: training, its derived datasets and,
for the last phase, the evaluation; measured once per seed, so a shared phase's time is counted in every entry
that needs it), ``wall_s`` (their sum: what the entry costs alone), ``eval_s`` (the entry's evaluation, from its
phase record's ``eval_seconds``), ``train_s`` (``wall_s - eval_s``: the entry's training, its derived datasets
and process start-ups included), ``phase_cpu_s`` / ``cpu_s`` (CPU seconds of each phase's process and their sum:
less sensitive than wall times to other work on the machine) and ``phase_load_avg`` (the machine's 1, 5 and 15
minute load averages when each phase's run ended). Timings a record lacks (older records) are NaN or missing.

The phases of several entries and seeds can train at once (``scripts/leaderboard.py --jobs N``):
:func:`phase_jobs` plans them as jobs ``(seed, phase)``, each waiting for its input phases of the same seed.
"""

import glob
import json
import math
import os
from dataclasses import dataclass

import numpy as np

from ltdet2.evaluation.plots import agg_figure, plot_per_class_ap

from .phase_graph import phase_input_names
from .results import (
    PAIRED_METRICS,
    format_mean_std_table,
    format_paired_differences,
    load_results_files,
    mean_per_class_ap,
    paired_comparisons,
    write_results_file,
)

__all__ = [
    "ENTRY_METRICS",
    "phase_inputs",
    "entry_chains",
    "evaluate_entries_only",
    "chain_iterations",
    "PhaseJob",
    "phase_jobs",
    "results_path",
    "write_entry_results",
    "CURVE_METRICS",
    "CONVERGENCE_FRACTION",
    "CONVERGENCE_TOLERANCE",
    "read_learning_curve",
    "seed_curves",
    "curve_gain",
    "format_curves_table",
    "plot_learning_curves",
    "load_entry_results",
    "mismatched_records",
    "records_by_seed",
    "format_leaderboard_table",
    "seed_wall_times",
    "apr_apf_points",
    "plot_apr_vs_apf",
    "paired_difference_points",
    "plot_paired_differences",
    "plot_entries_per_class_ap",
    "ap_by_image_count",
    "plot_ap_by_image_count",
]

# the table's columns: (column, task, metric of the evaluator's results) and the entry's wall time in minutes
ENTRY_METRICS = (
    ("AP", "bbox", "AP"),
    ("AP50", "bbox", "AP50"),
    ("APr", "bbox", "APr"),
    ("APc", "bbox", "APc"),
    ("APf", "bbox", "APf"),
    ("mask AP", "segm", "AP"),
    ("mask APr", "segm", "APr"),
)
TRAIN_COLUMN = "train (min)"
WALL_COLUMN = "wall (min)"
TABLE_TASK = "leaderboard"  # the merged task the table is formatted from


def _train(phase):
    return phase["train"]


def phase_inputs(phases, name):
    """Names of the phases phase ``name`` of ``phases`` (an ordered mapping name -> phase config) needs
    (:func:`~ltdet2.engine.phase_graph.phase_input_names`): its input checkpoint's (``train.init_from_phase``; None:
    the previous phase, "": none), its teacher's and those its derived datasets' builders read (their
    ``input_phases()``); each must be a phase of the project."""
    names = list(phases)
    index = names.index(name)
    needed = phase_input_names(_train(phases[name]), names[index - 1] if index > 0 else None)
    unknown = [n for n in needed if n not in phases]
    if unknown:
        raise ValueError(f"phase {name!r} needs phases {unknown}, which the project does not have ({names})")
    return needed


def entry_chains(phases):
    """{entry: [the phases it needs and itself, in the project's order]} for every phase no other phase needs."""
    inputs = {name: phase_inputs(phases, name) for name in phases}
    needed_by_others = {n for name in phases for n in inputs[name]}
    chains = {}
    for entry in (name for name in phases if name not in needed_by_others):
        chain, todo = {entry}, [entry]
        while todo:
            for source in inputs[todo.pop()]:
                if source not in chain:
                    chain.add(source)
                    todo.append(source)
        chains[entry] = [name for name in phases if name in chain]
    return chains


def evaluate_entries_only(phases, keep=()):
    """Removes ``dataloader.evaluator`` from every phase that is not an entry nor in ``keep`` (on a CPU a Mask R-CNN
    evaluation costs minutes; the runner evaluates a phase without one to nothing). Returns ``phases``."""
    entries = entry_chains(phases)
    unknown = sorted(set(keep) - set(phases))
    if unknown:
        raise KeyError(f"evaluate_entries_only: keep={unknown} are not phases of the project ({list(phases)})")
    for name, phase in phases.items():
        if name not in entries and name not in keep:
            phase["dataloader"].pop("evaluator", None)
    return phases


def chain_iterations(phases, chain):
    """Training iterations of a chain: the sum of its phases' ``train.max_iter``."""
    return sum(int(_train(phases[name]).max_iter) for name in chain)


@dataclass(frozen=True)
class PhaseJob:
    """One phase of one seed to train (:func:`phase_jobs`)."""

    seed: int
    phase: str
    needs: tuple  # the (seed, phase) keys of the jobs it waits for: its input phases of its seed not yet done
    priority: int  # iterations on its longest path of jobs to the end of a chain, its own included
    path_phases: int = 1  # phases on its longest path of jobs (its own included): the tie-break of priority

    @property
    def key(self):
        return (self.seed, self.phase)


def phase_jobs(phases, chains, wanted, done=()):
    """The jobs that train the (seed, entry) pairs of ``wanted``: every phase of an entry's chain (``chains``:
    :func:`entry_chains`) that is not in ``done`` ((seed, phase) pairs already finished) is one job per seed, however
    many of the seed's entries share it. A job needs the jobs of its :func:`phase_inputs` in its seed (an input in
    ``done`` needs nothing). Its priority is the critical path in iterations: its phase's ``train.max_iter`` plus the
    largest priority among the jobs that need it. Ties (every entry has the same iteration budget) go to the longer
    path in phases (each phase costs a process start-up and, for an entry, an evaluation: LST's serial chain first).

    Returns the jobs in the order a scheduler prefers them: priority descending, then path length in phases
    descending, then seed, then the project's order of ``phases``. It is a topological order: a job's inputs come
    before it (a phase's inputs are earlier phases of the project, and their priority exceeds its own)."""
    order = {name: index for index, name in enumerate(phases)}
    done = set(done)
    keys = {(seed, name) for seed, entry in wanted for name in chains[entry] if (seed, name) not in done}
    needs = {
        (seed, name): tuple((seed, n) for n in phase_inputs(phases, name) if (seed, n) not in done)
        for seed, name in keys
    }
    dependents = {key: [] for key in keys}
    for key, inputs in needs.items():
        for source in inputs:
            dependents[source].append(key)
    priorities, path_phases = {}, {}

    def priority(key):  # memoized: the graph is a DAG of a few dozen jobs
        if key not in priorities:
            own = chain_iterations(phases, [key[1]])
            priorities[key] = own + max((priority(d) for d in dependents[key]), default=0)
            path_phases[key] = 1 + max((path_phases[d] for d in dependents[key]), default=0)
        return priorities[key]

    jobs = []
    for seed, name in keys:
        job_priority = priority((seed, name))
        jobs.append(PhaseJob(seed, name, needs[seed, name], job_priority, path_phases[seed, name]))
    return sorted(jobs, key=lambda job: (-job.priority, -job.path_phases, job.seed, order[job.phase]))


def results_path(results_dir, entry, seed):
    return os.path.join(results_dir, f"{entry}_seed{int(seed)}.json")


def load_entry_results(results_dir):
    """Every (entry, seed) results file of ``results_dir`` (:func:`results_path` names), checked: a file whose
    name does not match its ``entry`` / ``seed`` is refused."""
    records = load_results_files(results_dir)
    for record in records:
        path = results_path(results_dir, record.get("entry", "?"), record["seed"])
        if not os.path.isfile(path) or record["entry"] not in record["phases"]:
            names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(results_dir, "*.json")))
            raise ValueError(
                f"{results_dir}: a results file (entry {record.get('entry')!r}, seed {record['seed']}) is not named "
                f"<entry>_seed<N>.json or lacks its entry's phase; files: {names}"
            )
    return records


def mismatched_records(records, phases, chains):
    """["<entry> seed <N>: what differs", ...] of the results ``records`` whose entry the project (``phases``, its
    ``chains``: :func:`entry_chains`) has but which were trained over another chain or another number of iterations
    than it gives that entry now (:func:`chain_iterations`): files of another protocol (e.g. another pretrain
    length), which must not be skipped as done nor tabulated with this protocol's. Records of entries the project
    lacks, and records without ``chain`` / ``iterations``, are not judged."""
    mismatched = []
    for record in records:
        entry = record.get("entry")
        if entry not in chains:
            continue
        chain, iterations = chains[entry], chain_iterations(phases, chains[entry])
        differs = []
        if "chain" in record and list(record["chain"]) != list(chain):
            differs.append(f"chain {record['chain']}, the project's {chain}")
        if "iterations" in record and int(record["iterations"]) != iterations:
            differs.append(f"{record['iterations']} iterations, the project's {iterations}")
        if differs:
            mismatched.append(f"{entry} seed {record['seed']}: " + "; ".join(differs))
    return mismatched


def _merged_task(record):
    """The entry's results as one task for the table: ENTRY_METRICS' columns, the training and wall times
    (minutes; NaN where the record lacks them)."""
    phase = record["phases"][record["entry"]]
    merged = {}
    for column, task, metric in ENTRY_METRICS:
        value = phase.get(task, {}).get(metric, math.nan)
        merged[column] = math.nan if value is None else float(value)
    merged[TRAIN_COLUMN] = record.get("train_s", math.nan) / 60.0
    merged[WALL_COLUMN] = record.get("wall_s", math.nan) / 60.0
    return merged


def records_by_seed(records, entries=None):
    """One results record per seed (the format of :mod:`ltdet2.engine.results`) holding every entry of that seed
    as a phase (``entries``: their order; default the order of ``records``), each phase with the per-entry tasks
    and the merged :data:`TABLE_TASK` the table reads."""
    order = list(entries) if entries is not None else list(dict.fromkeys(r["entry"] for r in records))
    by_seed = {}
    for record in sorted((r for r in records if r["entry"] in order), key=lambda r: r["seed"]):
        merged = by_seed.setdefault(record["seed"], {"seed": record["seed"], "phases": {}})
        merged["phases"][record["entry"]] = {**record["phases"][record["entry"]], TABLE_TASK: _merged_task(record)}
    for merged in by_seed.values():  # the first seed's order is the table's
        merged["phases"] = {name: merged["phases"][name] for name in order if name in merged["phases"]}
    return [by_seed[seed] for seed in sorted(by_seed)]


def format_leaderboard_table(records, entries=None, reference=None, pairs=(), families=()):
    """Markdown: the mean ± std table over seeds (:func:`ltdet2.engine.results.format_mean_std_table`) of the
    entries' box AP, AP50, APr, APc, APf, mask AP, mask APr, training and wall time; with ``reference`` (an
    entry) and at least 2 seeds, the paired differences of every other entry against it (box AP, APr, APc, APf),
    followed by those of ``pairs`` ((entry, other entry), e.g. a composition against one of its parts) whose two
    entries both have results: one table, so Holm's correction runs over all its (pair, metric) cells
    (:func:`ltdet2.engine.results.format_paired_differences`). ``families`` ((title, pairs), ...): one paired
    table per family, each under its title and Holm-corrected on its own (a family without two entries with
    results is left out)."""
    merged = records_by_seed(records, entries)
    if not merged:
        have = sorted({r["entry"] for r in records})
        raise ValueError(f"no results to tabulate: entries {list(entries or [])} asked for, the records hold {have}")
    columns = tuple(column for column, _, _ in ENTRY_METRICS) + (TRAIN_COLUMN, WALL_COLUMN)
    table = format_mean_std_table(merged, TABLE_TASK, metrics=columns, row_label="entry")
    names = list(merged[0]["phases"])
    if reference is not None and len(merged) >= 2 and reference in names:
        present = list(dict.fromkeys(n for r in merged for n in r["phases"]))
        compared = [(name, reference) for name in present if name != reference]
        compared += [(a, b) for a, b in pairs if a in present and b in present and (a, b) not in compared]
        table += "\n\n" + format_paired_differences(merged, compared, "bbox")
    if len(merged) >= 2:
        present = set(dict.fromkeys(n for r in merged for n in r["phases"]))
        for title, family in families:
            compared = [(a, b) for a, b in family if a in present and b in present]
            if compared:
                table += f"\n\n{title}\n\n" + format_paired_differences(merged, compared, "bbox")
    return table


def seed_wall_times(records):
    """{seed: (wall seconds of the seed's phases, each shared phase counted once; entries)} from the records'
    ``phase_wall_s``: what the leaderboard cost on its machine, per seed. A phase timed differently in two
    records of one seed (impossible for one run's records) is refused."""
    walls, entries = {}, {}
    for record in records:
        seed = record["seed"]
        entries.setdefault(seed, []).append(record["entry"])
        for phase, seconds in record.get("phase_wall_s", {}).items():
            known = walls.setdefault(seed, {}).setdefault(phase, seconds)
            if known != seconds and not (math.isnan(known) and math.isnan(seconds)):
                raise ValueError(f"seed {seed}: phase {phase!r} has two wall times ({known} and {seconds} s)")
    return {seed: (math.fsum(walls.get(seed, {}).values()), entries[seed]) for seed in sorted(entries)}


def apr_apf_points(records, entries=None, task="bbox"):
    """{entry: (mean APr, std APr, mean APf, std APf, seeds)} over the seeds' results (sample std; 0 with one)."""
    points = {}
    for entry in entries or dict.fromkeys(r["entry"] for r in records):
        values = np.array(
            [[r["phases"][entry][task][m] for m in ("APr", "APf")] for r in records if r["entry"] == entry],
            dtype=np.float64,
        )
        if not len(values):
            continue
        std = np.std(values, axis=0, ddof=1) if len(values) > 1 else np.zeros(2)
        points[entry] = (values[:, 0].mean(), std[0], values[:, 1].mean(), std[1], len(values))
    return points


def plot_apr_vs_apf(records, out, *, entries=None, task="bbox", title=None):
    """Scatter plot of APr (y) against APf (x), one point per entry with ±1 std error bars over the seeds, each
    labelled with its name; written to ``out`` (PNG, Agg). Returns ``out``."""
    points = apr_apf_points(records, entries, task)
    if not points:
        raise ValueError("no entry to plot")
    fig = agg_figure(7, 5.5)
    ax = fig.subplots()
    seeds = sorted({r["seed"] for r in records})
    placed = []  # labelled points: a label near one goes to the lower left, so the two do not overlap
    for index, (entry, (apr, apr_std, apf, apf_std, num_seeds)) in enumerate(points.items()):
        color = f"C{index % 10}"
        ax.errorbar(apf, apr, xerr=apf_std, yerr=apr_std, fmt="o", color=color, capsize=3)
        label = entry if num_seeds == len(seeds) else f"{entry} ({num_seeds} seed{'s' if num_seeds > 1 else ''})"
        near = any(abs(apf - x) < 2.0 and abs(apr - y) < 2.0 for x, y in placed)
        offset, align = ((-5, -11), "right") if near else ((5, 4), "left")
        ax.annotate(label, (apf, apr), textcoords="offset points", xytext=offset, ha=align, fontsize=8, color=color)
        placed.append((apf, apr))
    ax.set_xlabel(f"APf ({task}, %)")
    ax.set_ylabel(f"APr ({task}, %)")
    ax.grid(alpha=0.3)
    ax.set_title(title or f"APr against APf, mean ± std over seeds {', '.join(map(str, seeds))}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def paired_difference_points(records, families, *, task="bbox"):
    """Per family (title, ((method, reference), ...)) of the paired tables: ``[(title, [point, ...]), ...]``, a point
    per pair whose two entries both have results in at least 2 seeds: {"pair", "seeds", and per metric APf and APr:
    "mean", "interval" (Holm-corrected, within the family's table of AP, APr, APc and APf, as
    :func:`format_leaderboard_table` corrects it) and "result" (Holm's step-down rejects it, the table's "result":
    its corrected interval excludes 0 and Holm had not stopped before it)}. Families without such a pair are left
    out."""
    merged = records_by_seed(records)
    if len(merged) < 2:
        return []
    present = {n for r in merged for n in r["phases"]}
    families_points = []
    for title, family in families:
        pairs = [(a, b) for a, b in family if a in present and b in present]
        if not pairs:
            continue
        # the metrics of the family's table (format_paired_differences' default): Holm's family is the same
        rows, _, _ = paired_comparisons(merged, pairs, task, metrics=PAIRED_METRICS)
        points = []
        for (method, reference), (_, holding, tests) in zip(pairs, rows):
            by_metric = dict(zip(PAIRED_METRICS, tests))
            if any("holm" not in by_metric[m] for m in ("APr", "APf")):  # fewer than 2 seeds hold both
                continue
            point = {"pair": f"{method} − {reference}", "seeds": len(holding)}
            for metric in ("APr", "APf"):
                holm_test = by_metric[metric]["holm"]
                point[metric] = {
                    "mean": by_metric[metric]["mean"],
                    "interval": tuple(holm_test["interval"]),
                    "result": bool(holm_test["rejected"]),
                }
            points.append(point)
        if points:
            families_points.append((title, points))
    return families_points


def plot_paired_differences(records, families, out, *, task="bbox"):
    """APr against APf of the paired differences (method − reference, per seed), one panel per family of the paired
    tables, each with its Holm-corrected intervals as error bars (:func:`paired_difference_points`): a filled point
    is a result on APr or APf (as in the table), a hollow one no result. Written to ``out`` (PNG, Agg);
    returns ``out``, or None without 2 seeds of a pair."""
    families_points = paired_difference_points(records, families, task=task)
    if not families_points:
        return None
    columns = min(3, len(families_points))
    panel_rows = math.ceil(len(families_points) / columns)
    fig = agg_figure(5.2 * columns, 4.6 * panel_rows)
    axes = np.atleast_1d(fig.subplots(panel_rows, columns)).ravel()
    for ax, (title, points) in zip(axes, families_points):
        for index, point in enumerate(points):
            apf, apr = point["APf"], point["APr"]
            color = f"C{index % 10}"
            x_err = [[apf["mean"] - apf["interval"][0]], [apf["interval"][1] - apf["mean"]]]
            y_err = [[apr["mean"] - apr["interval"][0]], [apr["interval"][1] - apr["mean"]]]
            filled = apf["result"] or apr["result"]
            ax.errorbar(
                apf["mean"],
                apr["mean"],
                xerr=x_err,
                yerr=y_err,
                fmt="o",
                color=color,
                markerfacecolor=color if filled else "white",
                capsize=3,
            )
            ax.annotate(
                point["pair"],
                (apf["mean"], apr["mean"]),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=7,
                color=color,
            )
        ax.axhline(0, color="0.5", linewidth=0.8)
        ax.axvline(0, color="0.5", linewidth=0.8)
        ax.set_title(title.replace("`", ""), fontsize=9)
        ax.set_xlabel(f"Δ APf ({task}, points)")
        ax.set_ylabel(f"Δ APr ({task}, points)")
        ax.grid(alpha=0.3)
    for ax in axes[len(families_points) :]:
        ax.set_visible(False)
    seeds = sorted({r["seed"] for r in records})
    fig.suptitle(
        f"Paired differences, mean with Holm-corrected intervals (seeds {', '.join(map(str, seeds))}); "
        "filled: a result on APr or APf (Holm rejects it)",
        fontsize=10,
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def plot_entries_per_class_ap(records, out_dir, *, entries=None, task="bbox"):
    """Per entry, its per-class AP (mean over the seeds) against training image count
    (:func:`ltdet2.evaluation.plots.plot_per_class_ap`), as ``<out_dir>/<entry>.png``; an entry without any
    defined AP (no detection: a too short ``--quick`` run) has no plot. Returns the paths."""
    paths = []
    for entry in entries or dict.fromkeys(r["entry"] for r in records):
        holding = [r for r in records if r["entry"] == entry]
        if not holding:
            continue
        seeds = ", ".join(str(r["seed"]) for r in holding)
        per_class = mean_per_class_ap(holding, entry, task)
        if all(c["AP"] is None for c in per_class):
            continue
        title = f"{entry}: per-class {task} AP, mean of seed{'s' if len(holding) > 1 else ''} {seeds}"
        paths.append(plot_per_class_ap(per_class, os.path.join(out_dir, f"{entry}.png"), title=title))
    return paths


IMAGE_COUNT_BINS = (1, 10, 30, 100, 300, math.inf)  # LVIS' groups: rare < 10 images <= common < 100 <= frequent


def ap_by_image_count(per_class, edges=IMAGE_COUNT_BINS):
    """Mean AP of the classes in each training-image-count bin ``[edges[i], edges[i + 1])`` of ``per_class``
    (entries with ``image_count`` and ``AP``, None for an undefined AP, left out). Returns (means, counts): arrays
    of ``len(edges) - 1``, NaN and 0 for a bin without a defined AP."""
    counts_and_ap = np.array(
        [(c["image_count"], c["AP"]) for c in per_class if c.get("AP") is not None], dtype=np.float64
    ).reshape(-1, 2)
    bins = np.digitize(counts_and_ap[:, 0], edges) - 1  # bin i holds edges[i] <= count < edges[i + 1]
    inside = (bins >= 0) & (bins < len(edges) - 1)
    counts = np.bincount(bins[inside], minlength=len(edges) - 1)
    sums = np.bincount(bins[inside], weights=counts_and_ap[inside, 1], minlength=len(edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan), counts


def plot_ap_by_image_count(records, out, *, entries=None, task="bbox", edges=IMAGE_COUNT_BINS):
    """One line per entry: the mean AP (per class the mean over seeds) of the classes in each bin of training
    image count (:func:`ap_by_image_count`), every entry on one figure; written to ``out`` (PNG, Agg). Returns
    ``out``, or None (nothing written) when no entry has a defined per-class AP."""
    fig = agg_figure(8, 5)
    ax = fig.subplots()
    lows, highs = np.array(edges[:-1], dtype=np.float64), np.array(edges[1:], dtype=np.float64)
    centers = np.sqrt(lows * np.where(np.isfinite(highs), highs, 3 * lows))  # geometric; an open last bin: lo..3 lo
    plotted = 0
    for index, entry in enumerate(entries or dict.fromkeys(r["entry"] for r in records)):
        holding = [r for r in records if r["entry"] == entry]
        if not holding:
            continue
        means, _ = ap_by_image_count(mean_per_class_ap(holding, entry, task), edges)
        if np.isnan(means).all():
            continue
        style = "-" if index < 10 else "--"
        ax.plot(centers, means, style, marker="o", color=f"C{index % 10}", label=entry)
        plotted += 1
    if not plotted:  # no detection anywhere (a too short --quick run): no figure
        return None
    seeds = sorted({r["seed"] for r in records})
    ax.set_xscale("log")
    ax.set_xticks(
        centers, [f"{lo}-{hi - 1}" if math.isfinite(hi) else f"{lo}+" for lo, hi in zip(edges[:-1], edges[1:])]
    )
    ax.minorticks_off()
    ax.set_xlabel("training images per class")
    ax.set_ylabel(f"mean per-class {task} AP (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(f"Per-class AP by training image count, mean over seeds {', '.join(map(str, seeds))}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def write_entry_results(results_dir, record):
    """Writes an (entry, seed) record to its :func:`results_path`; returns the path."""
    return write_results_file(results_path(results_dir, record["entry"], record["seed"]), record)


# ---------------------------------------------------------------------------------------------------
# learning curves: a phase evaluated every ``train.eval_period`` iterations (v2's shared pretrain)

CURVE_METRICS = ("AP", "APr", "APc", "APf")  # of each task (bbox, segm) a curve's points keep
# the protocol's convergence rule (docs/leaderboard/protocol.md): box AP gains under 1 over the last quarter
CONVERGENCE_FRACTION = 0.25
CONVERGENCE_TOLERANCE = 1.0


def read_learning_curve(metrics_json):
    """The evaluations of one phase's run, from its Detectron2 ``metrics.json`` (one JSON record per line; an
    evaluation's metrics are ``bbox/AP``, ``segm/APr``, ... in the record of the iteration it ran after): a list,
    by iteration, of ``{"iteration": iterations trained, "bbox": {AP, APr, APc, APf}, "segm": {...}}`` (tasks the
    evaluation had). A resumed run may have written an iteration twice: the last record of it counts."""
    points = {}
    with open(metrics_json) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{metrics_json}:{number}: not a JSON record ({error})") from None
            tasks = {}
            for task in ("bbox", "segm"):
                values = {m: record[f"{task}/{m}"] for m in CURVE_METRICS if f"{task}/{m}" in record}
                if values:
                    tasks[task] = values
            if tasks:
                iteration = int(record["iteration"]) + 1
                points.setdefault(iteration, {}).update(tasks)
    return [{"iteration": it, **tasks} for it, tasks in sorted(points.items())]


def seed_curves(records, phase):
    """{seed: ``phase``'s learning curve} from the records' ``curves`` (a seed's curve is the same in every record
    that holds it: the first is taken); seeds whose records hold none are left out."""
    curves = {}
    for record in records:
        curve = record.get("curves", {}).get(phase)
        if curve:
            curves.setdefault(record["seed"], curve)
    return curves


def curve_gain(curve, *, fraction=CONVERGENCE_FRACTION, task="bbox", metric="AP"):
    """How much ``metric`` gained over the last ``fraction`` of the curve's iterations: the last point's value
    minus that of the last point at or before ``(1 - fraction)`` of the last point's iteration (the protocol's
    convergence rule, docs/leaderboard/protocol.md: under 1 box AP over the last quarter). NaN when the curve has
    no such earlier point."""
    points = [(p["iteration"], p[task][metric]) for p in curve if task in p and metric in p[task]]
    if len(points) < 2:
        return float("nan")
    last_iteration, last_value = points[-1]
    earlier = [value for iteration, value in points if iteration <= (1 - fraction) * last_iteration]
    return last_value - earlier[-1] if earlier else float("nan")


def format_curves_table(
    records,
    phase,
    *,
    task="bbox",
    metric="AP",
    tolerance=CONVERGENCE_TOLERANCE,
    fraction=CONVERGENCE_FRACTION,
):
    """Markdown: ``phase``'s learning curve per seed (``metric`` at each evaluated iteration), from the records'
    ``curves`` (a seed's curve is the same in every record that holds it: the first is taken), with the gain over
    the last ``fraction`` and whether it is under ``tolerance``. Empty when no record holds the curve."""
    curves = seed_curves(records, phase)
    if not curves:
        return ""
    iterations = sorted({p["iteration"] for curve in curves.values() for p in curve})
    header = f"| {phase} {task} {metric}: seed | " + " | ".join(str(i) for i in iterations)
    header += f" | gain over the last {fraction:.0%} | converged (gain < {tolerance:g}) |"
    lines = [header, "|---|" + "---:|" * (len(iterations) + 2)]
    for seed, curve in sorted(curves.items()):
        by_iteration = {p["iteration"]: p.get(task, {}).get(metric, float("nan")) for p in curve}
        cells = [f"{by_iteration[i]:.2f}" if i in by_iteration else "" for i in iterations]
        gain = curve_gain(curve, fraction=fraction, task=task, metric=metric)
        verdict = "?" if math.isnan(gain) else ("yes" if gain < tolerance else "no")
        lines.append(f"| {seed} | " + " | ".join(cells) + f" | {gain:+.2f} | {verdict} |")
    return "\n".join(lines)


def plot_learning_curves(records, phase, out, *, task="bbox", metrics=("AP", "APr", "APf")):
    """``phase``'s learning curves (``metrics`` against iterations, one line per seed and metric) from the records'
    ``curves``; written to ``out`` (PNG, Agg). Returns ``out``, or None when no record holds the curve."""
    curves = seed_curves(records, phase)
    if not curves:
        return None
    fig = agg_figure(7, 4.5)
    ax = fig.subplots()
    for index, metric in enumerate(metrics):
        for seed, curve in sorted(curves.items()):
            points = [(p["iteration"], p[task][metric]) for p in curve if metric in p.get(task, {})]
            if points:
                x, y = zip(*points)
                ax.plot(x, y, marker="o", color=f"C{index}", alpha=0.7, label=metric if seed == min(curves) else None)
    ax.set_xlabel("iterations")
    ax.set_ylabel(f"{task} AP (%)")
    ax.set_title(f"{phase}: learning curve, seeds {', '.join(str(s) for s in sorted(curves))}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out
