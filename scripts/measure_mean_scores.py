#!/usr/bin/env python
"""Measures a checkpoint's per-class mean classification scores (LOCE's indicator) and plots them
with per-class AP against training image count.

    python scripts/measure_mean_scores.py --config-file projects/loce.py --phase finetune \
        --checkpoint output/loce/pretrain/model_final.pth --out output/loce/mean_scores_before \
        [--per-class-ap output/loce/pretrain/inference/per_class_ap_bbox.json] [--images-per-class 5]

The phase's model (which must have a ``mean_score`` indicator) is loaded from ``--checkpoint`` with
its mean scores reset, and one class-balanced pass over the training set (``--images-per-class``
images per class, no backward; LOCE's official warm-up) measures them. Writes ``<out>.npy`` ([C+1],
background last) and, with ``--per-class-ap``, ``<out>.png``. Measuring the pretrained and the
fine-tuned checkpoint the same way gives the before / after comparison of the README.
"""

import argparse
import os

import numpy as np

from detectron2.checkpoint import DetectionCheckpointer

from ltdet2.engine.phases import load_config
from ltdet2.engine.train_loop import build_model
from ltdet2.evaluation.plots import plot_per_class_ap
from ltdet2.hooks.memory_warmup import warm_up_memories


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--phase", default=None, help="phase whose model to build (default: the config's own)")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True, help="output path without extension")
    parser.add_argument("--per-class-ap", default=None, help="per_class_ap_<task>.json to plot with")
    parser.add_argument("--images-per-class", type=int, default=5)
    parser.add_argument("--title", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    cfg = load_config(args.config_file, args.overrides)
    phase_cfg = cfg.phases[args.phase] if args.phase else cfg
    model = build_model(phase_cfg)
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    DetectionCheckpointer(model).load(args.checkpoint)
    indicators = getattr(model.roi_heads, "indicators", {})
    if "mean_score" not in indicators:
        raise ValueError(f"{args.config_file} (phase {args.phase}) has no 'mean_score' indicator in its ROI heads")
    indicators["mean_score"].reset()
    warm_up_memories(model, phase_cfg, images_per_class=args.images_per_class)
    scores = indicators["mean_score"].vector().cpu().numpy()

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.save(args.out + ".npy", scores)
    print(f"wrote {args.out}.npy: mean score {scores[:-1].mean():.4f} over {len(scores) - 1} classes")
    if args.per_class_ap:
        plot_per_class_ap(args.per_class_ap, args.out + ".png", mean_scores=scores, title=args.title)
        print(f"wrote {args.out}.png")


if __name__ == "__main__":
    main()
