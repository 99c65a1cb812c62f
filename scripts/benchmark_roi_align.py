#!/usr/bin/env python
"""CPU RoIAlign forward + backward: torchvision's kernels against ltdet2.layers.FastCPUROIAlign (its separable
backward), inside Detectron2's ROIPooler, at the shapes of the small CPU models (projects/baseline.py).

    nice -n 5 python scripts/benchmark_roi_align.py --output output/benchmarks/roi_align.json
    # Detectron2's default heads instead (256 channels, 512 RoIs per image)
    python scripts/benchmark_roi_align.py --channels 256 --rois-per-image 512 --cases box

Cases: ``box``, the box pooler (7x7, ``--rois-per-image`` RoIs per image) and ``mask``, the mask pooler (14x14,
``--mask-rois-per-image``: the foreground share, 25 % of 128); both ROIAlignV2 (aligned), sampling ratio 0 (adaptive),
FPN levels p2-p5 (strides 4-32) of ``--batch`` images of ``--image-size`` pixels, ``--channels`` channels. The RoIs are
random boxes of sqrt(area) log-uniform in [8, image size] px, aspect ratio in [1/2, 2], clipped to the image; the
pooler assigns them to levels as in training (most land on p2 at 128 px). Each repetition times the pooler's
forward and its backward (a fixed random output gradient) for both implementations, in alternating order, so machine
noise hits both alike; the medians over ``--repeats`` repetitions (after ``--warmup``) and their ratio are printed,
and with ``--output FILE`` written as JSON with every time, the settings, machine, commit and load average. The
gradients of both are compared once (max abs difference).

On a loaded machine (more runnable processes than cores), GNU OpenMP's default spin-waiting of idle worker threads
slows every multi-threaded torch op several-fold (and the one-thread torchvision kernel, whose core the spinning
worker shares): compare with ``--threads 1``, or run with ``OMP_WAIT_POLICY=PASSIVE`` in the environment (it must be
set before torch starts; the JSON records it).
"""

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

import torch
import torchvision

from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

from ltdet2.layers import FastCPUROIAlign
from ltdet2.utils.json_io import write_json_atomic

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)  # p2-p5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=("box", "mask"), default=["box", "mask"])
    parser.add_argument("--batch", type=int, default=8, help="images per batch (default 8, the small configs')")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=128, help="FPN channels (128 in the small CPU models)")
    parser.add_argument("--rois-per-image", type=int, default=128, help="box pooler (batch_size_per_image)")
    parser.add_argument("--mask-rois-per-image", type=int, default=32, help="mask pooler (foreground RoIs)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--separable-forward", action="store_true", help="also time FastCPUROIAlign(separable_forward=True)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON file for the times, ratios, settings and machine")
    return parser.parse_args(argv)


def random_boxes(generator, count, image_size):
    """``count`` boxes, sqrt(area) log-uniform in [8, image_size], aspect ratio in [1/2, 2], clipped to the image."""
    log_low, log_high = torch.log(torch.tensor([8.0, float(image_size)])).tolist()
    size = torch.exp(torch.rand(count, generator=generator) * (log_high - log_low) + log_low)
    aspect = torch.exp((torch.rand(count, generator=generator) * 2 - 1) * torch.log(torch.tensor(2.0)))
    width, height = size * aspect.sqrt(), size / aspect.sqrt()
    center = torch.rand(count, 2, generator=generator) * image_size
    boxes = torch.stack(
        [center[:, 0] - width / 2, center[:, 1] - height / 2, center[:, 0] + width / 2, center[:, 1] + height / 2],
        dim=1,
    )
    return Boxes(boxes.clamp(min=0, max=image_size))


def build_poolers(output_size, separable_forward):
    stock = ROIPooler(output_size, SCALES, sampling_ratio=0, pooler_type="ROIAlignV2")
    poolers = {"torchvision": stock}
    variants = [("separable", False)] + ([("separable+fwd", True)] if separable_forward else [])
    for name, separable in variants:
        pooler = ROIPooler(output_size, SCALES, sampling_ratio=0, pooler_type="ROIAlignV2")
        pooler.level_poolers = torch.nn.ModuleList(
            FastCPUROIAlign.from_roi_align(level, separable_forward=separable) for level in pooler.level_poolers
        )
        poolers[name] = pooler
    return poolers


def run_once(pooler, features, box_lists, grad):
    """(forward s, backward s, input gradients) of one pooler call."""
    inputs = [f.detach().requires_grad_(True) for f in features]
    start = time.perf_counter()
    out = pooler(inputs, box_lists)
    middle = time.perf_counter()
    out.backward(grad)
    end = time.perf_counter()
    return middle - start, end - middle, [x.grad for x in inputs]


def bench_case(name, args, generator):
    output_size = 7 if name == "box" else 14
    per_image = args.rois_per_image if name == "box" else args.mask_rois_per_image
    features = [
        torch.randn(args.batch, args.channels, int(args.image_size * s), int(args.image_size * s), generator=generator)
        for s in SCALES
    ]
    box_lists = [random_boxes(generator, per_image, args.image_size) for _ in range(args.batch)]
    poolers = build_poolers(output_size, args.separable_forward)
    levels = torch.bincount(
        torch.cat([torch.floor(4 + torch.log2(b.area().sqrt() / 224 + 1e-8)).clamp(2, 5) for b in box_lists]).long(),
        minlength=6,
    )[2:].tolist()
    grad = torch.randn(args.batch * per_image, args.channels, output_size, output_size, generator=generator)
    names = list(poolers)
    times = {n: {"forward_ms": [], "backward_ms": []} for n in names}
    grads = {}
    for rep in range(args.warmup + args.repeats):
        order = names if rep % 2 == 0 else names[::-1]
        for n in order:
            forward, backward, input_grads = run_once(poolers[n], features, box_lists, grad)
            grads.setdefault(n, input_grads)
            if rep >= args.warmup:
                times[n]["forward_ms"].append(1e3 * forward)
                times[n]["backward_ms"].append(1e3 * backward)
    result = {
        "output_size": output_size,
        "rois": args.batch * per_image,
        "rois_per_level_p2_p5": levels,
        "implementations": {},
    }
    for n in names:
        total = [f + b for f, b in zip(times[n]["forward_ms"], times[n]["backward_ms"], strict=True)]
        result["implementations"][n] = {
            **times[n],
            "median_forward_ms": statistics.median(times[n]["forward_ms"]),
            "median_backward_ms": statistics.median(times[n]["backward_ms"]),
            "median_total_ms": statistics.median(total),
            "min_total_ms": min(total),
            "max_abs_grad_diff_vs_torchvision": max(
                (a - b).abs().max().item() for a, b in zip(grads[n], grads["torchvision"], strict=True)
            ),
        }
    base = result["implementations"]["torchvision"]
    for n in names[1:]:
        impl = result["implementations"][n]
        impl["speedup_total"] = base["median_total_ms"] / impl["median_total_ms"]
        impl["speedup_backward"] = base["median_backward_ms"] / impl["median_backward_ms"]
        impl["speedup_forward"] = base["median_forward_ms"] / impl["median_forward_ms"]
    return result


def git_commit():
    """Full hash of HEAD, with ``+dirty`` when tracked files changed; None outside a checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "diff", "--quiet", "HEAD"], capture_output=True).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return names[0] if names else platform.processor()
    except OSError:
        return platform.processor()


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    load_before = list(os.getloadavg())
    machine = {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_threads": torch.get_num_threads(),
        "env": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
    }
    env = "".join(f" {k}={v}" for k, v in machine["env"].items())
    print(
        f"machine: {machine['cpu']}, {machine['cpu_count']} CPUs, torch {torch.__version__}, "
        f"{machine['torch_threads']} threads{env}; "
        f"load average {' '.join(f'{x:.2f}' for x in load_before)}"
    )
    print(
        f"{args.batch} images of {args.image_size} px, {args.channels} channels, p2-p5, ROIAlignV2, sampling ratio 0; "
        f"{args.repeats} repetitions after {args.warmup} warm-up"
    )
    results = {}
    with torch.autograd.set_grad_enabled(True):
        for case in args.cases:
            results[case] = result = bench_case(case, args, generator)
            print(
                f"\n{case} pooler: {result['output_size']}x{result['output_size']}, {result['rois']} RoIs "
                f"(p2-p5: {result['rois_per_level_p2_p5']})"
            )
            print(f"  {'':<14} {'forward ms':>11} {'backward ms':>12} {'total ms':>9}  speedup (total, backward)")
            for name, impl in result["implementations"].items():
                speedup = (
                    f"  {impl['speedup_total']:.2f}x, {impl['speedup_backward']:.2f}x"
                    f"  (max |grad diff| {impl['max_abs_grad_diff_vs_torchvision']:.1e})"
                    if "speedup_total" in impl
                    else ""
                )
                print(
                    f"  {name:<14} {impl['median_forward_ms']:>11.1f} {impl['median_backward_ms']:>12.1f} "
                    f"{impl['median_total_ms']:>9.1f}{speedup}"
                )
    load_after = list(os.getloadavg())
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in load_after)} (medians; a loaded machine is noisy)")
    if args.output:
        record = {
            "command": shlex.join([sys.executable, *sys.argv]),
            "commit": git_commit(),
            "machine": machine,
            "load_avg_before": load_before,
            "load_avg_after": load_after,
            "settings": {k: v for k, v in vars(args).items() if k != "output"},
            "results": results,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        write_json_atomic(args.output, record, indent=1)
        print(f"written to {args.output}")


if __name__ == "__main__":
    main()
