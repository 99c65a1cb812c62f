"""Feeding one iteration's box-predictor outputs to the learning-status indicators."""
import torch
import torch.nn.functional as F

from ltdet2.memory import (
    CumulativeCount,
    MeanScore,
    SoftConfusionMatrix,
    StaticFrequency,
    TruePositiveRate,
)


@torch.no_grad()
def object_mean_probabilities(logits, labels, object_ids):
    """Per object, the mean softmax probability of its class over its rows.

    Args:
        logits: [N, C+1] classification logits (background index C).
        labels: [N] classes; rows labelled C (background) are ignored.
        object_ids: [N] int64; rows of one object (one ground-truth box, or one class of memory rows)
            share an id. Rows with id < 0 are ignored.

    Returns:
        (labels [K], mean probabilities [K]) for the K objects, in increasing id order.
    """
    num_classes = logits.shape[1] - 1
    keep = (labels < num_classes) & (object_ids >= 0)
    labels, object_ids = labels[keep], object_ids[keep]
    probs = F.softmax(logits[keep].detach().float(), dim=1).gather(1, labels[:, None]).squeeze(1)
    unique_ids, inverse = torch.unique(object_ids, return_inverse=True)
    sums = probs.new_zeros(unique_ids.numel()).index_add_(0, inverse, probs)
    counts = probs.new_zeros(unique_ids.numel()).index_add_(0, inverse, torch.ones_like(probs))
    object_labels = labels.new_zeros(unique_ids.numel()).scatter_(0, inverse, labels)
    return object_labels, sums / counts.clamp(min=1)


@torch.no_grad()
def update_indicator(indicator, logits, labels, object_ids):
    """Updates one indicator from ``logits [N, C+1]``, ``labels [N]`` and ``object_ids [N]``.

    MeanScore gets one entry per object (LOCE); TruePositiveRate and SoftConfusionMatrix see every
    row; CumulativeCount counts foreground rows; static frequencies do not change.
    """
    if isinstance(indicator, MeanScore):
        indicator.update(*object_mean_probabilities(logits, labels, object_ids))
    elif isinstance(indicator, (TruePositiveRate, SoftConfusionMatrix)):
        indicator.update(labels, logits)
    elif isinstance(indicator, CumulativeCount):
        indicator.update(labels[labels < logits.shape[1] - 1])
    elif isinstance(indicator, StaticFrequency):
        return
    else:
        raise TypeError(f"no rule to update indicator {type(indicator).__name__} from RoI predictions")
