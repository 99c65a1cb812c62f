"""BACL's state: the prototype bank's unbiased variance, the confusion matrix fed by FCBL's rows, and
the multi-process policy (reference/bacl.md section 7, items 6, 8 and 13)."""

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_distributed import free_port

from detectron2.config import LazyCall as L
from detectron2.config import instantiate

from ltdet2.memory import PrototypeBank, SoftConfusionMatrix
from ltdet2.modeling import sigmoid_background_probs
from ltdet2.modeling.feature_sources import FeatureHallucination
from ltdet2.modeling.indicator_links import predictor_batch, update_indicators
from ltdet2.modeling.losses import ForegroundBalanceLoss, confusion_margins

from fixtures.models import NUM_CLASSES, long_tail_cfg, make_batch, small_model_cfg, train_losses

C = 5
DIM = 4
WORLD_SIZE = 2
STEPS = 3


# --- 8. prototype bank ----------------------------------------------------------------------------


def test_prototype_bank_first_update_copies_then_ema_with_unbiased_variance():
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(7, DIM, generator=generator, dtype=torch.float64)
    second = torch.randn(5, DIM, generator=generator, dtype=torch.float64) + 2
    bank = PrototypeBank(C, DIM, 0.9, dtype=torch.float64, unbiased=True)
    population = PrototypeBank(C, DIM, 0.9, dtype=torch.float64)
    for b in (bank, population):
        b.update(first, torch.full((7,), 2))
    torch.testing.assert_close(bank.means[2], first.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bank.variances[2], first.var(0, unbiased=True), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(population.variances[2], first.var(0, unbiased=False), rtol=1e-12, atol=1e-12)
    # second batch: 0.9 * old + 0.1 * batch; a class seen once in a batch has variance 0 there
    bank.update(torch.cat([second, first[:1]]), torch.tensor([2] * 5 + [4]))
    torch.testing.assert_close(bank.means[2], 0.9 * first.mean(0) + 0.1 * second.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        bank.variances[2], 0.9 * first.var(0) + 0.1 * second.var(0, unbiased=True), rtol=1e-12, atol=1e-12
    )
    assert torch.equal(bank.variances[4], torch.zeros(DIM)) and torch.equal(bank.means[4], first[0])
    assert bank.seen.tolist() == [False, False, True, False, True]
    assert "unbiased=True" in repr(bank)


# --- 6. the confusion matrix as FCBL's indicator ------------------------------------------------


def test_confusion_two_updates_equal_one_update_on_the_concatenated_rows():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(30, C + 1, generator=generator)
    labels = torch.randint(0, C + 1, (30,), generator=generator)
    labels[labels == 3] = 0  # class 3 unseen: its row stays 0
    twice, once = SoftConfusionMatrix(C), SoftConfusionMatrix(C)
    twice.update(labels[:12], logits[:12])
    twice.update(labels[12:], logits[12:])
    once.update(labels, logits)
    torch.testing.assert_close(twice.matrix(), once.matrix(), rtol=1e-6, atol=1e-7)
    assert torch.equal(twice.positives, once.positives) and twice.matrix()[3].abs().sum() == 0


# --- 13. multi-process ------------------------------------------------------------------------------


def rank_batch(step, rank):
    """Unequal sizes across ranks; rank 1 has no rows at step 1 (the collectives still run)."""
    generator = torch.Generator().manual_seed(100 * step + rank)
    num = 0 if (rank == 1 and step == 1) else 6 + 4 * rank + step
    labels = torch.randint(0, C + 1, (num,), generator=generator)
    return {
        "labels": labels,
        "logits": torch.randn(num, C + 1, generator=generator) * 2,
        "features": torch.randn(num, DIM, generator=generator),
    }


def run_bacl_steps(batches):
    """FCBL reading a global confusion matrix, updated after the loss as the ROI heads do; a global
    unbiased prototype bank. Returns the per-step (margins, loss, number of rows) and the final state."""
    indicators = {"confusion": SoftConfusionMatrix(C, sync="global")}
    loss_module = ForegroundBalanceLoss(num_classes=C)
    loss_module.bind_indicators(indicators)
    bank = PrototypeBank(C, DIM, 0.9, sync="global", unbiased=True)
    record = []
    for batch in batches:
        labels, logits = batch["labels"], batch["logits"]
        margins = loss_module.margins(C)
        loss = loss_module(logits, labels)
        record.append((margins, loss, labels.numel()))
        rows = predictor_batch(indicators, logits, labels, torch.arange(labels.numel()), sigmoid_background_probs)
        update_indicators(indicators, rows, "after_loss")
        foreground = labels < C
        bank.update(batch["features"][foreground], labels[foreground])
    state = {f"confusion.{k}": v.clone() for k, v in indicators["confusion"].state_dict().items()}
    state.update({f"bank.{k}": v.clone() for k, v in bank.state_dict().items()})
    return record, state


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        record, state = run_bacl_steps([rank_batch(step, rank) for step in range(STEPS)])
        torch.save({"record": record, "state": state}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed (gloo)")
def test_global_confusion_on_two_processes_equals_one_process_on_the_concatenated_batches(tmp_path, monkeypatch):
    if sys.platform.startswith("linux") and "GLOO_SOCKET_IFNAME" not in os.environ:
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    single_record, single_state = run_bacl_steps(
        [
            {
                k: torch.cat([rank_batch(step, r)[k] for r in range(WORLD_SIZE)])
                for k in ("labels", "logits", "features")
            }
            for step in range(STEPS)
        ]
    )
    for key, value in single_state.items():
        # identical on both ranks, and equal to one process on the concatenated batches
        assert torch.equal(results[0]["state"][key], results[1]["state"][key]), key
        torch.testing.assert_close(results[0]["state"][key], value, rtol=1e-5, atol=1e-6)
    assert single_state["confusion.positives"].sum() > 0
    for step in range(STEPS):
        (m0, loss0, n0), (m1, loss1, n1) = results[0]["record"][step], results[1]["record"][step]
        single_margins, single_loss, _ = single_record[step]
        assert torch.equal(m0, m1)  # every rank's FCBL reads the same margins
        torch.testing.assert_close(m0, single_margins, rtol=1e-5, atol=1e-5)
        # per-rank losses are means over the rank's rows: their row-weighted mean is the single loss
        assert (n0 * loss0 + n1 * loss1).item() / (n0 + n1) == pytest.approx(single_loss.item(), rel=1e-5)
    assert not torch.equal(single_record[-1][0], torch.zeros(C, C))


def test_a_single_process_never_calls_torch_distributed(monkeypatch):
    """Stage 2 with every store global trains in one process without touching a collective (the official
    stage 2 crashes there on an unguarded all_reduce)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.distributed collective called in a single process")

    for name in ("all_reduce", "all_gather", "broadcast", "barrier", "all_gather_object", "reduce_scatter"):
        monkeypatch.setattr(dist, name, forbidden)
    cfg = long_tail_cfg(
        small_model_cfg(),
        indicators={"confusion": L(SoftConfusionMatrix)(num_classes=NUM_CLASSES, sync="global")},
        feature_sources=[
            L(FeatureHallucination)(num_classes=NUM_CLASSES, feature_dim=256, sync="global", num_sampled_classes=2)
        ],
    )
    cfg.roi_heads.box_predictor.class_scoring = "sigmoid_background"
    cfg.roi_heads.box_predictor.cls_loss = L(ForegroundBalanceLoss)(num_classes=NUM_CLASSES)
    model = instantiate(cfg)
    for seed in range(2):
        losses = train_losses(model, make_batch(seed=seed), seed=seed)
        sum(losses.values()).backward()
    confusion = model.roi_heads.indicators["confusion"]
    assert confusion.positives.sum() > 0
    assert not torch.equal(confusion_margins(confusion.matrix()), torch.zeros(NUM_CLASSES, NUM_CLASSES))
