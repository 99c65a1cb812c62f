#!/usr/bin/env python
"""
Time ltdet2.evaluation.evaluate_lvis (faster-coco-eval engine) against the official LVIS API
(lvis.LVISEval) on the same synthetic LVIS-val-sized bbox results.

Default sizes are LVIS v1 val-like: 20k images, 300 detections per image, 1203 classes.
Small run:
    python scripts/benchmark_evaluator.py --num-images 500 --dets-per-image 100 --num-classes 300
Full size, official side limited to 30 minutes:
    nice python scripts/benchmark_evaluator.py --official-timeout 1800
"""
import argparse
import contextlib
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ltdet2.evaluation import LVIS_METRICS, evaluate_lvis  # noqa: E402
from ltdet2.evaluation.synthetic import make_lvis_detections_fast, make_lvis_gt  # noqa: E402


@contextlib.contextmanager
def numpy_float_shim():
    """lvis 0.5.3 uses np.float (removed in numpy 1.24): provide it only inside this block."""
    had = "float" in np.__dict__
    old = np.__dict__.get("float")
    np.float = float
    try:
        yield
    finally:
        if had:
            np.float = old
        else:
            del np.float


def run_official(gt_path, dets, max_dets, queue=None):
    from lvis import LVIS, LVISEval, LVISResults

    t0 = time.perf_counter()
    with numpy_float_shim():
        gt = LVIS(gt_path)
        res = LVISResults(gt, dets, max_dets=max_dets)
        ev = LVISEval(gt, res, "bbox")
        ev.params.max_dets = max_dets
        ev.run()
    dt = time.perf_counter() - t0
    out = (dt, {k: float(ev.results[k]) * 100 for k in LVIS_METRICS})
    if queue is not None:
        queue.put(out)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=20000)
    p.add_argument("--dets-per-image", type=int, default=300)
    p.add_argument("--num-classes", type=int, default=1203)
    p.add_argument("--max-objects", type=int, default=22, help="GT objects per image: uniform 1..N")
    p.add_argument("--max-dets", type=int, default=300, help="LVIS per-image detection limit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-official", action="store_true", help="time only evaluate_lvis")
    p.add_argument(
        "--official-timeout", type=float, default=None,
        help="seconds; run the official API in a forked child and stop it after this long",
    )  # fmt: skip
    args = p.parse_args(argv)

    print(
        f"machine: {platform.platform()}, python {platform.python_version()}, "
        f"{os.cpu_count()} logical CPUs ({len(os.sched_getaffinity(0))} usable), "
        f"processor {platform.processor() or platform.machine()}"
    )
    t0 = time.perf_counter()
    gt = make_lvis_gt(args.num_images, args.num_classes, seed=args.seed, max_objects=args.max_objects)
    dets = make_lvis_detections_fast(gt, seed=args.seed, dets_per_image=args.dets_per_image)
    freq = {g: sum(c["frequency"] == g for c in gt["categories"]) for g in "rcf"}
    print(
        f"data: {len(gt['images'])} images, {len(gt['categories'])} classes (r/c/f {freq['r']}/"
        f"{freq['c']}/{freq['f']}), {len(gt['annotations'])} GT boxes, {len(dets)} detections "
        f"(generated in {time.perf_counter() - t0:.1f}s)"
    )
    tmp = tempfile.mkdtemp(prefix="ltdet2_bench_")
    gt_path = os.path.join(tmp, "gt.json")
    with open(gt_path, "w") as f:
        json.dump(gt, f)
    del gt
    gc.collect()

    # ltdet2 (faster-coco-eval): from the json path, as the official API, for a fair comparison
    t0 = time.perf_counter()
    ours = evaluate_lvis(gt_path, dets, "bbox", max_dets=args.max_dets)
    t_ours = time.perf_counter() - t0
    print(f"ltdet2 evaluate_lvis: {t_ours:.1f}s")
    print("  " + "  ".join(f"{k}={v:.2f}" for k, v in ours.items()))
    gc.collect()

    if args.skip_official:
        print("official lvis API: skipped (--skip-official)")
        return
    if args.official_timeout is None:
        t_off, ref = run_official(gt_path, dets, args.max_dets)
    else:
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        proc = ctx.Process(target=run_official, args=(gt_path, dets, args.max_dets, q))
        t0 = time.perf_counter()
        proc.start()
        try:
            t_off, ref = q.get(timeout=args.official_timeout)
        except Exception:
            t_off, ref = None, None
        proc.join(timeout=5)
        if proc.is_alive():
            proc.terminate()
            proc.join()
        if ref is None:
            waited = time.perf_counter() - t0
            print(f"official lvis API: stopped after {waited:.0f}s (--official-timeout); "
                  f"ratio > {waited / t_ours:.1f}x")  # fmt: skip
            return
    print(f"official lvis API: {t_off:.1f}s")
    print("  " + "  ".join(f"{k}={v:.2f}" for k, v in ref.items()))
    diff = max(
        abs(ours[k] - ref[k]) for k in LVIS_METRICS if not (math.isnan(ours[k]) or ref[k] < 0)
    )
    print(f"max |ltdet2 - official| over metrics: {diff:.4f} AP points")
    print(f"speed-up: {t_off / t_ours:.1f}x (official {t_off:.1f}s / ltdet2 {t_ours:.1f}s)")


if __name__ == "__main__":
    main()
