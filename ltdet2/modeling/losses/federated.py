"""The class weights of Detectron2's federated loss, from ltdet2's per-class image counts.

Detectron2's federated loss (``FastRCNNOutputLayers(use_fed_loss=True, use_sigmoid_ce=True, ...)``; Zhou et al.,
"Probabilistic two-stage detection", CenterNet2's LVIS loss) trains each iteration's sigmoid cross-entropy on the
classes present in the batch plus negative classes drawn with probability proportional to a per-class weight,
``image_count ** 0.5`` (``MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER``), until ``fed_loss_num_classes`` classes
(50). The predictor takes the weights from a callable, ``get_fed_loss_cls_weights()``, when it is built; Detectron2's
YAML path reads them from ``MetadataCatalog.get(name).class_image_count``
(``detectron2.data.detection_utils.get_fed_loss_cls_weights``). :class:`FederatedClassWeights` is that callable for
LazyConfig files, counting the images of a registered dataset with
:func:`ltdet2.data.class_counts.dataset_class_image_count` (from its json for LVIS-format datasets, LT-Shapes and
derived sets; from ``class_image_count`` for a dataset without a json file), so the weights are those of the data
the phase trains on, not a table a dataset's name happens to select.
"""

import torch

from ltdet2.data.class_counts import dataset_class_image_count

__all__ = ["FederatedClassWeights"]


class FederatedClassWeights:
    """``get_fed_loss_cls_weights`` of :class:`~detectron2.modeling.roi_heads.FastRCNNOutputLayers`: calling it
    gives the ``[K]`` float32 weights ``image_count ** freq_weight_power`` of the training dataset(s), in contiguous
    class order (Detectron2's ``get_fed_loss_cls_weights``, its float32 arithmetic included).

    The predictor calls it once, when it is built (so building the model reads the dataset's annotations); the
    weights are then its buffer ``fed_loss_cls_weights``, saved in checkpoints.

    Args:
        dataset_name: the training dataset(s) (``dataloader.train.dataset.names``; several: their counts summed).
        freq_weight_power: the exponent (Detectron2's default 0.5).
        num_classes: K, checked against the dataset's class count (None: not checked; Detectron2 asserts it too).
    """

    def __init__(self, *, dataset_name, freq_weight_power: float = 0.5, num_classes: int | None = None):
        self.dataset_name = dataset_name if isinstance(dataset_name, str) else list(dataset_name)
        self.freq_weight_power = float(freq_weight_power)
        self.num_classes = None if num_classes is None else int(num_classes)

    def image_count(self) -> torch.Tensor:
        """``[K]`` int64 training images per class."""
        return torch.as_tensor(dataset_class_image_count(self.dataset_name), dtype=torch.int64)

    def __call__(self) -> torch.Tensor:
        counts = self.image_count()
        if self.num_classes is not None and counts.numel() != self.num_classes:
            raise ValueError(
                f"FederatedClassWeights: dataset {self.dataset_name!r} has {counts.numel()} classes, the box "
                f"predictor {self.num_classes}"
            )
        return counts.float() ** self.freq_weight_power

    def __repr__(self):
        return (
            f"FederatedClassWeights(dataset_name={self.dataset_name!r}, freq_weight_power={self.freq_weight_power}, "
            f"num_classes={self.num_classes})"
        )
