#!/usr/bin/env python
"""Parameter count and peak memory of one phase's model in training, on synthetic images (no dataset needed).

    # LST at LVIS v0.5 scale (1,230 classes), the official class-agnostic mask branch, then a smaller one
    python scripts/model_footprint.py --config-file projects/lst_lvis_v0_5.py --phase incremental_6
    python scripts/model_footprint.py --config-file projects/lst_lvis_v0_5.py --phase incremental_6 \
        phases.incremental_6.model.roi_heads.mask_head.agnostic_mlp_dim=1024

Builds the phase's model as training does (``train.trainable`` applied) and its optimizer, and runs ``--steps``
training steps (forward, backward, optimizer step) on a batch of ``--batch`` random images of ``--image-size``
with ``--boxes`` random boxes (and box masks) of random classes. Prints the parameters (total, trainable, per
module) and the peak memory: on a GPU the peak allocated by PyTorch, on a CPU the process's peak resident
memory above what it held before the model was built (one model per process: run the script once per variant).
A teacher-student phase is measured as its student alone (its distillation terms removed): the teacher is a
frozen copy of the previous phase's model (its parameter count is printed), which adds a forward pass and no
gradient or optimizer state.
"""

import argparse
import json
import resource
import sys

import torch

from detectron2.config import instantiate
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from ltdet2.engine.phases import load_config, resolve_phases
from ltdet2.engine.results import git_commit, machine_description
from ltdet2.engine.train_loop import build_model


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def synthetic_batch(num_images, height, width, num_boxes, num_classes, *, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(num_images):
        xy = torch.rand(num_boxes, 2, generator=generator) * torch.tensor([width, height]) * 0.6
        wh = 16 + torch.rand(num_boxes, 2, generator=generator) * torch.tensor([width, height]) * 0.3
        boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([width - 1.0, height - 1.0]))], dim=1)
        ys, xs = torch.arange(height).view(1, -1, 1), torch.arange(width).view(1, 1, -1)
        inside_x = (xs >= boxes[:, 0, None, None]) & (xs < boxes[:, 2, None, None])
        masks = inside_x & (ys >= boxes[:, 1, None, None]) & (ys < boxes[:, 3, None, None])
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(boxes)
        instances.gt_classes = torch.randint(0, num_classes, (num_boxes,), generator=generator)
        instances.gt_masks = BitMasks(masks)
        image = torch.randint(0, 255, (3, height, width), generator=generator, dtype=torch.uint8)
        batch.append({"image": image, "instances": instances, "height": height, "width": width})
    return batch


def parameter_counts(model):
    counts = {}
    for name, param in model.named_parameters():
        parts = name.split(".")
        module = ".".join(parts[:2]) if parts[0] == "roi_heads" else parts[0]
        counts[module] = counts.get(module, 0) + param.numel()
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--phase", help="the phase of a project with phases (default: the last one)")
    parser.add_argument("--batch", type=int, default=2, help="images per step (default 2)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(800, 1333), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--boxes", type=int, default=10, help="ground-truth boxes per image")
    parser.add_argument("--steps", type=int, default=2, help="training steps (the optimizer state fills in the first)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    cfg = load_config(args.config_file, args.overrides)
    teacher_cfg = None
    if "phases" in cfg:
        phases = {p.name: p.cfg for p in resolve_phases(cfg)}
        name = args.phase or list(phases)[-1]
        if name not in phases:
            parser.error(f"--phase {name!r}: {args.config_file} has phases {list(phases)}")
        cfg = phases[name]
        source = cfg.train.get("teacher_from_phase", None)
        teacher_cfg = phases[source].model if source else None
    if cfg.model.get("distillers"):
        cfg.model.distillers = []  # the student alone (see the module docstring)
    device = torch.device(cfg.train.device)
    on_gpu = device.type == "cuda"

    before = peak_rss_bytes()
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    num_classes = cfg.model.roi_heads.num_classes
    batch = synthetic_batch(args.batch, *args.image_size, args.boxes, num_classes)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    with EventStorage(0):
        for _ in range(args.steps):
            losses = model(batch)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    peak = torch.cuda.max_memory_allocated(device) if on_gpu else peak_rss_bytes() - before

    params = list(model.parameters())
    teacher_params = None
    if teacher_cfg is not None:  # built after the measurement: the peak resident memory only grows
        teacher_params = sum(p.numel() for p in instantiate(teacher_cfg).parameters())
    figures = {
        "config": args.config_file,
        "phase": args.phase,
        "overrides": args.overrides,
        "classes": num_classes,
        "parameters": sum(p.numel() for p in params),
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "parameters_by_module": parameter_counts(model),
        "teacher_parameters": teacher_params,
        "batch": f"{args.batch} x {args.image_size[0]}x{args.image_size[1]}, {args.boxes} boxes each",
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if on_gpu else ""),
        "peak_memory_bytes": int(peak),
        "peak_memory_kind": "torch.cuda.max_memory_allocated"
        if on_gpu
        else "peak RSS above the process before the model",
        "machine": machine_description(),
        "commit": git_commit(),
        "torch": torch.__version__,
        "command": " ".join(["scripts/model_footprint.py", *sys.argv[1:]]),
    }
    for key, value in figures.items():
        if key in ("machine", "commit", "torch", "command"):
            continue
        if key.endswith("parameters") and value is not None:
            value = f"{value:,} ({value / 1e6:.1f}M)"
        elif key == "peak_memory_bytes":
            value = f"{value / 2**30:.2f} GiB"
        print(f"{key}: {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
