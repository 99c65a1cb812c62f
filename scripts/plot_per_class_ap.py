#!/usr/bin/env python
"""
Plot per-class AP (and optionally per-class mean score) against training image count.

Example:
    python scripts/plot_per_class_ap.py output/inference/per_class_ap_bbox.json \\
        --mean-scores output/mean_score.pt --out per_class_ap.png
"""

import argparse
import logging

from ltdet2.evaluation.plots import plot_per_class_ap


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("per_class_ap", help="per_class_ap_<task>.json written by LTLVISEvaluator")
    parser.add_argument(
        "--mean-scores",
        default=None,
        help="json {category name or id: score}, or .npy/.pt vector in contiguous class order",
    )
    parser.add_argument("--out", required=True, help="output PNG path")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    out = plot_per_class_ap(args.per_class_ap, args.out, mean_scores=args.mean_scores, title=args.title)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
