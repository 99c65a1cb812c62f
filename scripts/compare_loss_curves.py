#!/usr/bin/env python
"""Where two trainings of the same phase part: their loss terms iteration by iteration, from the ``metrics.json``
Detectron2 writes in each phase folder (run both with ``train.log_period=1`` to compare every iteration).

    python scripts/compare_loss_curves.py --runs v1=/tmp/repro/v1/pretrain head=/tmp/repro/head/pretrain \
        --reference v1 --output docs/results/reproducibility/leaderboard_pretrain_poolers.json

For each run against the reference, over the iterations both logged: the first iteration where any loss term
differs (None: every logged term equal, bit for bit) with both values there, and the largest relative difference
of ``total_loss``. Losses are Detectron2's logged values (each term the median over its smoothing window, the same
window in both runs), so equal logs mean equal losses at every logged iteration.
"""

import argparse
import json
import os

from ltdet2.engine.results import machine_description


def loss_curve(folder):
    """{iteration: {loss term: value}} of the rows of ``<folder>/metrics.json`` that hold ``total_loss``."""
    path = os.path.join(folder, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no metrics.json in the phase folder {folder}")
    curve = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON line ({e})") from None
            if "total_loss" in row:
                curve[int(row["iteration"])] = {
                    k: v for k, v in row.items() if k == "total_loss" or k.startswith("loss")
                }
    if not curve:
        raise ValueError(f"{path}: no row with total_loss (did the phase train?)")
    return curve


def compare(reference, other):
    """The comparison of two loss curves over their common iterations (see the module docstring)."""
    common = sorted(set(reference) & set(other))
    if not common:
        raise ValueError("the two runs logged no iteration in common")
    first = next((i for i in common if reference[i] != other[i]), None)
    relative = [
        abs(other[i]["total_loss"] - reference[i]["total_loss"]) / abs(reference[i]["total_loss"]) for i in common
    ]
    return {
        "iterations": [common[0], common[-1]],
        "first_differing_iteration": first,
        "at_first_difference": None
        if first is None
        else {k: [reference[first].get(k), other[first].get(k)] for k in sorted(reference[first] | other[first])},
        "max_relative_total_loss_difference": max(relative),
        "final_total_loss": [reference[common[-1]]["total_loss"], other[common[-1]]["total_loss"]],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, metavar="NAME=FOLDER", help="phase folders, named")
    parser.add_argument("--reference", required=True, help="the NAME the others are compared with")
    parser.add_argument("--note", default="", help="what the runs are (commits, options), kept in the output")
    parser.add_argument("--output", help="also write the comparison here (JSON)")
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.runs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            parser.error(f"--runs {spec!r}: expected NAME=FOLDER")
        runs[name] = folder
    if args.reference not in runs:
        parser.error(f"--reference {args.reference!r} is not one of the --runs names {list(runs)}")
    curves = {name: loss_curve(folder) for name, folder in runs.items()}
    result = {
        "reference": args.reference,
        "runs": runs,
        "note": args.note,
        "machine": machine_description(),
        "comparisons": {
            name: compare(curves[args.reference], curve) for name, curve in curves.items() if name != args.reference
        },
    }
    for name, comparison in result["comparisons"].items():
        first = comparison["first_differing_iteration"]
        print(
            f"{name} vs {args.reference}, iterations {comparison['iterations'][0]}-{comparison['iterations'][1]}: "
            + ("every logged loss term equal" if first is None else f"first difference at iteration {first}")
            + f"; largest relative total_loss difference {comparison['max_relative_total_loss_difference']:.3g}"
        )
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return result


if __name__ == "__main__":
    main()
