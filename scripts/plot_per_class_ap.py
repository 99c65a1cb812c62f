#!/usr/bin/env python
"""
Plot per-class AP (and optionally per-class mean score) against training image count.

Examples:
    python scripts/plot_per_class_ap.py output/inference/per_class_ap_bbox.json \\
        --mean-scores output/mean_score.pt --out per_class_ap.png
    # from committed results files (scripts/ablation_table.py --results-dir): a phase's per-class AP,
    # averaged over the seeds
    python scripts/plot_per_class_ap.py docs/results/bacl_ablation --phase fcbl_fhm --out bacl.png
"""

import argparse
import logging
import os

from ltdet2.engine.results import load_results_files, mean_per_class_ap
from ltdet2.evaluation.plots import plot_per_class_ap


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "per_class_ap", help="per_class_ap_<task>.json written by LTLVISEvaluator, or a folder of results files"
    )
    parser.add_argument("--phase", default=None, help="with a results folder: the phase to plot")
    parser.add_argument("--task", default="bbox")
    parser.add_argument(
        "--mean-scores",
        default=None,
        help="json {category name or id: score}, or .npy/.pt vector in contiguous class order",
    )
    parser.add_argument("--out", required=True, help="output PNG path")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    per_class_ap, title = args.per_class_ap, args.title
    if os.path.isdir(per_class_ap):
        if not args.phase:
            parser.error("a results folder needs --phase")
        records = load_results_files(per_class_ap)
        per_class_ap = mean_per_class_ap(records, args.phase, args.task)
        seeds = ", ".join(str(r["seed"]) for r in records)
        title = title or f"{args.phase}: per-class {args.task} AP, mean of seeds {seeds}"
    out = plot_per_class_ap(per_class_ap, args.out, mean_scores=args.mean_scores, title=title)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
