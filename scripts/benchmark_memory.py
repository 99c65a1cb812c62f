#!/usr/bin/env python
"""Per-iteration cost of ltdet2.memory at LVIS scale, against per-class Python lists and a plain copy.

One iteration = what a training step of the three methods does with their memories:
  MFS (LOCE)  push 16 dense boxes per GT box (pre-FC 256x7x7 features + 4 regression targets) into a
              C x 80 float16 queue; sample 8 classes x 4 rows (random);
  RIO         push the positive RoIs of targeted classes (post-FC 1024-d features + proposal and GT
              boxes) into a C x 60 queue; replay 20 most recent rows per targeted class present;
  FHM (BACL)  update 1024-d prototypes with all dense-box features of the batch; hallucinate
              8 classes x 12 rows;
  indicators  cumulative count, mean score (one entry per GT box + one per memory class), TPR and the
              soft confusion matrix on all images x RoIs rows ([N, C+1] scores).

Baselines: (a) per-class Python lists as in the official code (deques appended object by object,
sampling and prototype / mean-score updates by looping over classes; TPR and confusion matrix are
vectorized in the official BACL code, so the same vectorized update is used there); (b) one
``dst.copy_(src)`` of as many bytes as the iteration hands to and takes from the memories (inputs
pushed / updated in the caller's dtype, indicator inputs, sampled outputs).

Example (full LVIS scale, ~2.8 GB of stores):
    python scripts/benchmark_memory.py
Small:
    python scripts/benchmark_memory.py --classes 100 --images 2 --iters 3
"""

import argparse
import collections
import os
import random
import time

import torch

from ltdet2.memory import ClassQueue, CumulativeCount, MeanScore, PrototypeBank, SoftConfusionMatrix, TruePositiveRate


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rois-per-image", type=int, default=512)
    parser.add_argument("--gt-per-image", type=int, default=10)
    parser.add_argument("--boxes-per-gt", type=int, default=16)
    parser.add_argument("--mfs-capacity", type=int, default=80)
    parser.add_argument("--mfs-shape", type=int, nargs=3, default=[256, 7, 7])
    parser.add_argument("--mfs-classes", type=int, default=8)
    parser.add_argument("--mfs-per-class", type=int, default=4)
    parser.add_argument("--rio-capacity", type=int, default=60)
    parser.add_argument(
        "--rio-fraction", type=float, default=0.59, help="share of classes targeted (706/1203 in LVIS v0.5)"
    )
    parser.add_argument("--rio-replay", type=int, default=20)
    parser.add_argument("--rio-positives-per-gt", type=int, default=24, help="positive RoIs per targeted GT box")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--fhm-classes", type=int, default=8)
    parser.add_argument("--fhm-per-class", type=int, default=12)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Inputs:
    """Random but LVIS-shaped inputs of one iteration (labels drawn from a Zipf-like distribution)."""

    def __init__(self, args, device, gen):
        C = args.classes
        self.num_gt = args.images * args.gt_per_image
        self.num_dense = self.num_gt * args.boxes_per_gt
        self.num_rois = args.images * args.rois_per_image
        weights = 1.0 / torch.arange(1, C + 1, dtype=torch.float64)
        self.class_weights = weights[torch.randperm(C, generator=gen)]
        self.targeted = torch.zeros(C, dtype=torch.bool)
        self.targeted[torch.argsort(self.class_weights)[: int(round(args.rio_fraction * C))]] = True
        self.mfs_features = torch.randn(self.num_dense, *args.mfs_shape, generator=gen).to(device)
        self.mfs_targets = torch.randn(self.num_dense, 4, generator=gen).to(device)
        self.fhm_features = torch.randn(self.num_dense, args.dim, generator=gen).to(device)
        self.roi_logits = torch.randn(self.num_rois, C + 1, generator=gen).to(device)
        max_rio = self.num_gt * args.rio_positives_per_gt
        self.rio_features = torch.randn(max_rio, args.dim, generator=gen).to(device)
        self.rio_boxes = torch.rand(max_rio, 8, generator=gen).to(device)
        self.args, self.device, self.gen = args, device, gen

    def draw(self):
        """Labels of one iteration (features are reused: their values do not change the cost)."""
        args, C = self.args, self.args.classes
        gt = torch.multinomial(self.class_weights, self.num_gt, replacement=True, generator=self.gen)
        dense = gt.repeat_interleave(args.boxes_per_gt)
        # 25% foreground RoIs, as Detectron2's sampler; their classes come from the GT boxes
        roi_labels = torch.full((self.num_rois,), C, dtype=torch.int64)
        fg = torch.randperm(self.num_rois, generator=self.gen)[: self.num_rois // 4]
        roi_labels[fg] = gt[torch.randint(0, self.num_gt, (fg.numel(),), generator=self.gen)]
        rio_gt = gt[self.targeted[gt]]
        rio = rio_gt.repeat_interleave(args.rio_positives_per_gt)
        probs = self.class_weights / self.class_weights.sum()
        mfs_classes = torch.multinomial(1 - probs, args.mfs_classes, replacement=False, generator=self.gen)
        fhm_classes = torch.multinomial(1 - probs, args.fhm_classes, replacement=False, generator=self.gen)
        d = self.device
        return {
            "gt": gt.to(d),
            "gt_scores": torch.rand(self.num_gt, generator=self.gen).to(d),
            "dense": dense.to(d),
            "rois": roi_labels.to(d),
            "rio": rio.to(d),
            "rio_classes": rio_gt.unique().to(d),
            "mfs_classes": mfs_classes.to(d),
            "fhm_classes": fhm_classes.to(d),
        }


class TensorMemories:
    def __init__(self, args, device):
        C = args.classes
        self.mfs = ClassQueue(
            C, args.mfs_capacity, {"features": tuple(args.mfs_shape), "targets": 4}, storage_dtype=torch.float16
        ).to(device)
        self.rio = ClassQueue(C, args.rio_capacity, {"features": args.dim, "boxes": 8}).to(device)
        self.fhm = PrototypeBank(C, args.dim, 0.9).to(device)
        self.indicators = [
            CumulativeCount(C).to(device),
            MeanScore(C).to(device),
            TruePositiveRate(C).to(device),
            SoftConfusionMatrix(C).to(device),
        ]
        self.generator = torch.Generator(device=device).manual_seed(args.seed)

    def stores(self):
        return {"MFS ClassQueue": self.mfs, "RIO ClassQueue": self.rio, "FHM PrototypeBank": self.fhm}

    def step(self, inp, lab, timings):
        device = inp.device
        t0 = time.perf_counter()
        # RIO replays what was stored before this batch, then pushes it
        replay = self.rio.sample(lab["rio_classes"], inp.args.rio_replay, mode="recent")
        n = lab["rio"].numel()
        self.rio.push(lab["rio"], features=inp.rio_features[:n], boxes=inp.rio_boxes[:n])
        self.mfs.push(lab["dense"], features=inp.mfs_features, targets=inp.mfs_targets)
        mfs = self.mfs.sample(lab["mfs_classes"], inp.args.mfs_per_class, generator=self.generator)
        sync(device)
        t1 = time.perf_counter()
        self.fhm.update(inp.fhm_features, lab["dense"])
        fhm = self.fhm.sample(lab["fhm_classes"], inp.args.fhm_per_class, generator=self.generator)
        sync(device)
        t2 = time.perf_counter()
        count, mean_score, tpr, confusion = self.indicators
        count.update(lab["rois"])
        mean_score.update(
            torch.cat([lab["gt"], mfs.labels.unique()]),
            torch.cat([lab["gt_scores"], lab["gt_scores"].new_full((mfs.labels.unique().numel(),), 0.5)]),
        )
        tpr.update(lab["rois"], inp.roi_logits)
        confusion.update(lab["rois"], inp.roi_logits)
        sync(device)
        t3 = time.perf_counter()
        timings["queues"].append(t1 - t0)
        timings["prototypes"].append(t2 - t1)
        timings["indicators"].append(t3 - t2)
        sampled = sum(t.numel() * t.element_size() for s in (replay, mfs, fhm) for t in s.fields.values())
        return sampled


class NaiveMemories:
    """Per-class Python containers, as the official LOCE / RIO / BACL code keeps its memories."""

    def __init__(self, args, device):
        C = args.classes
        self.args = args
        self.mfs = [collections.deque(maxlen=args.mfs_capacity) for _ in range(C)]
        self.rio = [collections.deque(maxlen=args.rio_capacity) for _ in range(C)]
        self.means = [None] * C
        self.variances = [None] * C
        self.mean_scores = torch.full((C + 1,), 0.01, device=device)
        self.indicators = [
            CumulativeCount(C).to(device),
            TruePositiveRate(C).to(device),
            SoftConfusionMatrix(C).to(device),
        ]
        self.rng = random.Random(args.seed)

    def sample_queue(self, queues, classes, per_class, recent):
        rows, labels = [], []
        for c in classes.tolist():
            queue = queues[c]
            if not queue:
                continue
            if recent:
                picked = list(queue)[::-1][:per_class]
            else:
                picked = [queue[self.rng.randrange(len(queue))] for _ in range(per_class)]
            rows.extend(picked)
            labels.extend([c] * len(picked))
        if not rows:
            return [], labels
        return [torch.stack([r[i] for r in rows]).float() for i in range(len(rows[0]))], labels

    def step(self, inp, lab, timings):
        device = inp.device
        t0 = time.perf_counter()
        replay, _ = self.sample_queue(self.rio, lab["rio_classes"], inp.args.rio_replay, recent=True)
        for i, c in enumerate(lab["rio"].tolist()):
            self.rio[c].append((inp.rio_features[i].clone(), inp.rio_boxes[i].clone()))
        for i, c in enumerate(lab["dense"].tolist()):
            self.mfs[c].append((inp.mfs_features[i].half(), inp.mfs_targets[i].half()))
        mfs, mfs_labels = self.sample_queue(self.mfs, lab["mfs_classes"], inp.args.mfs_per_class, recent=False)
        sync(device)
        t1 = time.perf_counter()
        labels = lab["dense"]
        for c in labels.unique().tolist():
            x = inp.fhm_features[labels == c]
            mean, var = x.mean(0), x.var(0, unbiased=False)
            if self.means[c] is None:
                self.means[c], self.variances[c] = mean, var
            else:
                self.means[c] = 0.9 * self.means[c] + 0.1 * mean
                self.variances[c] = 0.9 * self.variances[c] + 0.1 * var
        fhm = []
        for c in lab["fhm_classes"].tolist():
            if self.means[c] is not None:
                eps = torch.randn(inp.args.fhm_per_class, inp.args.dim, device=device)
                fhm.append(self.means[c] + eps * self.variances[c].sqrt())
        fhm = torch.cat(fhm) if fhm else None
        sync(device)
        t2 = time.perf_counter()
        count, tpr, confusion = self.indicators
        count.update(lab["rois"])
        entries = torch.cat([lab["gt"], torch.tensor(sorted(set(mfs_labels)), dtype=torch.int64, device=device)])
        scores = torch.cat([lab["gt_scores"], lab["gt_scores"].new_full((entries.numel() - lab["gt"].numel(),), 0.5)])
        for c in entries.unique().tolist():
            s = scores[entries == c]
            decay = 0.9 ** s.numel()
            self.mean_scores[c] = decay * self.mean_scores[c] + (1 - decay) * s.mean()
        tpr.update(lab["rois"], inp.roi_logits)
        confusion.update(lab["rois"], inp.roi_logits)
        sync(device)
        t3 = time.perf_counter()
        timings["queues"].append(t1 - t0)
        timings["prototypes"].append(t2 - t1)
        timings["indicators"].append(t3 - t2)


def input_bytes(inp, lab):
    """Bytes handed to the memories in one iteration, in the caller's dtype."""
    n_rio = lab["rio"].numel()
    tensors_bytes = (
        inp.mfs_features.numel() * 4
        + inp.mfs_targets.numel() * 4  # MFS push
        + n_rio * (inp.rio_features.shape[1] + 8) * 4  # RIO push
        + inp.fhm_features.numel() * 4  # FHM update
        + 2 * inp.roi_logits.numel() * 4  # TPR and confusion matrix inputs
    )
    label_bytes = 8 * sum(lab[k].numel() for k in ("dense", "rio", "gt", "rois")) + 8 * lab["rois"].numel()
    return tensors_bytes + label_bytes


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"device {device}"
    )
    gen = torch.Generator().manual_seed(args.seed)
    inp = Inputs(args, device, gen)
    print(
        f"per iteration: {args.images} images x {args.rois_per_image} RoIs = {inp.num_rois} RoIs, "
        f"{inp.num_gt} GT boxes, "
        f"{inp.num_dense} dense boxes (MFS push / FHM update)"
    )

    results = {}
    for name, cls in (("tensor", TensorMemories), ("naive", NaiveMemories)):
        if name == "naive" and args.skip_naive:
            continue
        memories = cls(args, device)
        timings = collections.defaultdict(list)
        total_bytes = []
        rio_rows = []
        for it in range(args.warmup + args.iters):
            lab = inp.draw()
            if it == args.warmup:
                timings.clear()
            sampled = memories.step(inp, lab, timings)
            if name == "tensor" and it >= args.warmup:
                total_bytes.append(input_bytes(inp, lab) + sampled)
                rio_rows.append(lab["rio"].numel())
        timings["total"] = [sum(x) for x in zip(*timings.values())]
        results[name] = {k: median(v) for k, v in timings.items()}
        results[name + " (best)"] = {k: min(v) for k, v in timings.items()}
        if name == "tensor":
            print(f"RIO rows pushed per iteration: median {median(rio_rows)}")
            print("store footprint:")
            for store_name, store in memories.stores().items():
                print(f"  {store_name:<18} {store.nbytes / 2**20:10.1f} MiB")
            indicator_bytes = sum(b.numel() * b.element_size() for i in memories.indicators for b in i.buffers())
            print(f"  {'indicators':<18} {indicator_bytes / 2**20:10.1f} MiB")
            bytes_per_iter = median(total_bytes)
        del memories

    # (b) one copy of the same number of bytes
    src = torch.empty(bytes_per_iter, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    copy_times = []
    for _ in range(args.warmup + args.iters):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        copy_times.append(time.perf_counter() - t0)
    copy_time = median(copy_times[args.warmup :])
    best_copy_time = min(copy_times[args.warmup :])
    del src, dst

    print(
        f"bytes pushed + sampled per iteration: {bytes_per_iter / 2**20:.1f} MiB; "
        f"plain copy {copy_time * 1e3:.2f} ms (best {best_copy_time * 1e3:.2f} ms)"
    )
    print(
        f"{'ms / iteration (median)':<24}"
        + "".join(f"{k:>12}" for k in ("queues", "prototypes", "indicators", "total"))
    )
    for name, res in results.items():
        print(f"{name:<24}" + "".join(f"{res[k] * 1e3:12.2f}" for k in ("queues", "prototypes", "indicators", "total")))
    for suffix, copy in (("", copy_time), (" (best)", best_copy_time)):
        tensor = results["tensor" + suffix]
        label = "median" if not suffix else "best"
        if "naive" + suffix in results:
            naive = results["naive" + suffix]
            ratios = "  ".join(
                f"{k} {naive[k] / tensor[k]:.1f}x" for k in ("queues", "prototypes", "indicators", "total")
            )
            print(f"[{label}] speed-up over per-class lists: {ratios}")
        print(f"[{label}] tensor total / plain copy: {tensor['total'] / copy:.2f}x")


if __name__ == "__main__":
    main()
