"""Class-aware (class-balanced) image sampling, cRT's stage 2 sampler (issue #30): the EQLv2 code's ``CASDataset``
structure (classes in rounds, each class's images in permutation after permutation) as a Detectron2 sampler."""

import itertools
import math

import numpy as np
import pytest

from ltdet2.data.samplers import ClassAwareSampler, class_aware_sampler

# one class per image: image -> class; class 3 has 1 image, class 0 five; class 2 has none
SINGLE = {0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 1, 6: 1, 7: 4, 8: 4, 9: 4, 10: 3}


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


@pytest.mark.parametrize("rounds_per_block", [None, 1, 3, 7])
def test_rounds_are_class_permutations_and_each_class_cycles_through_its_images(rounds_per_block):
    images, classes = zip(*SINGLE.items())
    sampler = ClassAwareSampler(images, classes, 12, seed=0, rounds_per_block=rounds_per_block)
    assert sampler.classes.tolist() == [0, 1, 3, 4] and sampler.class_image_count().tolist() == [5, 2, 1, 3]
    rounds = 60
    stream = take(sampler, 4 * rounds)
    drawn = [SINGLE[i] for i in stream]  # image 11 (no annotation) is never drawn: KeyError otherwise
    for r in range(rounds):  # every round: each class with an image, once (class 2 never)
        assert sorted(drawn[4 * r : 4 * r + 4]) == [0, 1, 3, 4]
    for c in (0, 1, 3, 4):  # each class's images: window after window of its n_c draws, each a permutation
        own = [i for i in stream if SINGLE[i] == c]
        members = sorted(i for i, k in SINGLE.items() if k == c)
        n = len(members)
        assert len(own) == rounds
        for w in range(rounds // n):
            assert sorted(own[w * n : (w + 1) * n]) == members, (c, w)
    # shuffled: the windows are not all in one order
    assert len({tuple(own[w * 3 : w * 3 + 3]) for w in range(rounds // 3)}) > 1


def test_multi_class_images_are_drawn_with_the_class_balanced_frequency():
    """After L = lcm(n_c) rounds every class drew each of its images L / n_c times, so image i was drawn
    sum over its classes c of L / n_c times: the frequency of cRT's class-balanced sampling."""
    pairs = [(0, 0), (0, 1), (1, 0), (2, 0), (2, 2), (3, 1), (4, 2), (4, 3), (6, 3), (6, 0)]  # image 5: none
    images, classes = map(np.array, zip(*pairs))
    counts = np.bincount(classes)  # 4, 2, 2, 2 images
    lcm = math.lcm(*counts.tolist())
    for seed, block in ((0, None), (5, 3)):
        sampler = ClassAwareSampler(images, classes, 7, seed=seed, rounds_per_block=block)
        stream = take(sampler, 2 * lcm * len(counts))  # two periods
        for half in (stream[: lcm * len(counts)], stream[lcm * len(counts) :]):
            expected = np.zeros(7)
            np.add.at(expected, images, lcm / counts[classes])
            assert np.bincount(half, minlength=7).tolist() == expected.tolist()


def test_seeded_and_unshuffled():
    images, classes = zip(*SINGLE.items())
    first = take(ClassAwareSampler(images, classes, seed=3), 200)
    assert take(ClassAwareSampler(images, classes, seed=3), 200) == first
    assert take(ClassAwareSampler(images, classes, seed=4), 200) != first
    # unshuffled: classes ascending in every round, each class's images ascending
    plain = take(ClassAwareSampler(images, classes, shuffle=False, seed=0, rounds_per_block=2), 12)
    assert plain == [0, 5, 10, 7, 1, 6, 10, 8, 2, 5, 10, 9]


def test_two_ranks_are_disjoint_shards_of_one_stream(monkeypatch):
    from detectron2.data.samplers import distributed_sampler

    images, classes = zip(*SINGLE.items())
    single = take(ClassAwareSampler(images, classes, seed=7), 40)
    monkeypatch.setattr(distributed_sampler.comm, "get_world_size", lambda: 2)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed_sampler.comm, "get_rank", lambda rank=rank: rank)
        shards.append(take(ClassAwareSampler(images, classes, seed=7), 20))
    assert shards[0] == single[0::2] and shards[1] == single[1::2]


def test_factory_reads_the_dataset_dicts_and_refuses_a_set_without_annotations():
    dicts = [
        {"image_id": 10, "annotations": [{"category_id": 2}, {"category_id": 2}]},
        {"image_id": 11, "annotations": []},
        {"image_id": 12, "annotations": [{"category_id": 0}, {"category_id": 2}]},
    ]
    sampler = class_aware_sampler(dicts, seed=0)
    assert sampler._size == 3 and sampler.classes.tolist() == [0, 2]
    assert sampler.class_image_count().tolist() == [1, 2]
    assert set(take(sampler, 20)) == {0, 2}
    with pytest.raises(ValueError, match="no image holds an annotation"):
        class_aware_sampler([{"image_id": 1, "annotations": []}], seed=0)
    with pytest.raises(ValueError, match="num_images"):
        ClassAwareSampler([0, 4], [0, 1], 3, seed=0)
