"""``sync="global"`` with 2 gloo processes on CPU: identical state on every rank, equal to one process
that saw the global batches (rank 0's rows, then rank 1's)."""

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ltdet2.memory import (
    ClassQueue,
    CumulativeCount,
    MeanScore,
    PrototypeBank,
    SoftConfusionMatrix,
    TruePositiveRate,
)

from fixtures.distributed import free_port

WORLD_SIZE = 2
STEPS = 4
C = 6
DIM = 5


def make_batch(step, rank):
    """Unequal batch sizes across ranks; rank 1 has an empty batch at step 2."""
    gen = torch.Generator().manual_seed(1000 * step + rank)
    num = 0 if (rank == 1 and step == 2) else 3 + 5 * rank + step
    labels = torch.randint(0, C + 1, (num,), generator=gen)  # C = background
    return {
        "labels": labels,
        "features": torch.randn(num, DIM, generator=gen),
        "logits": torch.randn(num, C + 1, generator=gen),
        "ids": torch.arange(num) + 100 * step + 10 * rank,
    }


def build(sync):
    return {
        "queue": ClassQueue(C, 4, {"features": DIM, "ids": ((), torch.int64)}, storage_dtype=torch.float16, sync=sync),
        "bank": PrototypeBank(C, DIM, 0.9, sync=sync),
        "count": CumulativeCount(C, sync=sync),
        "mean_score": MeanScore(C, sync=sync),
        "tpr": TruePositiveRate(C, sync=sync),
        "confusion": SoftConfusionMatrix(C, sync=sync),
    }


def run_steps(modules, batches):
    """Feed one batch per step; returns the samples drawn along the way."""
    samples = []
    for step, batch in enumerate(batches):
        labels = batch["labels"]
        fg = labels < C
        modules["queue"].push(labels[fg], features=batch["features"][fg], ids=batch["ids"][fg])
        modules["bank"].update(batch["features"][fg], labels[fg])
        modules["count"].update(labels)
        probs = batch["logits"].softmax(1)
        modules["mean_score"].update(labels, probs[torch.arange(len(labels)), labels])
        modules["tpr"].update(labels, probs)
        modules["confusion"].update(labels, batch["logits"])
        classes = torch.arange(C)
        seeded = modules["queue"].sample(classes, 3, generator=torch.Generator().manual_seed(step))
        recent = modules["queue"].sample(classes, 2, mode="recent")
        distinct = modules["queue"].sample(
            classes, 3, mode="random_distinct", generator=torch.Generator().manual_seed(50 + step)
        )
        shared = modules["queue"].sample(classes, 3)  # no generator: seed broadcast under global
        hallucinated = modules["bank"].sample(classes, 2, generator=torch.Generator().manual_seed(step))
        samples.append(
            {
                "seeded": (seeded.labels, seeded.ids, seeded.features),
                "recent": (recent.labels, recent.ids),
                "distinct": (distinct.labels, distinct.ids),
                "shared": (shared.labels, shared.ids),
                "hallucinated": (hallucinated.labels, hallucinated.features),
            }
        )
    return samples


def state(modules):
    return {f"{k}.{n}": v.clone() for k, m in modules.items() for n, v in m.state_dict().items()}


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        batches = [make_batch(step, rank) for step in range(STEPS)]
        modules = build("global")
        samples = run_steps(modules, batches)
        local = CumulativeCount(C, sync="local")
        for batch in batches:
            local.update(batch["labels"])
        torch.save(
            {"state": state(modules), "samples": samples, "local_counts": local.counts.clone()},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def assert_nested_equal(a, b, exact=True):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_nested_equal(a[k], b[k], exact)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_nested_equal(x, y, exact)
    elif exact:
        assert a.dtype == b.dtype and torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed (gloo)")
def test_global_sync_matches_single_process(tmp_path, monkeypatch):
    if sys.platform.startswith("linux") and "GLOO_SOCKET_IFNAME" not in os.environ:
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # stay on the loopback interface
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]

    # every rank holds the same state and drew the same samples, bit for bit
    assert_nested_equal(results[0]["state"], results[1]["state"])
    assert_nested_equal(results[0]["samples"], results[1]["samples"])

    # one process on the global batches (rank 0's rows, then rank 1's)
    global_batches = [
        {k: torch.cat([make_batch(step, r)[k] for r in range(WORLD_SIZE)]) for k in make_batch(step, 0)}
        for step in range(STEPS)
    ]
    single = build("global")  # world size 1 here: no communication
    single_samples = run_steps(single, global_batches)
    reference = state(single)
    got = results[0]["state"]
    exact_keys = [k for k in reference if k.startswith(("queue.", "count.", "tpr.")) or k.endswith("positives")]
    assert_nested_equal({k: got[k] for k in exact_keys}, {k: reference[k] for k in exact_keys})
    assert_nested_equal(got, reference, exact=False)
    for got_step, ref_step in zip(results[0]["samples"], single_samples):
        assert_nested_equal(got_step["seeded"], ref_step["seeded"])
        assert_nested_equal(got_step["recent"], ref_step["recent"])
        assert_nested_equal(got_step["distinct"], ref_step["distinct"])
        assert_nested_equal(got_step["hallucinated"], ref_step["hallucinated"], exact=False)

    # local policy: each rank counted only its own batches
    for r in range(WORLD_SIZE):
        expected = sum(torch.bincount(make_batch(s, r)["labels"], minlength=C + 1)[:C] for s in range(STEPS))
        assert torch.equal(results[r]["local_counts"], expected)


def test_ddp_keeps_local_memories_per_rank(monkeypatch):
    """DDP's default broadcast_buffers=True would copy rank 0's local memories to every rank each forward."""
    from omegaconf import OmegaConf

    from ltdet2.engine import train_loop

    passed = []
    monkeypatch.setattr(train_loop, "_create_ddp_model", lambda model, **ddp: passed.append(ddp) or model)
    monkeypatch.setattr(train_loop.comm, "get_world_size", lambda: 2)
    with_local = torch.nn.ModuleDict({"head": torch.nn.Linear(2, 2), "mean_score": MeanScore(C, sync="local")})
    with_global = torch.nn.ModuleDict({"head": torch.nn.Linear(2, 2), "mean_score": MeanScore(C, sync="global")})

    def cfg(**ddp):
        return OmegaConf.create({"train": {"ddp": ddp}})

    train_loop.create_ddp_model(with_local, cfg())
    train_loop.create_ddp_model(with_global, cfg())
    train_loop.create_ddp_model(with_local, cfg(broadcast_buffers=False, find_unused_parameters=True))
    assert [p.get("broadcast_buffers", "default") for p in passed] == [False, "default", False]
    with pytest.raises(ValueError, match=r"broadcast_buffers=True would overwrite the local memories \['mean_score'\]"):
        train_loop.create_ddp_model(with_local, cfg(broadcast_buffers=True))
