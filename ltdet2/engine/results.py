"""Small results files of finished runs, and the mean ± std tables built from them alone; the table of a run's phases
that the runner logs (:func:`format_phase_table`).

A results file holds one seed of one project: its metrics and per-class AP per phase, the command
and commit that produced it, and the machine it ran on. Files are committed (under ``docs/``), so a
table can be rebuilt, and a series of seeds continued, on another machine.

Format (JSON)::

    {"project": "projects/loce_ablation.py", "seed": 0, "commit": "4ea4fee", "command": "...",
     "machine": "2 x86-64 cores (AMD EPYC), no GPU",
     "phases": {"<phase>": {"bbox": {"AP": ..., "APr": ...}, "per_class_ap_bbox": [...]}, ...}}
"""

import glob
import logging
import os
import platform
import subprocess

import numpy as np
from scipy.stats import t as student_t
from tabulate import tabulate

from ltdet2.utils.json_io import read_json, write_json_atomic

logger = logging.getLogger("detectron2")

SUMMARY_METRICS = ("AP", "AP50", "APr", "APc", "APf")

__all__ = [
    "SUMMARY_METRICS",
    "format_phase_table",
    "log_phase_table",
    "machine_description",
    "git_commit",
    "phase_record",
    "results_record",
    "write_results_file",
    "load_results_files",
    "format_mean_std_table",
    "format_paired_differences",
    "paired_comparisons",
    "PAIRED_METRICS",
    "paired_t_test",
    "t_interval",
    "t_quantile",
    "holm",
    "mean_per_class_ap",
]


def format_phase_table(rows):
    """One row per (phase, task) with AP, AP50, APr, APc, APf (percent)."""
    table = []
    for name, results in rows:
        for task, metrics in (results or {}).items():
            table.append([name, task] + [metrics.get(key, float("nan")) for key in SUMMARY_METRICS])
    return tabulate(table, headers=["phase", "task", *SUMMARY_METRICS], floatfmt=".2f", tablefmt="pipe")


def log_phase_table(rows, title=None):
    text = format_phase_table(rows)
    logger.info(("Results of " + title + ":\n" if title else "Results:\n") + text)


def machine_description() -> str:
    """e.g. ``"2 x86_64 cores (AMD EPYC 7B13, AVX2), no GPU"``: what the figures were measured on, with the vector
    instructions PyTorch's CPU kernels use (:func:`ltdet2.utils.cpu.cpu_capability`: bf16 speed depends on them)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        import torch  # a heavy import, for the GPU name alone

        gpu = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"
    except Exception:  # noqa: BLE001 - the description must not fail a finished run
        gpu = "GPU unknown"
    try:
        from ltdet2.utils.cpu import cpu_capability

        cpu += f", {cpu_capability()}"
    except Exception:  # noqa: BLE001 - likewise
        pass
    return f"{os.cpu_count()} {platform.machine()} cores ({cpu}), {gpu}"


def git_commit(path: str = ".") -> str | None:
    """Short hash of the checkout's HEAD (with ``+dirty`` when tracked files changed), or None."""
    try:
        commit = subprocess.run(
            ["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", path, "diff", "--quiet", "HEAD"], capture_output=True).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def phase_record(done_file: str, task: str | None = None) -> dict:
    """Metrics of a finished phase (its ``phase_done.json``) and its per-class AP (the evaluator's
    ``inference/per_class_ap_<task>.json`` beside it; omitted when the evaluator wrote none), for ``task``
    (``"bbox"``, ``"segm"``) or, with None, every task the phase was evaluated on."""
    done = read_json(done_file, what="phase-done")
    results = done.get("results", {})
    if task is not None and task not in results:
        raise ValueError(f"{done_file} holds no {task!r} results (it has {sorted(results)})")
    record = {}
    for name in [task] if task is not None else sorted(results):
        record[name] = results[name]
        per_class = os.path.join(os.path.dirname(done_file), "inference", f"per_class_ap_{name}.json")
        if os.path.isfile(per_class):
            record[f"per_class_ap_{name}"] = read_json(per_class, what="per-class AP")
    return record


def results_record(*, project: str, seed: int, command: str, phases: dict[str, dict], machine=None, commit=None):
    return {
        "project": project,
        "seed": int(seed),
        "commit": commit if commit is not None else git_commit(),
        "command": command,
        "machine": machine if machine is not None else machine_description(),
        "phases": phases,
    }


def write_results_file(path: str, record: dict) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json_atomic(path, record, indent=1)
    return path


def load_results_files(directory: str) -> list[dict]:
    """Every ``*.json`` results file in ``directory``, sorted by seed; an error names a file that is
    not a results file."""
    records = []
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        record = read_json(path, what="results")
        missing = [key for key in ("seed", "phases") if key not in record]
        if missing:
            raise ValueError(f"{path} is not a results file: no {missing}")
        records.append(record)
    if not records:
        raise FileNotFoundError(f"no results files (*.json) in {directory}")
    return sorted(records, key=lambda r: r["seed"])


def _phase_order(records: list[dict]) -> list[str]:
    """Every phase of the records, in the first record's order, then those only later records hold."""
    phases = {}
    for record in records:
        phases.update(dict.fromkeys(record["phases"]))
    return list(phases)


def _seeds_label(phase: str, holding: list[dict], records: list[dict]) -> str:
    if len(holding) == len(records):
        return phase
    return f"{phase} (seed{'s' if len(holding) > 1 else ''} {', '.join(str(r['seed']) for r in holding)} only)"


def mean_std_cell(values) -> str:
    """A table cell for the seeds' values of one metric: "mean ± std" (sample std, n-1) over the finite ones,
    the mean alone when one seed has it (a seed may lack a metric, e.g. a timing), "–" when none does (no
    class of the phase has the metric's frequency or bucket)."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return "–"
    if finite.size == 1:
        return f"{finite[0]:.2f}"
    return f"{finite.mean():.2f} ± {finite.std(ddof=1):.2f}"


def format_mean_std_table(
    records: list[dict], task: str = "bbox", metrics=SUMMARY_METRICS, row_label: str = "phase"
) -> str:
    """Markdown table: per phase (in the first record's order), mean ± std over the records that hold it
    (sample standard deviation, n-1; blank with one record) of each metric, and APr per seed. A phase that
    only some seeds ran (e.g. the ablation arms of a partly run project) is labelled with those seeds.
    ``row_label`` names the rows in the header (a leaderboard's are entries)."""
    seeds = [r["seed"] for r in records]
    header = f"| {row_label} ({task}; mean ± std over seeds {', '.join(map(str, seeds))}) | "
    lines = [header + " | ".join(metrics) + " | APr per seed |", "|---|" + "---:|" * (len(metrics) + 1)]
    for phase in _phase_order(records):
        holding = [r for r in records if phase in r["phases"]]
        values = np.array([[r["phases"][phase][task][m] for m in metrics] for r in holding], dtype=np.float64)
        cells = [mean_std_cell(values[:, column]) for column in range(len(metrics))]
        apr = values[:, list(metrics).index("APr")] if "APr" in metrics else np.array([np.nan])
        per_seed = "" if np.isnan(apr).all() else ", ".join(f"{v:.2f}" for v in apr)
        lines.append(f"| {_seeds_label(phase, holding, records)} | " + " | ".join(cells) + f" | {per_seed} |")
    return "\n".join(lines)


PAIRED_ALPHA = 0.05  # the family-wise error rate of one table's paired comparisons
PAIRED_METRICS = ("AP", "APr", "APc", "APf")  # the metrics of a paired table: its Holm family is pairs x these


def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t with ``df`` degrees of freedom (scipy), e.g.
    ``t_quantile(0.975, 2) = 4.302653``."""
    return float(student_t.ppf(probability, df))


def paired_t_test(differences) -> dict:
    """Paired t-test of per-seed differences (NaN ones, a seed without the metric, left out): ``n``, ``mean``,
    ``std`` (sample, n-1), ``p`` (two-sided, H0: mean 0, n-1 degrees of freedom) and ``ci95`` (the 95% interval
    of the mean); with n < 2 only ``n`` and ``mean`` (no interval). All differences equal: std 0, p 0 (1 when
    they are all 0) and a zero-width interval."""
    diff = np.asarray(differences, dtype=np.float64)
    diff = diff[~np.isnan(diff)]
    n = int(diff.size)
    test = {"n": n, "mean": float(diff.mean()) if n else float("nan"), "differences": diff.tolist()}
    if n < 2:
        return test
    std = float(np.std(diff, ddof=1))
    se = std / np.sqrt(n)
    if se == 0:
        p = 0.0 if test["mean"] != 0 else 1.0
    else:
        p = float(2 * student_t.sf(abs(test["mean"]) / se, n - 1))
    test.update(std=std, se=float(se), p=p)
    test["ci95"] = t_interval(test, PAIRED_ALPHA)
    return test


def t_interval(test: dict, alpha: float) -> tuple[float, float]:
    """The two-sided ``1 - alpha`` interval of a :func:`paired_t_test`'s mean: mean ± t_{1-alpha/2, n-1} · std/√n."""
    half = t_quantile(1 - alpha / 2, test["n"] - 1) * test["se"] if test["se"] > 0 else 0.0
    return test["mean"] - half, test["mean"] + half


def holm(p_values, alpha: float = PAIRED_ALPHA) -> list[dict]:
    """Holm's step-down over m comparisons: sorted by p (ties in the given order), the k-th smallest (k = 1..m)
    is tested at ``alpha / (m - k + 1)``; rejection stops at the first p at or above its level, and that
    comparison and every later one are not rejected. Per comparison, in the given order: ``rank`` (k),
    ``alpha`` (its level), ``rejected`` and ``after_stop`` (ranked after the one where Holm stopped)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (p_values[i], i))
    decisions, stopped_at = [None] * m, None
    for k, index in enumerate(order, start=1):
        level = alpha / (m - k + 1)
        if stopped_at is None and not p_values[index] < level:
            stopped_at = k
        rejected = stopped_at is None
        after_stop = stopped_at is not None and k > stopped_at
        decisions[index] = {"rank": k, "alpha": level, "rejected": rejected, "after_stop": after_stop}
    return decisions


def _interval(interval) -> str:
    return f"[{interval[0]:+.2f}, {interval[1]:+.2f}]"


def paired_comparisons(records: list[dict], pairs: list[tuple[str, str]], task: str = "bbox", metrics=("AP",)):
    """The paired differences ``method - reference`` per seed of each pair and metric, and Holm's step-down over
    them (one family): ``(rows, tested, decisions)``. ``rows``: per pair, ``(label, records holding both phases,
    tests)``, a :func:`paired_t_test` per metric, with ``"holm"`` (:func:`holm`'s decision and ``interval``, the
    interval at its rank's level) where it has an interval; ``tested``: the (row, column) of those, in Holm's input
    order; ``decisions``: Holm's, in that order. What :func:`format_paired_differences` tabulates."""
    if len(records) < 2:
        raise ValueError("paired differences need the results of at least 2 seeds")
    seeds = [r["seed"] for r in records]
    rows = []
    for method, reference in pairs:
        for phase in (method, reference):
            if not any(phase in r["phases"] for r in records):
                raise ValueError(f"phase {phase!r} is not in the results of seed(s) {seeds}")
        holding = [r for r in records if method in r["phases"] and reference in r["phases"]]
        label = _seeds_label(f"{method} − {reference}", holding, records)
        tests = []
        for metric in metrics:
            a = np.array([r["phases"][method][task][metric] for r in holding], dtype=np.float64)
            b = np.array([r["phases"][reference][task][metric] for r in holding], dtype=np.float64)
            tests.append(paired_t_test(a - b))
        rows.append((label, holding, tests))
    tested = [
        (row, column) for row, (_, _, tests) in enumerate(rows) for column, test in enumerate(tests) if "p" in test
    ]
    decisions = holm([rows[row][2][column]["p"] for row, column in tested])
    for (row, column), decision in zip(tested, decisions):
        test = rows[row][2][column]
        test["holm"] = dict(decision, interval=t_interval(test, decision["alpha"]))
    return rows, tested, decisions


def format_paired_differences(
    records: list[dict], pairs: list[tuple[str, str]], task: str = "bbox", metrics=PAIRED_METRICS
) -> str:
    """Markdown table of paired differences ``method - reference`` per seed (same seed: same shared phases,
    e.g. the same pretrain), for each (method, reference) pair of phases and metric, over the n seeds that ran
    both phases (labelled when not all did), and a note on Holm's correction below it. Each cell: mean ± sample
    std of the per-seed differences (the per-seed values), the paired t-test's p (two-sided, n-1 degrees of
    freedom), its 95% interval of the mean, the Holm-corrected interval and whether the gap is a result.

    The rule (the house standard): a gap is a result only when its Holm-corrected interval excludes 0. Holm's
    step-down runs over the table's comparisons (every (pair, metric) cell with an interval): sorted by p, the
    k-th of m gets the interval at 1 - 0.05/(m-k+1); at the first whose p is at or above 0.05/(m-k+1) Holm stops,
    and it and every comparison after it are no result (their intervals at their rank's level; one after the
    stop whose interval excludes 0 says so). With fewer than 2 seeds a cell has no interval and is no result."""
    seeds = [r["seed"] for r in records]
    rows, tested, decisions = paired_comparisons(records, pairs, task, metrics)
    lines = [
        f"| {task}: method − reference (paired by seed; seeds {', '.join(map(str, seeds))}) | "
        + " | ".join(f"{m} (per seed)" for m in metrics)
        + " | result (Holm-corrected CI excludes 0) |",
        "|---|" + "---|" * len(metrics) + "---|",
    ]
    for label, holding, tests in rows:
        cells = []
        for test in tests:
            per_seed = ", ".join(f"{d:+.2f}" for d in test["differences"])
            if "p" not in test:
                cells.append((f"{test['mean']:+.2f} ({per_seed}); " if test["n"] else "") + "n<2, no interval")
                continue
            holm_test = test["holm"]
            verdict = "**result**" if holm_test["rejected"] else "no result"
            low, high = holm_test["interval"]
            if holm_test["after_stop"] and not low <= 0 <= high:  # its own level would reject: Holm stopped before
                verdict += " (Holm stopped)"
            cells.append(
                f"{test['mean']:+.2f} ± {test['std']:.2f} ({per_seed}); p={test['p']:.2g}; 95% CI "
                f"{_interval(test['ci95'])}; Holm {100 * (1 - holm_test['alpha']):.2f}% CI "
                f"{_interval(holm_test['interval'])}: {verdict}"
            )
        results = [m for m, test in zip(metrics, tests) if test.get("holm", {}).get("rejected")]
        if len(holding) < 2:
            summary = f"no result: seeds with both: {', '.join(str(r['seed']) for r in holding) or 'none'}"
        else:
            summary = ", ".join(results) or "none"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {summary} |")
    lines += ["", _holm_note(rows, tested, decisions, metrics)]
    return "\n".join(lines)


def _holm_note(rows, tested, decisions, metrics) -> str:
    """The sentence below a paired table: the test, the family, how many results, and where Holm stopped."""
    m = len(tested)
    note = (
        "Paired t-test over the seeds that ran both phases (n − 1 degrees of freedom); 95% CI uncorrected; Holm over "
        f"this table's m = {m} comparison{'s' if m != 1 else ''} (each (pair, metric) cell with an interval; "
        f"family-wise α = {PAIRED_ALPHA:g}"
    )
    untested = sum(len(tests) for _, _, tests in rows) - len(tested)
    note += f"; {untested} cell{'s' if untested != 1 else ''} with n<2 not counted): " if untested else "): "
    if not tested:
        return note + "none (every cell has n<2), so no result."
    rejected = sum(d["rejected"] for d in decisions)
    stop = next((i for i, d in enumerate(decisions) if not d["rejected"] and not d["after_stop"]), None)
    if stop is None:
        return note + f"{rejected} result{'s' if rejected != 1 else ''}; Holm rejected every comparison."
    row, column = tested[stop]
    label, _, tests = rows[row]
    decision = decisions[stop]
    divisor = len(tested) - decision["rank"] + 1
    return note + (
        f"{rejected} result{'s' if rejected != 1 else ''}; Holm stopped at rank {decision['rank']} "
        f"({label} {metrics[column]}, p={tests[column]['p']:.2g} ≥ {PAIRED_ALPHA:g}/{divisor} = "
        f"{decision['alpha']:.2g}): it and every comparison ranked after it are no result."
    )


def mean_per_class_ap(records: list[dict], phase: str, task: str = "bbox") -> list[dict]:
    """Per-class AP records of ``phase`` (the evaluator's format) with AP the mean over the seeds'
    results files (classes whose AP is undefined in every seed stay None)."""
    key = f"per_class_ap_{task}"
    missing = [r["seed"] for r in records if key not in r["phases"].get(phase, {})]
    if missing:
        raise ValueError(f"phase {phase!r} has no {key} in the results of seed(s) {missing}")
    per_seed = [sorted(r["phases"][phase][key], key=lambda c: c["id"]) for r in records]
    ids = [c["id"] for c in per_seed[0]]
    if any([c["id"] for c in classes] != ids for classes in per_seed[1:]):
        raise ValueError(f"phase {phase!r}: the seeds' per-class AP cover different classes")
    values = np.array([[np.nan if c["AP"] is None else c["AP"] for c in classes] for classes in per_seed])
    defined = np.isfinite(values)
    means = np.where(defined.any(0), np.where(defined, values, 0).sum(0) / np.maximum(defined.sum(0), 1), np.nan)
    return [dict(c, AP=None if np.isnan(m) else float(m)) for c, m in zip(per_seed[0], means)]
