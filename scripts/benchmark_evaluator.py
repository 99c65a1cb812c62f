#!/usr/bin/env python
"""
Time and measure peak memory of ltdet2.evaluation.evaluate_lvis (direct feed of faster-coco-eval's
C++ engine) against faster-coco-eval's own public LVIS path and the official LVIS API
(lvis.LVISEval), on the same synthetic LVIS-val-sized bbox results.

The parent process generates the data once (ground truth json + an [N, 7] results array,
no per-detection Python objects) and runs each side in a fresh worker process, so that each
side's peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own:

* ours:      evaluate_lvis(gt_json_path, results_array)          (array input, direct feed)
* ours-list: evaluate_lvis(gt_json_path, list of result dicts)   (--ours-list; Detectron2 path)
* public:    evaluate_lvis(gt_json_path, results_array) with the direct feed switched off
             (ltdet2.evaluation.fast_lvis_feed.enabled = False): the same validation, per-image
             limit and federated filtering, then faster-coco-eval's public LVIS path,
             COCO.loadRes + COCOeval_faster(lvis_style=True) (--skip-public to leave out)
* official:  LVIS(gt_json_path), LVISResults(gt, list of dicts), LVISEval(...).run()
* ref:       evaluate_lvis(gt_json_path, results_array) with the direct feed's evaluate_bbox taken
             from another copy of ltdet2/evaluation/fast_lvis_feed.py (--ref-feed FILE), e.g. an
             earlier commit's: an A/B of two versions of the feed on the same data

"feed" is the time inside fast_lvis_feed.evaluate_bbox (ours, ours-list and ref), the rest of
"time" loading the ground truth json and validating the results. With --repeats N every side runs
N times, in alternating order, each time in a fresh process; "time" is then the median, and the
ratios against ours are given for the medians and the minima. Every side but official also
reports a checksum of its per-class AP array (exact equality of every per-class AP).

"input" is the worker's RSS once its input is loaded (the list of dicts for the official side,
the array for ours), "peak" its peak RSS; peak - input is what the evaluation adds.

Default sizes are LVIS v1 val-like: 20k images, 300 detections per image, 1203 classes.
    nice -n 10 python scripts/benchmark_evaluator.py --skip-official --skip-public  # full size, ours
    nice -n 10 python scripts/benchmark_evaluator.py --num-images 5000              # all sides
    git show HEAD~1:ltdet2/evaluation/fast_lvis_feed.py > /tmp/ref_feed.py          # A/B of the feed
    python scripts/benchmark_evaluator.py --num-images 5000 --skip-public --skip-official \
        --ref-feed /tmp/ref_feed.py --repeats 5
    python scripts/benchmark_evaluator.py --num-images 500 --dets-per-image 100 --num-classes 300
"""

import argparse
import contextlib
import hashlib
import importlib.util
import json
import math
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the synthetic LVIS fixture and the lvis API shim

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def _rss_mib():
    """Current resident set size in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _machine():
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    avail = None
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        avail = int(info["MemAvailable"].split()[0]) / 2**20
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    return (
        f"machine: {platform.platform()}, python {platform.python_version()}, {cpu}, "
        f"{os.cpu_count()} logical CPUs ({len(os.sched_getaffinity(0))} usable), "
        f"RAM {mem:.1f} GiB" + (f" ({avail:.1f} GiB available)" if avail is not None else "")
    )


# ------------------------------------------------------------------------------------------
# workers (fresh processes)
# ------------------------------------------------------------------------------------------
def _load_module(path, name="ref_fast_lvis_feed"):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _worker(side, gt_path, dets_path, max_dets, ref_feed=None):
    from fixtures.synthetic_lvis import detections_array_to_dicts

    arr = np.load(dets_path)
    if side in ("ours-list", "official"):
        dets = detections_array_to_dicts(arr)
        del arr
    else:
        dets = arr
    if side == "official":
        import lvis  # noqa: F401  (import cost outside the timing, as for ours)
    else:
        from ltdet2.evaluation import evaluate_lvis, fast_lvis_feed

        fast_lvis_feed.enabled = side != "public"
        if fast_lvis_feed.enabled and not fast_lvis_feed.available():
            raise RuntimeError("the direct feed is not available with this faster-coco-eval version")
        # time inside the feed's evaluate_bbox (evaluate_lvis calls it as fast_lvis_feed.evaluate_bbox)
        evaluate_bbox = _load_module(ref_feed).evaluate_bbox if side == "ref" else fast_lvis_feed.evaluate_bbox
        feed_s = []

        def _timed_evaluate_bbox(*a, **k):
            t = time.perf_counter()
            out = evaluate_bbox(*a, **k)
            feed_s.append(time.perf_counter() - t)
            return out

        fast_lvis_feed.evaluate_bbox = _timed_evaluate_bbox
    rss_in = _rss_mib()
    t0 = time.perf_counter()
    if side == "official":
        from lvis import LVIS, LVISEval, LVISResults

        from fixtures.lvis_api import numpy_float_shim

        with numpy_float_shim():
            gt = LVIS(gt_path)
            res = LVISResults(gt, dets, max_dets=max_dets)
            ev = LVISEval(gt, res, "bbox")
            ev.params.max_dets = max_dets
            ev.run()
        metrics = {k: float(ev.results[k]) * 100 if ev.results[k] >= 0 else float("nan") for k in METRICS}
    else:
        metrics, per_class = evaluate_lvis(gt_path, dets, "bbox", max_dets=max_dets, return_per_class=True)
    dt = time.perf_counter() - t0
    out = {"side": side, "time_s": dt, "rss_input_mib": rss_in, "peak_rss_mib": _maxrss_mib(),
           "metrics": metrics}  # fmt: skip
    if side != "official":
        ap = np.array(list(per_class.values()), dtype=np.float64)
        out["per_class_ap_sha1"] = hashlib.sha1(ap.tobytes()).hexdigest()  # NaN bytes included
        if feed_s:
            out["feed_s"] = sum(feed_s)
    print("@@RESULT@@" + json.dumps(out), flush=True)


def _run_side(side, gt_path, dets_path, max_dets, timeout, ref_feed=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--gt", gt_path,
           "--dets", dets_path, "--max-dets", str(max_dets)]  # fmt: skip
    if side == "ref":
        cmd += ["--ref-feed", ref_feed]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"side": side, "error": f"stopped after {time.perf_counter() - t0:.0f}s (timeout)"}
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@") :])
    tail = (proc.stderr or "").strip().splitlines()[-3:]
    return {"side": side, "error": f"exit code {proc.returncode} (e.g. out of memory: "
                                   f"{-proc.returncode == 9}): {' | '.join(tail)}"}  # fmt: skip


def _report(r):
    if "error" in r:
        print(f"{r['side']:>9}: FAILED, {r['error']}")
        return
    runs = r.get("runs")
    if runs:
        times = ", ".join(f"{t:.2f}" for t in r["times_s"])
        feed = f"; feed median {r['feed_s']:.2f}s, min {r['feed_s_min']:.2f}s" if "feed_s" in r else ""
        median, low = r["time_s"], r["time_s_min"]
        print(f"{r['side']:>9}: {runs} runs, time median {median:.2f}s, min {low:.2f}s ({times}){feed}")
    print(
        f"{r['side']:>9}: {r['time_s']:.1f}s, peak RSS {r['peak_rss_mib'] / 1024:.2f} GiB "
        f"(input loaded: {r['rss_input_mib'] / 1024:.2f} GiB, evaluation adds "
        f"{(r['peak_rss_mib'] - r['rss_input_mib']) / 1024:.2f} GiB)"
    )
    print("           " + "  ".join(f"{k}={v:.2f}" for k, v in r["metrics"].items()))


def _compare(ours, other):
    """Metric difference and time / peak-RSS ratios of another side against ours."""
    if "error" in ours or "error" in other:
        return
    name = other["side"]
    diff = max(
        abs(ours["metrics"][k] - other["metrics"][k]) for k in METRICS
        if not (math.isnan(ours["metrics"][k]) or math.isnan(other["metrics"][k]))
    )  # fmt: skip
    print(f"max |ours - {name}| over metrics: {diff:.4f} AP points")
    if "per_class_ap_sha1" in other:
        same = other["per_class_ap_sha1"] == ours["per_class_ap_sha1"] and other["metrics"] == ours["metrics"]
        print(f"metrics and per-class AP of {name} and ours bit-identical: {same}")
    if "times_s" in other:
        print(
            f"ratio {name} / ours over {len(other['times_s'])} runs each: time median "
            f"{other['time_s'] / ours['time_s']:.2f}x, min {other['time_s_min'] / ours['time_s_min']:.2f}x"
            + (f"; feed median {other['feed_s'] / ours['feed_s']:.2f}x, min "
               f"{other['feed_s_min'] / ours['feed_s_min']:.2f}x" if "feed_s" in other and "feed_s" in ours else "")
        )  # fmt: skip
    print(
        f"ratio {name} / ours: time {other['time_s'] / ours['time_s']:.1f}x "
        f"({other['time_s']:.1f}s / {ours['time_s']:.1f}s), peak RSS "
        f"{other['peak_rss_mib'] / ours['peak_rss_mib']:.1f}x "
        f"({other['peak_rss_mib'] / 1024:.2f} / {ours['peak_rss_mib'] / 1024:.2f} GiB)"
    )


def _summarize_runs(runs):
    """One side's runs -> its first run's record, times replaced by the median over the runs."""
    errors = [r for r in runs if "error" in r]
    if errors:
        return errors[0]
    if len(runs) == 1:
        return runs[0]
    for r in runs[1:]:  # every run must give the same numbers
        for k in ("metrics", "per_class_ap_sha1"):
            if r.get(k) != runs[0].get(k):
                raise RuntimeError(f"side {r['side']}: {k} differs between runs")
    out = dict(runs[0])
    out["runs"] = len(runs)
    out["times_s"] = [r["time_s"] for r in runs]
    out["time_s"], out["time_s_min"] = float(np.median(out["times_s"])), min(out["times_s"])
    out["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    if "feed_s" in out:
        out["feed_times_s"] = [r["feed_s"] for r in runs]
        out["feed_s"], out["feed_s_min"] = float(np.median(out["feed_times_s"])), min(out["feed_times_s"])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=20000)
    p.add_argument("--dets-per-image", type=int, default=300)
    p.add_argument("--num-classes", type=int, default=1203)
    p.add_argument("--max-objects", type=int, default=22, help="GT objects per image: uniform 1..N")
    p.add_argument("--max-dets", type=int, default=300, help="LVIS per-image detection limit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-official", action="store_true", help="leave out the official lvis API")
    p.add_argument("--skip-public", action="store_true", help="leave out faster-coco-eval's public LVIS path")
    p.add_argument("--ours-list", action="store_true",
                   help="also run evaluate_lvis on a list of dicts (the Detectron2 evaluator's input)")  # fmt: skip
    p.add_argument("--official-timeout", type=float, default=None, help="seconds; stop the official side after")
    p.add_argument("--ref-feed", default=None,
                   help="another copy of ltdet2/evaluation/fast_lvis_feed.py: adds the side 'ref' (A/B)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=1, help="runs of every side, in alternating order")
    p.add_argument("--output", default=None, help="JSON file for every side's time, memory and metrics")
    p.add_argument("--worker", choices=("ours", "ours-list", "public", "official", "ref"), help=argparse.SUPPRESS)
    p.add_argument("--gt", help=argparse.SUPPRESS)
    p.add_argument("--dets", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args.worker, args.gt, args.dets, args.max_dets, args.ref_feed)

    from fixtures.synthetic_lvis import make_lvis_detections_fast, make_lvis_gt

    print(_machine())
    t0 = time.perf_counter()
    gt = make_lvis_gt(args.num_images, args.num_classes, seed=args.seed, max_objects=args.max_objects)
    dets = make_lvis_detections_fast(gt, seed=args.seed, dets_per_image=args.dets_per_image, as_array=True)
    freq = {g: sum(c["frequency"] == g for c in gt["categories"]) for g in "rcf"}
    print(
        f"sizes: {len(gt['images'])} images, {len(gt['categories'])} classes (r/c/f {freq['r']}/"
        f"{freq['c']}/{freq['f']}), {len(gt['annotations'])} GT boxes, {len(dets)} detections "
        f"({args.dets_per_image}/image, max_dets {args.max_dets}); generated in "
        f"{time.perf_counter() - t0:.1f}s"
    )
    tmp = tempfile.mkdtemp(prefix="ltdet2_bench_")
    try:
        gt_path, dets_path = os.path.join(tmp, "gt.json"), os.path.join(tmp, "dets.npy")
        with open(gt_path, "w") as f:
            json.dump(gt, f)
        np.save(dets_path, dets)
        del gt, dets

        sides = ["ours"] + (["ours-list"] if args.ours_list else [])
        sides += ["ref"] if args.ref_feed else []
        sides += [] if args.skip_public else ["public"]
        sides += [] if args.skip_official else ["official"]
        ref_feed = os.path.abspath(args.ref_feed) if args.ref_feed else None
        runs = {side: [] for side in sides}
        for rep in range(args.repeats):
            for side in sides if rep % 2 == 0 else sides[::-1]:
                timeout = args.official_timeout if side == "official" else None
                runs[side].append(r := _run_side(side, gt_path, dets_path, args.max_dets, timeout, ref_feed))
                if args.repeats > 1:
                    print(f"run {rep + 1}/{args.repeats} {side}: " + (
                        r["error"] if "error" in r else f"{r['time_s']:.2f}s" + (
                            f" (feed {r['feed_s']:.2f}s)" if "feed_s" in r else "")), flush=True)  # fmt: skip
        results = {side: _summarize_runs(rs) for side, rs in runs.items()}
        for side in sides:
            _report(results[side])
        for side in ("ref", "public", "official"):
            if side in results:
                _compare(results["ours"], results[side])
        if args.output:
            from ltdet2.engine.results import git_commit, machine_description
            from ltdet2.utils.json_io import write_json_atomic

            settings = {k: getattr(args, k) for k in ("num_images", "dets_per_image", "num_classes", "max_objects",
                                                      "repeats")}  # fmt: skip
            record = {
                "sides": results,
                "settings": {**settings, "max_dets": args.max_dets, "seed": args.seed, "load_avg": os.getloadavg()},
                "machine": machine_description(),
                "commit": git_commit(),
                "command": shlex.join(
                    ["scripts/benchmark_evaluator.py", *(argv if argv is not None else sys.argv[1:])]
                ),
            }
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            write_json_atomic(args.output, record, indent=1)
            print(f"written to {args.output}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
