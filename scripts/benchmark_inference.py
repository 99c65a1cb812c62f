#!/usr/bin/env python
"""Inference time per image of a method's model against a baseline's, same weights, same images, one run.

    # BACL's test-time scoring against the softmax baseline (goal: at most 1.10x), LVIS-style settings
    python scripts/benchmark_inference.py --baseline-config projects/loce.py --baseline-phase pretrain \\
        --method-config projects/bacl.py --method-phase classifier --num-images 50 --device cuda \\
        --output output/benchmark_inference.json
    # LOCE's fine-tune against its pretrain (the same detector: a ratio near 1)
    python scripts/benchmark_inference.py --baseline-config projects/loce.py --baseline-phase pretrain \\
        --method-config projects/loce.py --method-phase finetune --num-images 20 --device cpu

Both models get the same weights: ``--checkpoint``, else the method phase's final checkpoint if it exists,
else a seeded random initialisation of the baseline copied into the method's model. In every case their
parameters must match one to one (same names and values: an error names the missing or unexpected ones);
buffers only one model has (memories, indicators: training state) are listed and left as built.
Both use ``--score-threshold`` (1e-4) and ``--detections-per-image`` (300), LVIS-style, on every module with
Detectron2's test-time attributes (``test_score_thresh``, ``test_topk_per_image`` / ``max_detections_per_image``).

The first ``--num-images`` images of the method phase's test loader are read once, before timing (data
loading is not timed). Each round runs every image through both models, one model after the other, the
first model alternating from round to round, each image timed alone (batch 1, CUDA synchronised); the first
``--warmup`` images of each model are run before the rounds and not timed. The table gives the mean and
median time per image, the ratio method / baseline of the means, and the detections per image; ``--output``
writes the same as JSON, with ``same_detections`` (both models gave identical boxes, scores and classes).
Overrides (``key=value``) apply to both configs; ``--baseline-opts`` / ``--method-opts`` to one.
"""

import argparse
import itertools
import os
import platform
import statistics
import sys
import time

import torch
from tabulate import tabulate

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate

from ltdet2.engine.phases import load_config, resolve_phases, single_phase
from ltdet2.engine.results import git_commit, machine_description
from ltdet2.utils.json_io import write_json_atomic

SCORE_THRESHOLD = 1e-4  # LVIS-style test settings (LVIS papers, BACL)
DETECTIONS_PER_IMAGE = 300
# Detectron2's test-time attributes: FastRCNNOutputLayers; RetinaNet / FCOS
SCORE_ATTRIBUTES = ("test_score_thresh",)
TOPK_ATTRIBUTES = ("test_topk_per_image", "max_detections_per_image")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-config", required=True)
    parser.add_argument("--baseline-phase", default=None, help="needed when the config has several phases")
    parser.add_argument("--method-config", required=True)
    parser.add_argument("--method-phase", default=None, help="needed when the config has several phases")
    parser.add_argument("--checkpoint", default=None, help="weights of both models (default: see above)")
    parser.add_argument("--num-images", type=int, default=50)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="untimed images per model before the rounds")
    parser.add_argument("--score-threshold", type=float, default=SCORE_THRESHOLD)
    parser.add_argument("--detections-per-image", type=int, default=DETECTIONS_PER_IMAGE)
    parser.add_argument("--seed", type=int, default=0, help="of the random initialisation without checkpoint")
    parser.add_argument("--output", default=None, help="JSON file for the results")
    parser.add_argument("--baseline-opts", nargs="*", default=[], help="overrides of the baseline config only")
    parser.add_argument("--method-opts", nargs="*", default=[], help="overrides of the method config only")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of both configs")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.num_images < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--num-images and --rounds must be >= 1, --warmup >= 0")
    return args


def load_phase(config_file, phase_name, overrides):
    """The :class:`~ltdet2.engine.phases.Phase` ``phase_name`` of ``config_file`` (the only one if None)."""
    phases = resolve_phases(load_config(config_file, overrides))
    return single_phase(phases, phase_name, config_file=config_file, naming="with --*-phase")


def set_test_limits(model, score_threshold, detections_per_image, where):
    """Sets the score threshold and detection cap on every module that has Detectron2's attributes."""
    found = False
    for module in model.modules():
        for name in SCORE_ATTRIBUTES:
            if hasattr(module, name):
                setattr(module, name, score_threshold)
                found = True
        for name in TOPK_ATTRIBUTES:
            if hasattr(module, name):
                setattr(module, name, detections_per_image)
    if not found:
        raise ValueError(f"{where}: no module with {SCORE_ATTRIBUTES} to set the score threshold on")


def weight_mismatch(baseline, method):
    """Parameters only one model has (missing in / unexpected in the method's), state entries both have
    with other shapes or values, and the buffers only one model has (allowed: training state)."""
    ours, theirs = baseline.state_dict(), method.state_dict()
    our_parameters, their_parameters = dict(baseline.named_parameters()), dict(method.named_parameters())
    missing = sorted(name for name in our_parameters if name not in theirs)
    unexpected = sorted(name for name in their_parameters if name not in ours)
    different = sorted(
        name
        for name in set(ours) & set(theirs)
        if ours[name].shape != theirs[name].shape or not torch.equal(ours[name], theirs[name])
    )
    extra_buffers = sorted((set(ours) ^ set(theirs)) - set(missing) - set(unexpected))
    return missing, unexpected, different, extra_buffers


def check_same_weights(baseline, method):
    """Raises naming what differs; returns the buffers only one model has."""
    missing, unexpected, different, extra_buffers = weight_mismatch(baseline, method)
    problems = [
        f"{what}: {names[:8]}{' ...' if len(names) > 8 else ''}"
        for what, names in (
            ("parameters missing in the method's model", missing),
            ("parameters unexpected in the method's model", unexpected),
            ("weights with other shapes or values", different),
        )
        if names
    ]
    if problems:
        raise ValueError("the two models do not hold the same weights: " + "; ".join(problems))
    return extra_buffers


def build(phase, device, seed):
    """The phase's model as Detectron2 instantiates it (``train.trainable`` only matters for training)."""
    torch.manual_seed(seed)
    return instantiate(phase.cfg.model).to(device)


def build_models(baseline_phase, method_phase, *, checkpoint, device, seed):
    """Both models in eval mode with the same weights; returns (baseline, method, weights description)."""
    baseline, method = build(baseline_phase, device, seed), build(method_phase, device, seed)
    if checkpoint is None and os.path.isfile(method_phase.final_checkpoint):
        checkpoint = method_phase.final_checkpoint
    if checkpoint is not None:
        for model in (baseline, method):
            DetectionCheckpointer(model).load(checkpoint)
        weights = checkpoint
    else:
        method.load_state_dict(baseline.state_dict(), strict=False)  # what does not match is named below
        weights = f"random initialisation (seed {seed}) of the baseline, copied"
    extra_buffers = check_same_weights(baseline, method)
    if extra_buffers:
        print(f"buffers in one model only, left as built or loaded: {extra_buffers}")
    return baseline.eval(), method.eval(), weights


def read_images(phase, num_images):
    """The first ``num_images`` inputs of the phase's test loader (batch 1), read once."""
    loader = instantiate(phase.cfg.dataloader.test)
    images = [batch[0] for batch in itertools.islice(iter(loader), num_images)]
    if not images:
        raise ValueError(f"phase {phase.name!r}: its test loader gave no image")
    return images


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def run_model(model, image, device):
    """Seconds for one image, and its detections (Instances on the CPU)."""
    synchronize(device)
    start = time.perf_counter()
    output = model([image])[0]
    synchronize(device)
    seconds = time.perf_counter() - start
    return seconds, output["instances"].to("cpu")


def same_detections(first, second):
    return all(
        len(a) == len(b)
        and torch.equal(a.pred_classes, b.pred_classes)
        and torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        and torch.equal(a.scores, b.scores)
        for a, b in zip(first, second)
    )


def benchmark(models, images, *, device, rounds, warmup):
    """{name: (seconds per image over every round, detections of each image in the last round)}."""
    times = {name: [] for name in models}
    detections = {}
    with torch.inference_mode():
        for model in models.values():
            for image in itertools.islice(itertools.cycle(images), warmup):
                run_model(model, image, device)
        names = list(models)
        for round_index in range(rounds):
            for name in names if round_index % 2 == 0 else names[::-1]:
                results = [run_model(models[name], image, device) for image in images]
                times[name] += [seconds for seconds, _ in results]
                detections[name] = [instances for _, instances in results]
    return times, detections


def summarize(times, detections):
    return {
        "ms_per_image_mean": 1000 * statistics.fmean(times),
        "ms_per_image_median": 1000 * statistics.median(times),
        "images_per_second": len(times) / sum(times),
        "detections_per_image": statistics.fmean(len(d) for d in detections),
    }


def main(argv=None):
    args = parse_args(argv)
    baseline_phase = load_phase(args.baseline_config, args.baseline_phase, [*args.overrides, *args.baseline_opts])
    method_phase = load_phase(args.method_config, args.method_phase, [*args.overrides, *args.method_opts])
    baseline, method, weights = build_models(
        baseline_phase, method_phase, checkpoint=args.checkpoint, device=args.device, seed=args.seed
    )
    for model, where in ((baseline, args.baseline_config), (method, args.method_config)):
        set_test_limits(model, args.score_threshold, args.detections_per_image, where)
    images = read_images(method_phase, args.num_images)
    for image in images:
        image["image"] = image["image"].to(args.device)

    times, detections = benchmark(
        {"baseline": baseline, "method": method}, images, device=args.device, rounds=args.rounds, warmup=args.warmup
    )
    result = {
        "baseline": {
            "config": args.baseline_config,
            "phase": baseline_phase.name,
            **summarize(times["baseline"], detections["baseline"]),
        },
        "method": {
            "config": args.method_config,
            "phase": method_phase.name,
            **summarize(times["method"], detections["method"]),
        },
    }
    result["ratio"] = result["method"]["ms_per_image_mean"] / result["baseline"]["ms_per_image_mean"]
    result["same_detections"] = same_detections(detections["baseline"], detections["method"])
    result["settings"] = {
        "weights": weights,
        "num_images": len(images),
        "rounds": args.rounds,
        "warmup": args.warmup,
        "score_threshold": args.score_threshold,
        "detections_per_image": args.detections_per_image,
        "device": args.device,
        "device_name": torch.cuda.get_device_name()
        if args.device == "cuda"
        else platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
        "machine": machine_description(),
        "commit": git_commit(),
        "load_avg": list(os.getloadavg()),  # 1, 5, 15 min, at the end of the timing
    }

    rows = [
        [
            f"{part['config']}{':' + part['phase'] if part['phase'] else ''}",
            part["ms_per_image_mean"],
            part["ms_per_image_median"],
            part["detections_per_image"],
        ]
        for part in (result["baseline"], result["method"])
    ]
    print(
        f"{len(images)} images x {args.rounds} rounds on {args.device} ({result['settings']['device_name']}, "
        f"{torch.get_num_threads()} threads); score threshold {args.score_threshold}, "
        f"{args.detections_per_image} detections; weights: {weights}"
    )
    print(tabulate(rows, headers=["model", "ms/image (mean)", "ms/image (median)", "detections/image"], floatfmt=".1f"))
    print(f"ratio method / baseline (mean time per image): {result['ratio']:.3f}x")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        write_json_atomic(args.output, result, indent=2)
        print(f"written to {args.output}")
    return result


if __name__ == "__main__":
    main()
