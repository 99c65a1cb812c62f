#!/usr/bin/env python
"""A short seeded run of a project and its fingerprint: each phase's logged losses and a hash of every tensor of its
final checkpoint (model, and the optimizer's and scheduler's state), for checking that a refactoring keeps behaviour.

    python scripts/run_fingerprint.py --config-file projects/loce.py --output-dir /tmp/fp/loce --max-iter 24 \
        --output /tmp/fp/loce_before.json
    python scripts/run_fingerprint.py --compare /tmp/fp/loce_before.json /tmp/fp/loce_after.json

``--output-dir`` must be a new or empty folder: the phase runner skips the phases that finished there, so a folder
holding an earlier run would be "fingerprinted" from its old files. ``--overwrite`` deletes what it holds first.

Every phase trains ``--max-iter`` iterations (``train.max_iter``, ``train.epochs`` cleared) without evaluation (the
phases' evaluators are removed: derived datasets, memory warm-ups and teachers still run as in a full run). The
comparison prints the first difference of each phase and exits 1 when any loss or tensor differs.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys

import torch


def fingerprint_checkpoint(path):
    """{name: sha256 of the tensor's bytes, dtype and shape} of every tensor in the checkpoint, flattened."""
    data = torch.load(path, map_location="cpu", weights_only=False)
    digests = {}

    def walk(node, prefix):
        if isinstance(node, torch.Tensor):
            tensor = node.detach().cpu().contiguous().reshape(-1)
            digest = hashlib.sha256(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
            digest.update(f"{node.dtype}{tuple(node.shape)}".encode())
            digests[prefix] = digest.hexdigest()[:16]
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, (list, tuple)):
            for index, value in enumerate(node):
                walk(value, f"{prefix}[{index}]")

    walk({key: data[key] for key in ("model", "optimizer", "scheduler") if key in data}, "")
    return digests


def logged_losses(metrics_file):
    """[{iteration, name: value}] of the loss scalars in a phase's metrics.json."""
    rows = []
    with open(metrics_file) as f:
        for line in f:
            record = json.loads(line)
            losses = {k: v for k, v in record.items() if "loss" in k}
            if losses:
                rows.append({"iteration": record["iteration"], **losses})
    return rows


def prepare_output_dir(output_dir, overwrite=False):
    """Refuses an ``output_dir`` that holds anything (a finished run there would be skipped and its old files
    compared), unless ``overwrite``, which deletes its contents first (not the folder of the checkout, the current
    folder, the home folder or the file system's root). Returns the error message, or None when the folder is ready."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        return f"--output-dir {output_dir} is a file, not a folder"
    entries = sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []
    if not entries:
        return None
    listed = ", ".join(entries[:6]) + (" ..." if len(entries) > 6 else "")
    if not overwrite:
        return (
            f"--output-dir {output_dir} is not empty ({listed}): the phases that finished there would be skipped and "
            f"their old files fingerprinted instead of a new run's. Give a new or empty folder, or add --overwrite to "
            f"delete its contents first"
        )
    real = os.path.realpath(output_dir)
    protected = {os.path.realpath(p) for p in (os.sep, os.getcwd(), os.path.expanduser("~"), _CHECKOUT)}
    if real in protected or os.path.isdir(os.path.join(real, ".git")):
        return f"--overwrite: refusing to delete the contents of {output_dir} ({real}); give a folder of its own"
    for name in entries:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    print(f"--overwrite: deleted the contents of {output_dir} ({listed})")
    return None


_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args):
    from detectron2.utils.logger import setup_logger

    from ltdet2.engine.phases import load_config, run_phases

    setup_logger(args.output_dir)
    setup_logger(args.output_dir, name="ltdet2", abbrev_name="ltdet2")
    overrides = [f"train.output_dir={args.output_dir}", f"train.max_iter={args.max_iter}", f"train.seed={args.seed}"]
    cfg = load_config(args.config_file, [*overrides, *args.opts])
    phases = cfg.phases if "phases" in cfg else {"": cfg}
    for phase in phases.values():
        phase.dataloader.pop("evaluator", None)
        if phase.train.get("epochs", None) is not None:
            phase.train.epochs = None
    run_phases(cfg)
    result = {"config_file": args.config_file, "max_iter": args.max_iter, "seed": args.seed, "phases": {}}
    for name in phases:
        folder = os.path.join(args.output_dir, name)
        result["phases"][name] = {
            "losses": logged_losses(os.path.join(folder, "metrics.json")),
            "checkpoint": fingerprint_checkpoint(os.path.join(folder, "model_final.pth")),
        }
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.output}")


def compare(first_file, second_file):
    """Prints the differences of two fingerprints; True when they are identical."""
    with open(first_file) as f:
        first = json.load(f)["phases"]
    with open(second_file) as f:
        second = json.load(f)["phases"]
    same = True
    if list(first) != list(second):
        print(f"phases differ: {list(first)} vs {list(second)}")
        return False
    for name in first:
        a, b = first[name], second[name]
        if a["losses"] != b["losses"]:
            same = False
            for row_a, row_b in zip(a["losses"], b["losses"]):
                if row_a != row_b:
                    print(f"phase '{name}': losses differ first at iteration {row_a['iteration']}: {row_a} vs {row_b}")
                    break
            else:
                print(f"phase '{name}': {len(a['losses'])} vs {len(b['losses'])} logged loss rows")
        keys_a, keys_b = set(a["checkpoint"]), set(b["checkpoint"])
        if keys_a != keys_b:
            same = False
            print(
                f"phase '{name}': checkpoint entries only in the first {sorted(keys_a - keys_b)[:8]}, "
                f"only in the second {sorted(keys_b - keys_a)[:8]}"
            )
        changed = sorted(k for k in keys_a & keys_b if a["checkpoint"][k] != b["checkpoint"][k])
        if changed:
            same = False
            print(f"phase '{name}': {len(changed)} checkpoint tensors differ, e.g. {changed[:8]}")
        if a["losses"] == b["losses"] and keys_a == keys_b and not changed:
            print(f"phase '{name}': identical ({len(a['losses'])} loss rows, {len(keys_a)} tensors)")
    return same


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file")
    parser.add_argument("--output-dir", help="a new or empty folder for the run (see --overwrite)")
    parser.add_argument(
        "--overwrite", action="store_true", help="delete what --output-dir holds before the run (else it is refused)"
    )
    parser.add_argument("--output", help="the fingerprint's json file")
    parser.add_argument("--max-iter", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", nargs=2, metavar=("FIRST", "SECOND"))
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="more key=value overrides")
    args = parser.parse_args(argv)
    if args.compare:
        return 0 if compare(*args.compare) else 1
    if not (args.config_file and args.output_dir and args.output):
        parser.error("--config-file, --output-dir and --output (or --compare FIRST SECOND)")
    refused = prepare_output_dir(args.output_dir, args.overwrite)
    if refused:
        parser.error(refused)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
