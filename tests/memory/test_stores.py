"""ClassQueue and PrototypeBank: values against direct reference computations."""

import collections

import numpy as np
import pytest
import torch

from ltdet2.memory import ClassQueue, MemorySample, PrototypeBank


def queue_contents(queue, name):
    """Per class, the stored entries oldest -> newest (reads the ring through its pointers)."""
    store = queue.storage(name)
    out = []
    for c in range(queue.num_classes):
        fill, ptr = int(queue.fill_counts[c]), int(queue.write_ptr[c])
        if fill < queue.capacity:
            out.append(store[c, :fill].tolist())
        else:
            out.append(torch.roll(store[c], -ptr, dims=0).tolist())
    return out


# the GPU has its own write path (one write per push instead of blocks); run there too when there is one
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_queue(**kwargs):
    return ClassQueue(4, 5, {"value": ((), torch.int64), "feat": (3,)}, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("storage_dtype", [None, torch.float16])
def test_ring_buffer_matches_deque_reference(device, storage_dtype):
    gen = torch.Generator().manual_seed(0)
    queue = make_queue(storage_dtype=storage_dtype).to(device)
    reference = [collections.deque(maxlen=5) for _ in range(4)]
    next_id = 0
    for step in range(30):
        num = int(torch.randint(0, 14, (1,), generator=gen))
        labels = torch.randint(0, 4, (num,), generator=gen)
        values = torch.arange(next_id, next_id + num)
        next_id += num
        queue.push(labels, value=values, feat=values[:, None].float().expand(-1, 3))
        for label, value in zip(labels.tolist(), values.tolist()):
            reference[label].append(value)
        assert queue_contents(queue, "value") == [list(d) for d in reference], step
        assert queue.counts.tolist() == [len(d) for d in reference]
    feats = queue_contents(queue, "feat")
    assert feats == [[[float(v)] * 3 for v in d] for d in reference]


@pytest.mark.parametrize("device", DEVICES)
def test_overwrite_oldest_first_and_per_push_cap(device):
    queue = make_queue().to(device)
    queue.push(torch.tensor([1, 1, 1]), value=torch.tensor([0, 1, 2]), feat=torch.zeros(3, 3))
    assert queue_contents(queue, "value")[1] == [0, 1, 2]
    # 8 entries of class 1 and 2 of class 3 in one push: class 1 keeps its LAST 5 in batch order
    labels = torch.tensor([1, 3, 1, 1, 1, 1, 3, 1, 1, 1])
    values = torch.arange(10, 20)
    queue.push(labels, value=values, feat=torch.zeros(10, 3))
    contents = queue_contents(queue, "value")
    assert contents[1] == [14, 15, 17, 18, 19]
    assert contents[3] == [11, 16]
    assert queue.counts.tolist() == [0, 5, 0, 2]
    # then one more entry overwrites the oldest (14)
    queue.push(torch.tensor([1]), value=torch.tensor([99]), feat=torch.zeros(1, 3))
    assert queue_contents(queue, "value")[1] == [15, 17, 18, 19, 99]


def test_push_validates_input():
    queue = make_queue()
    with pytest.raises(ValueError, match="labels must lie in"):
        queue.push(torch.tensor([4]), value=torch.tensor([0]), feat=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="missing fields"):
        queue.push(torch.tensor([0]), value=torch.tensor([0]))
    with pytest.raises(ValueError, match="shape"):
        queue.push(torch.tensor([0]), value=torch.tensor([0]), feat=torch.zeros(1, 4))
    queue.push(torch.zeros(0, dtype=torch.int64), value=torch.zeros(0, dtype=torch.int64), feat=torch.zeros(0, 3))
    assert queue.counts.sum() == 0


def test_recent_mode_order_and_empty_classes():
    queue = make_queue()
    queue.push(torch.tensor([0, 2, 0, 0, 2]), value=torch.tensor([1, 2, 3, 4, 5]), feat=torch.zeros(5, 3))
    queue.push(torch.tensor([0] * 4), value=torch.tensor([6, 7, 8, 9]), feat=torch.zeros(4, 3))
    sample = queue.sample(torch.tensor([2, 1, 0, 3]), 3, mode="recent")
    assert isinstance(sample, MemorySample)
    # class 2 holds only 2 entries: min(per_class, fill) rows, newest first
    assert sample.labels.tolist() == [2, 2, 0, 0, 0]
    assert sample.value.tolist() == [5, 2, 9, 8, 7]
    assert sample.skipped.tolist() == [1, 3]
    assert sample["feat"].shape == (5, 3)
    empty = queue.sample(torch.tensor([1, 1]), 4)
    assert len(empty) == 0 and empty.skipped.tolist() == [1, 1] and empty.feat.shape == (0, 3)


def test_random_sampling_is_uniform_over_stored_entries():
    queue = ClassQueue(3, 8, {"value": ((), torch.int64)})
    queue.push(torch.tensor([0] * 5 + [1] * 11), value=torch.cat([torch.arange(5), torch.arange(100, 111)]))
    gen = torch.Generator().manual_seed(1234)
    sample = queue.sample(torch.tensor([0, 1, 2]), 16000, generator=gen)
    assert sample.skipped.tolist() == [2]
    assert sample.labels.tolist() == [0] * 16000 + [1] * 16000
    for cls, allowed in ((0, range(5)), (1, range(103, 111))):
        values = sample.value[sample.labels == cls]
        observed = np.array([(values == v).sum().item() for v in allowed])
        assert observed.sum() == 16000  # nothing outside the stored entries
        expected = 16000 / len(allowed)
        chi2 = ((observed - expected) ** 2 / expected).sum()
        assert chi2 < 24.3, (cls, observed, chi2)  # p = 0.001 critical value for df <= 7
    # same seed, same rows
    again = queue.sample(torch.tensor([0, 1, 2]), 16000, generator=torch.Generator().manual_seed(1234))
    assert torch.equal(again.value, sample.value)


def test_random_distinct_sampling_without_replacement():
    queue = ClassQueue(4, 8, {"value": ((), torch.int64)})
    # class 0: 3 stored; class 1: 8 (full, ring wrapped: 100..103 overwritten); class 3: 6
    queue.push(
        torch.tensor([0] * 3 + [1] * 12 + [3] * 6),
        value=torch.cat([torch.arange(3), torch.arange(100, 112), torch.arange(300, 306)]),
    )
    gen = torch.Generator().manual_seed(7)
    draws = 3000
    frequency = {1: collections.Counter(), 3: collections.Counter()}
    for _ in range(draws):
        sample = queue.sample(torch.tensor([0, 1, 2, 3]), 5, mode="random_distinct", generator=gen)
        assert sample.skipped.tolist() == [2]
        assert sample.labels.tolist() == [0] * 3 + [1] * 5 + [3] * 5  # min(per_class, fill) per class
        assert sorted(sample.value[:3].tolist()) == [0, 1, 2]  # fill <= per_class: every entry once
        for cls in (1, 3):
            values = sample.value[sample.labels == cls].tolist()
            assert len(set(values)) == 5  # no replacement
            frequency[cls].update(values)
    for cls, allowed in ((1, range(104, 112)), (3, range(300, 306))):
        assert set(frequency[cls]) == set(allowed)  # only stored entries
        observed = np.array([frequency[cls][v] for v in allowed])
        expected = draws * 5 / len(allowed)
        chi2 = ((observed - expected) ** 2 / expected).sum()
        assert chi2 < 24.3, (cls, observed, chi2)
    with pytest.raises(ValueError, match="mode must be one of"):
        queue.sample(torch.tensor([0]), 2, mode="newest")


def test_kept_by_push_marks_the_rows_one_push_writes():
    queue = make_queue()  # capacity 5
    labels = torch.tensor([1, 3, 1, 1, 1, 1, 3, 1, 1, 1, 0])
    kept = queue.kept_by_push(labels)
    # class 1 keeps its last 5 of 8, classes 3 and 0 everything
    assert kept.tolist() == [False, True, False, False, True, True, True, True, True, True, True]
    values = torch.arange(11)
    whole = make_queue()
    whole.push(labels, value=values, feat=values[:, None].float().expand(-1, 3))
    # the kept rows pushed in two consecutive pushes leave the same queue
    for rows in (slice(0, 6), slice(6, 11)):
        part = kept.clone()
        part[[i for i in range(11) if i not in range(11)[rows]]] = False
        queue.push(labels[part], value=values[part], feat=values[part][:, None].float().expand(-1, 3))
    for key, value in whole.state_dict().items():
        assert torch.equal(queue.state_dict()[key], value), key
    assert queue.kept_by_push(torch.tensor([], dtype=torch.int64)).shape == (0,)


def test_float16_storage_and_output_dtype():
    queue = ClassQueue(2, 4, {"features": (2, 3), "targets": 4}, storage_dtype=torch.float16)
    assert queue.storage("features").dtype == torch.float16
    feats = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(0))
    queue.push(torch.tensor([1, 1, 0]), features=feats, targets=torch.ones(3, 4))
    sample = queue.sample(torch.tensor([1]), 2, mode="recent")
    assert sample.features.dtype == torch.float32
    assert torch.equal(sample.features, feats[[1, 0]].half().float())
    assert queue.sample(torch.tensor([1]), 2, mode="recent", dtype=torch.float64).features.dtype == torch.float64
    assert queue.nbytes == 2 * 4 * (6 + 4) * 2 + 2 * 2 * 8


def test_storage_dtype_by_name_as_a_config_holds_it():
    for name, dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16), ("", None)):
        queue = ClassQueue(2, 4, {"features": 3, "ids": ((), torch.int64)}, storage_dtype=name)
        assert queue.storage_dtype == dtype
        assert queue.storage("features").dtype == (dtype or torch.float32)
        assert queue.storage("ids").dtype == torch.int64
    with pytest.raises(ValueError, match=r"ClassQueue: storage_dtype='half': expected None or one of"):
        ClassQueue(2, 4, {"features": 3}, storage_dtype="half")
    with pytest.raises(ValueError, match=r"storage_dtype=torch.float64"):
        ClassQueue(2, 4, {"features": 3}, storage_dtype=torch.float64)


def test_queue_state_dict_round_trip():
    queue = make_queue()
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        labels = torch.randint(0, 4, (7,), generator=gen)
        queue.push(labels, value=torch.randint(0, 100, (7,), generator=gen), feat=torch.randn(7, 3, generator=gen))
    restored = make_queue()
    restored.load_state_dict(queue.state_dict())
    assert set(queue.state_dict()) == {"store_value", "store_feat", "write_ptr", "fill_counts"}
    for q in (queue, restored):
        q.push(torch.tensor([2, 2, 3]), value=torch.tensor([7, 8, 9]), feat=torch.ones(3, 3))
    a = queue.sample(torch.arange(4), 6, generator=torch.Generator().manual_seed(5))
    b = restored.sample(torch.arange(4), 6, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.labels, b.labels) and torch.equal(a.value, b.value) and torch.equal(a.feat, b.feat)
    assert queue_contents(queue, "value") == queue_contents(restored, "value")


def test_dtype_casts_keep_store_dtypes_and_device_moves():
    queue = ClassQueue(2, 3, {"features": 4, "boxes": ((4,), torch.float64)}, storage_dtype=torch.float16)
    queue.double()
    queue.to(torch.float32)
    assert queue.storage("features").dtype == torch.float16
    assert queue.storage("boxes").dtype == torch.float16
    assert queue.write_ptr.dtype == torch.int64
    bank = PrototypeBank(3, 4, 0.9).half()
    assert bank.means.dtype == torch.float32 and bank.seen.dtype == torch.bool
    meta = ClassQueue(2, 3, {"features": 4}).to("meta")
    assert meta.storage("features").device.type == "meta" and meta.fill_counts.device.type == "meta"
    if torch.cuda.is_available():
        q = make_queue().cuda()
        q.push(torch.tensor([1]), value=torch.tensor([3]), feat=torch.ones(1, 3))
        assert q.sample(torch.tensor([1]), 2).value.tolist() == [3, 3]


# ---------------------------------------------------------------------------------------------
# PrototypeBank


def reference_prototypes(batches, num_classes, dim, momentum):
    means = np.zeros((num_classes, dim))
    variances = np.zeros((num_classes, dim))
    seen = np.zeros(num_classes, bool)
    for feats, labels in batches:
        for c in np.unique(labels):
            x = feats[labels == c]
            mu, var = x.mean(0), x.var(0)
            if seen[c]:
                means[c] = momentum * means[c] + (1 - momentum) * mu
                variances[c] = momentum * variances[c] + (1 - momentum) * var
            else:
                means[c], variances[c], seen[c] = mu, var, True
    return means, variances, seen


def test_prototype_statistics_match_numpy():
    rng = np.random.default_rng(0)
    bank = PrototypeBank(5, 6, 0.9)
    batches = []
    for _ in range(6):
        num = int(rng.integers(0, 20))
        labels = rng.integers(0, 4, num)  # class 4 never seen
        feats = rng.normal(labels[:, None], 1.0 + labels[:, None], (num, 6))
        batches.append((feats, labels))
        bank.update(torch.tensor(feats, dtype=torch.float32), torch.tensor(labels))
    means, variances, seen = reference_prototypes(batches, 5, 6, 0.9)
    np.testing.assert_allclose(bank.means.numpy(), means, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bank.variances.numpy(), variances, rtol=1e-5, atol=1e-5)
    assert bank.seen.tolist() == seen.tolist()


def test_prototype_sampling_statistics_and_skips():
    bank = PrototypeBank(3, 4, 0.5)
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(4000, 4, generator=gen) * torch.tensor([1.0, 2.0, 0.5, 3.0]) + torch.tensor([1.0, -1, 0, 5])
    bank.update(feats, torch.zeros(4000, dtype=torch.int64))
    sample = bank.sample(torch.tensor([0, 2]), 20000, generator=torch.Generator().manual_seed(1))
    assert sample.skipped.tolist() == [2] and sample.features.shape == (20000, 4)
    assert sample.labels.unique().tolist() == [0]
    torch.testing.assert_close(sample.features.mean(0), bank.means[0], atol=0.06, rtol=0)
    torch.testing.assert_close(sample.features.std(0), bank.variances[0].sqrt(), atol=0.06, rtol=0.02)
    with pytest.raises(ValueError, match="features must be"):
        bank.update(torch.zeros(2, 5), torch.tensor([0, 1]))


def test_prototype_state_dict_round_trip():
    bank = PrototypeBank(4, 3, 0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        bank.update(torch.randn(10, 3, generator=gen), torch.randint(0, 3, (10,), generator=gen))
    restored = PrototypeBank(4, 3, 0.9)
    restored.load_state_dict(bank.state_dict())
    a = bank.sample(torch.arange(4), 5, generator=torch.Generator().manual_seed(3))
    b = restored.sample(torch.arange(4), 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.features, b.features) and a.skipped.tolist() == b.skipped.tolist() == [3]
