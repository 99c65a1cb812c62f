"""Per-image rows of a batch as one tensor: which image each row comes from, and which ground truth is valid."""

import torch

__all__ = ["image_index", "valid_ground_truth"]


def image_index(counts, device) -> torch.Tensor:
    """``[sum(counts)]`` int64: the image of each row of per-image rows concatenated in image order (``counts``:
    rows per image, Python ints), on ``device``."""
    counts = torch.as_tensor(counts, dtype=torch.int64, device=device)
    return torch.repeat_interleave(torch.arange(len(counts), device=device), counts)


def valid_ground_truth(targets, device) -> torch.Tensor:
    """``[sum G_i]`` bool over the batch's ground truth, in image order: ``gt_valid`` where an image has it,
    True elsewhere, on ``device``."""
    return torch.cat(
        [
            t.gt_valid.to(device) if t.has("gt_valid") else torch.ones(len(t), dtype=torch.bool, device=device)
            for t in targets
        ]
    )
