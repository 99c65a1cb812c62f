#!/usr/bin/env python
"""Training-step time of one phase of a project against another, same weights and batches.

    # LOCE (EBL + MFS) fine-tune against the CE fine-tune (goal: at most 1.10x)
    python scripts/benchmark_step_time.py --config-file projects/loce_ablation.py \
        --baseline-phase finetune_ce --method-phase finetune_loce
    # RIO (RFS + replay) against RFS alone (goal: at most 1.10x), from the CE pretrain
    python scripts/benchmark_step_time.py --config-file projects/rio_ablation.py \
        --baseline-phase rfs --method-phase rio --checkpoint output/rio_ablation/seed0/pretrain/model_final.pth

Both phases' models are built from the same weights and trained on the same real batches of the
baseline phase's train loader (loaded once, before timing: data loading and sampling are not
timed). Timing alternates blocks of ``--steps`` steps of each model for ``--rounds`` rounds, so
machine noise hits both alike, and reports the median step time of each and their ratio; ``--output FILE``
also writes them as JSON with every step's time, the settings, machine, commit and command. A teacher-student
phase (``train.teacher_from_phase``) trains with its teacher, the named phase's final checkpoint under
``train.output_dir``, as in training.

    # the step-wise method's knowledge transfer (with its frozen head expert) against the control (goal 1.5x)
    python scripts/benchmark_step_time.py --config-file projects/stepwise_ablation.py --baseline-phase control \
        --method-phase transfer --checkpoint output/stepwise_ablation/seed0/pretrain/model_final.pth \
        train.output_dir=output/stepwise_ablation/seed0
    # LST: an incremental phase with logit distillation against the same phase without it (goal 1.5x)
    python scripts/benchmark_step_time.py --config-file projects/lst_ablation.py --baseline-phase no_distill_1 \
        --method-phase incremental_1 --checkpoint output/lst_ablation/seed0/base/model_final.pth \
        train.output_dir=output/lst_ablation/seed0

Overrides (``key=value``) apply to both phases; ``--baseline-opts`` / ``--method-opts`` to one. With one phase on
both sides and opts on one, it is an A/B of the same model with and without a change, e.g. the CPU poolers of issue 29
(the small models' default) against Detectron2's:

    python scripts/benchmark_step_time.py --config-file projects/baseline.py \
        --output docs/results/speed/step_faster_rcnn.json \
        --baseline-opts model.roi_heads.box_pooler.fast_backward=False -- optimizer.lr=0.002

(``--baseline-phase`` / ``--method-phase`` may be left out for a one-phase config; lr 0.002 because the repeated
batches diverge from scratch at the project's 0.02 without its warm-up.)

The first step's losses of both models (same weights, same batch) are compared and reported (``first_step_losses``),
so a change that should keep the numbers shows that it does.

``--baseline-config-file`` takes the baseline phase from another config: two different detectors on the same batches
(the baseline's loader), each from its own seeded initialisation (no weights are shared, so ``--checkpoint`` is
refused), e.g. the small Deformable DETR against the small Faster R-CNN, per training step:

    python scripts/benchmark_step_time.py --config-file projects/deformable_detr.py \
        --baseline-config-file projects/baseline.py --output docs/results/speed/step_detr_vs_faster_rcnn.json
"""

import argparse
import itertools
import os
import platform
import shlex
import statistics
import sys
import time

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.utils.events import EventStorage

from ltdet2.engine.derived import derived_dataset_builders, prepare_derived_datasets
from ltdet2.engine.phase_graph import chain_teachers
from ltdet2.engine.phases import load_config, resolve_phases
from ltdet2.engine.results import git_commit, machine_description
from ltdet2.engine.train_loop import build_model
from ltdet2.utils.json_io import write_json_atomic


def build(cfg, state=None):
    torch.manual_seed(0)
    model = build_model(cfg)
    if state is not None:
        model.load_state_dict(state, strict=False)
    model.train()
    cfg.optimizer.params.model = model
    return model, instantiate(cfg.optimizer)


def step(model, optimizer, batch):
    losses = model(batch)
    total = sum(losses.values())
    optimizer.zero_grad()
    total.backward()
    optimizer.step()


def first_losses(model, batch):
    """The model's losses on ``batch`` (a forward only, no update; the RoI sampling seeded alike): equal on both sides
    when a change keeps values."""
    torch.manual_seed(0)
    with torch.no_grad():
        return {name: float(value) for name, value in model(batch).items()}


def synchronize(model):
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_block(model, optimizer, batches):
    times = []
    for batch in batches:
        synchronize(model)
        start = time.perf_counter()
        step(model, optimizer, batch)
        synchronize(model)  # CUDA runs asynchronously: time the finished step
        times.append(time.perf_counter() - start)
    return times


def step_time_result(baseline_times, method_times, *, baseline_phase, method_phase, settings, first_step_losses=None):
    """The results file's dict: each phase's step times (s) and median (ms), the ratio of the medians
    (method / baseline), the settings, machine, commit and command."""
    baseline_median, method_median = statistics.median(baseline_times), statistics.median(method_times)
    return {
        "baseline": {"phase": baseline_phase, "median_ms": baseline_median * 1000, "step_s": list(baseline_times)},
        "method": {"phase": method_phase, "median_ms": method_median * 1000, "step_s": list(method_times)},
        "ratio": method_median / baseline_median,
        "first_step_losses": first_step_losses,
        "settings": settings,
        "machine": machine_description(),
        "commit": git_commit(),
        "command": shlex.join(["scripts/benchmark_step_time.py", *sys.argv[1:]]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument(
        "--baseline-config-file",
        default=None,
        help="take the baseline phase from this config (default: --config-file): another detector, its own weights",
    )
    parser.add_argument("--baseline-phase", default=None, help="needed when the config has several phases")
    parser.add_argument("--method-phase", default=None, help="needed when the config has several phases")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--checkpoint", default=None, help="weights to start both models from (e.g. the pretrain's model_final.pth)"
    )
    parser.add_argument("--output", default=None, help="JSON file for the step times, ratio and settings")
    parser.add_argument("--baseline-opts", nargs="*", default=[], help="overrides of the baseline phase only")
    parser.add_argument("--method-opts", nargs="*", default=[], help="overrides of the method phase only")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    baseline_config_file = args.baseline_config_file or args.config_file
    two_models = baseline_config_file != args.config_file
    if two_models and args.checkpoint:
        parser.error("--checkpoint with --baseline-config-file: the two detectors share no weights to start from")

    sides = {}
    for side, config_file, phase_name, opts in (
        ("baseline", baseline_config_file, args.baseline_phase, args.baseline_opts),
        ("method", args.config_file, args.method_phase, args.method_opts),
    ):
        resolved = resolve_phases(load_config(config_file, [*args.overrides, *opts]))
        chain_teachers(resolved)  # a teacher-student phase gets its teacher as the runner gives it
        phases = {p.name: p for p in resolved}
        if phase_name is None and len(phases) == 1:
            phase_name = next(iter(phases))
        if phase_name not in phases:
            parser.error(f"phase {phase_name!r}: {config_file} has phases {list(phases)}")
        sides[side] = (phases[phase_name], resolved)
    # the baseline's training set, when the phase derives it (e.g. LST's phase sets), is built as the runner does
    baseline_phase, resolved = sides["baseline"]
    prepare_derived_datasets(baseline_phase, resolved, derived_dataset_builders(baseline_phase.cfg))
    baseline_cfg, method_cfg = baseline_phase.cfg, sides["method"][0].cfg
    baseline, baseline_optimizer = build(baseline_cfg)
    if args.checkpoint:
        DetectionCheckpointer(baseline).load(args.checkpoint)
    method, method_optimizer = build(method_cfg, None if two_models else baseline.state_dict())
    loader = instantiate(baseline_cfg.dataloader.train)
    batches = list(itertools.islice(iter(loader), args.warmup + args.steps))

    baseline_times, method_times = [], []
    with EventStorage(0):
        first_step_losses = {
            "baseline": first_losses(baseline, batches[0]),
            "method": first_losses(method, batches[0]),
        }
        for model, optimizer in ((baseline, baseline_optimizer), (method, method_optimizer)):
            timed_block(model, optimizer, batches[: args.warmup])  # warm-up: allocator, memory fill
        for _ in range(args.rounds):
            baseline_times += timed_block(baseline, baseline_optimizer, batches[args.warmup :])
            method_times += timed_block(method, method_optimizer, batches[args.warmup :])

    device = baseline_cfg.train.device
    gpu = f" ({torch.cuda.get_device_name()})" if str(device).startswith("cuda") else ""
    settings = {
        "config_file": args.config_file,
        "baseline_config_file": baseline_config_file,
        "checkpoint": args.checkpoint,
        "batch_size": baseline_cfg.dataloader.train.total_batch_size,
        "baseline_opts": args.baseline_opts,
        "method_opts": args.method_opts,
        "overrides": args.overrides,
        "rounds": args.rounds,
        "steps": args.steps,
        "warmup": args.warmup,
        "device": f"{device}{gpu}",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_avg": list(os.getloadavg()),
    }
    result = step_time_result(
        baseline_times,
        method_times,
        baseline_phase=baseline_phase.name,
        method_phase=sides["method"][0].name,
        settings=settings,
        first_step_losses=first_step_losses,
    )
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}{gpu}"
    )
    print(
        f"batch: {baseline_cfg.dataloader.train.total_batch_size} images; "
        f"{args.rounds} rounds x {args.steps} steps per model, after {args.warmup} warm-up steps"
    )
    for side, opts in (("baseline", args.baseline_opts), ("method", args.method_opts)):
        label = f"{side} (phase {result[side]['phase'] or '-'}{', ' + ' '.join(opts) if opts else ''})"
        print(f"{label}: median step {result[side]['median_ms']:.1f} ms")
    print(f"ratio method / baseline: {result['ratio']:.3f}x")
    differences = {
        name: abs(value - first_step_losses["method"][name])
        for name, value in first_step_losses["baseline"].items()
        if name in first_step_losses["method"]
    }
    if differences:
        worst = max(differences, key=differences.get)
        print(f"first step's losses: largest difference {differences[worst]:.3g} ({worst})")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        write_json_atomic(args.output, result, indent=1)
        print(f"written to {args.output}")


if __name__ == "__main__":
    main()
