"""LST's class-incremental data (issue #13, reference §6 tests 1-3): the class split, replay counts, the phase
datasets (entries, renumbered ids, val json) and their loading through ``ValidityDatasetMapper``."""

import numpy as np
import pytest

from ltdet2.data import LVISMeta, incremental_class_order, incremental_class_phases, replay_counts


def toy_meta(instance_count, ids=None):
    instance_count = np.asarray(instance_count, dtype=np.int64)
    ids = tuple(range(1, len(instance_count) + 1)) if ids is None else tuple(ids)
    return LVISMeta(
        category_ids=ids,
        names=tuple(f"c{i}" for i in ids),
        frequency=np.full(len(ids), "r"),
        image_count=np.minimum(instance_count, 1),
        instance_count=instance_count,
    )


# --- the class split -----------------------------------------------------------------------------------------


def test_order_is_descending_instance_count_with_ties_by_ascending_id():
    meta = toy_meta([5, 9, 5, 0, 9, 7], ids=(10, 3, 4, 1, 8, 2))
    assert incremental_class_order(meta).tolist() == [3, 8, 2, 4, 10, 1]
    phases = incremental_class_phases(meta, base=2, num_phases=3)
    assert [p.tolist() for p in phases] == [[3, 8], [2, 4], [10], [1]]
    assert [p.tolist() for p in incremental_class_phases(meta, base=6, num_phases=0)] == [[3, 8, 2, 4, 10, 1]]


def test_lvis_v0_5_sized_split_is_270_plus_6_x_160():
    counts = np.random.default_rng(0).integers(0, 5000, size=1230)
    phases = incremental_class_phases(toy_meta(counts), base=270, num_phases=6)
    assert [len(p) for p in phases] == [270] + [160] * 6
    assert np.array_equal(np.concatenate(phases), incremental_class_order(toy_meta(counts)))
    # v1-sized: 933 classes after the base in near-equal bins, the larger ones first
    phases = incremental_class_phases(toy_meta(counts[:1203]), base=270, num_phases=6)
    assert [len(p) for p in phases] == [270, 156, 156, 156, 155, 155, 155]


@pytest.mark.parametrize(
    "base, num_phases, message",
    [(4, 3, "more phases than classes: 3 incremental phases for the 2 classes"), (0, 1, "base must be in"),
     (7, 0, "base must be in"), (2, -1, "num_phases must be >= 0")],
)  # fmt: skip
def test_split_errors_name_the_numbers(base, num_phases, message):
    with pytest.raises(ValueError, match=message):
        incremental_class_phases(toy_meta([6, 5, 4, 3, 2, 1]), base=base, num_phases=num_phases)


# --- replay counts ---------------------------------------------------------------------------------------------


def test_replay_counts_of_the_reference_toy_case():
    # class k in 3 images with 2, 1, 3 instances: n_k = 2; new classes with 4 and 8 instances: n_C = 6 -> 3
    for mode in ("ceil", "round"):
        assert replay_counts([6], [3], [4, 8], mode=mode).tolist() == [3]


def test_replay_counts_where_ceil_and_round_differ():
    # n_k = 5 / 2 = 2.5, n_C = 6: 2.4 -> ceil 3, round 2; n_k = 4 / 1, n_C = 6: 1.5 -> ceil 2, round (to even) 2;
    # n_k = 12 / 1: 0.5 -> ceil 1, round 0 -> 1 (the minimum); n_k = 2 / 2 = 1: 6 both
    args = ([5, 4, 12, 2], [2, 1, 1, 2], [4, 8])
    assert replay_counts(*args, mode="ceil").tolist() == [3, 2, 1, 6]
    assert replay_counts(*args, mode="round").tolist() == [2, 2, 1, 6]
    # halves round to even: n_C / n_k = 2.5 -> 2, 3.5 -> 4 (Python's round, as the official notebook)
    assert replay_counts([2, 2], [1, 1], [5, 5], mode="round").tolist() == [2, 2]
    assert replay_counts([2], [1], [7], mode="round").tolist() == [4]


def test_replay_count_errors():
    with pytest.raises(ValueError, match=r"positions \[1 \(1 in total\)\] have no training image"):
        replay_counts([3, 0], [1, 0], [4])
    with pytest.raises(ValueError, match="replay mode must be one of"):
        replay_counts([3], [1], [4], mode="floor")
    with pytest.raises(ValueError, match="at least one new class"):
        replay_counts([3], [1], [])
