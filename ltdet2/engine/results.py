"""Small results files of finished runs, and the mean ± std tables built from them alone.

A results file holds one seed of one project: its metrics and per-class AP per phase, the command
and commit that produced it, and the machine it ran on. Files are committed (under ``docs/``), so a
table can be rebuilt, and a series of seeds continued, on another machine.

Format (JSON)::

    {"project": "projects/loce_ablation.py", "seed": 0, "commit": "4ea4fee", "command": "...",
     "machine": "2 x86-64 cores (AMD EPYC), no GPU",
     "phases": {"<phase>": {"bbox": {"AP": ..., "APr": ...}, "per_class_ap_bbox": [...]}, ...}}
"""

import glob
import os
import platform
import subprocess

import numpy as np

from ltdet2.utils.json_io import read_json, write_json_atomic

from .phases import SUMMARY_METRICS

__all__ = [
    "machine_description",
    "git_commit",
    "phase_record",
    "results_record",
    "write_results_file",
    "load_results_files",
    "format_mean_std_table",
    "mean_per_class_ap",
]


def machine_description() -> str:
    """e.g. ``"2 x86_64 cores (AMD EPYC 7B13), no GPU"``: what the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        import torch

        gpu = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"
    except Exception:  # noqa: BLE001 - the description must not fail a finished run
        gpu = "GPU unknown"
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


def format_paired_differences(
    records: list[dict], pairs: list[tuple[str, str]], task: str = "bbox", metrics=("AP", "APr", "APc", "APf")
) -> str:
    """Markdown table of paired differences ``method - reference`` per seed (same seed: same shared phases,
    e.g. the same pretrain), mean ± sample std over seeds with the per-seed values, for each (method,
    reference) pair of phases. "beyond spread (paired / seeds)" answers the house standard (a gap within the
    seed spread is no result) two ways, each "yes" only when every seed agrees on the sign: paired, the
    mean difference is larger than the sample std of the per-seed differences; seeds, it is larger than
    the seed spread (sample std over seeds) of both phases' own values, the stricter reading. A pair is
    computed over the seeds that ran both phases (labelled when not all did; no result with fewer than 2)."""
    if len(records) < 2:
        raise ValueError("paired differences need the results of at least 2 seeds")
    seeds = [r["seed"] for r in records]
    lines = [
        f"| {task}: method − reference (paired by seed; seeds {', '.join(map(str, seeds))}) | "
        + " | ".join(f"{m} (per seed)" for m in metrics)
        + " | beyond spread (paired / seeds) |",
        "|---|" + "---|" * len(metrics) + "---|",
    ]
    for method, reference in pairs:
        for phase in (method, reference):
            if not any(phase in r["phases"] for r in records):
                raise ValueError(f"phase {phase!r} is not in the results of seed(s) {seeds}")
        holding = [r for r in records if method in r["phases"] and reference in r["phases"]]
        label = _seeds_label(f"{method} − {reference}", holding, records)
        if len(holding) < 2:
            held = ", ".join(str(r["seed"]) for r in holding) or "none"
            lines.append(
                f"| {label} | " + " | ".join("—" for _ in metrics) + f" | no result: seeds with both: {held} |"
            )
            continue
        cells, verdicts = [], []
        for metric in metrics:
            a = np.array([r["phases"][method][task][metric] for r in holding], dtype=np.float64)
            b = np.array([r["phases"][reference][task][metric] for r in holding], dtype=np.float64)
            diff = a - b
            agree = bool(np.all(diff > 0) or np.all(diff < 0))
            paired = agree and abs(diff.mean()) > np.std(diff, ddof=1)
            seeds_apart = agree and abs(diff.mean()) > max(np.std(a, ddof=1), np.std(b, ddof=1))
            verdicts.append(f"{metric} {'yes' if paired else 'no'}/{'yes' if seeds_apart else 'no'}")
            per_seed = ", ".join(f"{d:+.2f}" for d in diff)
            cells.append(f"{diff.mean():+.2f} ± {np.std(diff, ddof=1):.2f} ({per_seed})")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {', '.join(verdicts)} |")
    return "\n".join(lines)


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
