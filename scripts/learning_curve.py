#!/usr/bin/env python
"""A phase's learning curve and the leaderboard's convergence rule (docs/leaderboard/protocol.md): box AP at each
evaluation of the phase's run (its ``metrics.json``; ``train.eval_period``), and whether it gained under
``--tolerance`` AP over the last ``--fraction`` of ``train.max_iter`` (its ``config.yaml``).

    python scripts/learning_curve.py output/leaderboard_v2/seed0/pretrain
    python scripts/learning_curve.py output/leaderboard_v2/seed0/pretrain \\
        --output docs/leaderboard/v2/curves/pretrain_P2400_seed0.json

Prints the curve (box and mask AP, APr, APc, APf per evaluation) and the verdict; ``--output`` writes them as a
results file (curve, gain, verdict, max_iter, eval_period, machine, commit, command). A run that has not reached
``train.max_iter`` gets no verdict ("unfinished"). The leaderboard's results files hold the same curve
(``curves.pretrain``); this writes it alone, for a run whose entries were not trained (a length the rule refused).
"""

import argparse
import math
import os
import shlex
import sys

from ltdet2.engine.leaderboard import (
    CONVERGENCE_FRACTION,
    CONVERGENCE_TOLERANCE,
    curve_gain,
    read_learning_curve,
)
from ltdet2.engine.phase_checks import read_config_yaml
from ltdet2.engine.results import git_commit, machine_description, write_results_file


def curve_record(phase_dir, *, fraction=CONVERGENCE_FRACTION, tolerance=CONVERGENCE_TOLERANCE):
    """The learning curve of the run in ``phase_dir`` and the rule's verdict on it: "converged" / "not converged"
    (box AP gain over the last ``fraction`` of ``train.max_iter`` under ``tolerance``, or not), "unfinished" when
    the curve's last evaluation is not at ``train.max_iter``."""
    config_path, metrics_path = (os.path.join(phase_dir, name) for name in ("config.yaml", "metrics.json"))
    for path in (config_path, metrics_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{phase_dir}: no {os.path.basename(path)} (not a phase's training folder?)")
    train = read_config_yaml(config_path).get("train", {})
    max_iter, eval_period = int(train["max_iter"]), int(train.get("eval_period") or 0)
    curve = read_learning_curve(metrics_path)
    if not curve:
        raise ValueError(f"{metrics_path}: no evaluation recorded (train.eval_period={eval_period})")
    gain = curve_gain(curve, fraction=fraction)
    if curve[-1]["iteration"] != max_iter:  # the gain of a run cut short is not the rule's
        verdict, gain = "unfinished", math.nan
    elif math.isnan(gain):
        verdict = "no evaluation before the last quarter"
    else:
        verdict = "converged" if gain < tolerance else "not converged"
    return {
        "phase_dir": phase_dir,
        "max_iter": max_iter,
        "eval_period": eval_period,
        "rule": f"box AP gain over the last {fraction:g} of max_iter < {tolerance:g}",
        "gain": gain,
        "verdict": verdict,
        "curve": curve,
    }


def format_curve(record):
    lines = ["| iteration | box AP | APr | APc | APf | mask AP | mask APr |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for point in record["curve"]:
        box, mask = point.get("bbox", {}), point.get("segm", {})
        cells = [box.get(m, math.nan) for m in ("AP", "APr", "APc", "APf")] + [
            mask.get(m, math.nan) for m in ("AP", "APr")
        ]
        lines.append(f"| {point['iteration']} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    last = record["curve"][-1]["iteration"]
    if record["verdict"] == "unfinished":
        judged = f"unfinished at iteration {last}: no verdict"
    else:
        judged = f"gain {record['gain']:+.2f}: {record['verdict']}"
    lines.append(
        f"\n{record['rule']}: {judged} (max_iter {record['max_iter']}, evaluated every {record['eval_period']})"
    )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase_dir", help="a phase's training folder (its metrics.json and config.yaml)")
    parser.add_argument("--output", help="write the curve and verdict to this JSON results file")
    parser.add_argument(
        "--fraction", type=float, default=CONVERGENCE_FRACTION, help="the last part of the run judged (%(default)s)"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=CONVERGENCE_TOLERANCE,
        help="box AP gain under which it converged (%(default)s)",
    )
    args = parser.parse_args(argv)
    record = curve_record(args.phase_dir, fraction=args.fraction, tolerance=args.tolerance)
    print(format_curve(record))
    if args.output:
        command = shlex.join(["scripts/learning_curve.py", *(sys.argv[1:] if argv is None else argv)])
        record.update(machine=machine_description(), commit=git_commit(), command=command)
        write_results_file(args.output, record)
        print(f"wrote {args.output}")
    return record


if __name__ == "__main__":
    main()
