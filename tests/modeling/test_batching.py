"""Per-image rows of a batch: the image of each row and the valid ground truth."""

import torch

from detectron2.structures import Instances

from ltdet2.modeling.batching import image_index, valid_ground_truth


def test_image_index_and_valid_ground_truth():
    assert image_index([2, 0, 3], "cpu").tolist() == [0, 0, 2, 2, 2]
    assert image_index([], "cpu").tolist() == []
    with_valid = Instances((8, 8), gt_classes=torch.tensor([1, 2]), gt_valid=torch.tensor([False, True]))
    without = Instances((8, 8), gt_classes=torch.tensor([3]))
    empty = Instances((8, 8), gt_classes=torch.zeros(0, dtype=torch.int64))
    valid = valid_ground_truth([without, empty, with_valid], "cpu")
    assert valid.dtype == torch.bool and valid.tolist() == [True, False, True]
