"""Dataset mappers: :class:`ValidityDatasetMapper` carries each annotation's validity ("ignored" ground truth of a
derived dataset, :func:`ltdet2.data.build_derived_dataset` with ``unselected="ignore"``) into ``Instances``."""

import torch

from detectron2.data import DatasetMapper

__all__ = ["ValidityDatasetMapper"]


class ValidityDatasetMapper(DatasetMapper):
    """Detectron2's :class:`DatasetMapper` (same arguments) that also sets ``instances.gt_valid``: [G] bool,
    aligned with ``gt_boxes`` / ``gt_classes``, False for an annotation with ``"valid": False`` (absent: valid).

    Detectron2 drops crowd annotations and empty boxes while it builds the instances; to stay aligned through
    both without copying its code, an invalid annotation travels through it with its class encoded as
    ``-1 - category_id`` (``gt_classes`` is the one per-annotation field every step keeps) and is decoded after.
    """

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        # dataset_dict is __call__'s deep copy: its annotations can be changed
        for annotation in dataset_dict["annotations"]:
            if not annotation.pop("valid", True):
                annotation["category_id"] = -1 - int(annotation["category_id"])
        super()._transform_annotations(dataset_dict, transforms, image_shape)
        instances = dataset_dict["instances"]
        classes = instances.gt_classes
        valid = classes >= 0
        instances.gt_valid = valid
        instances.gt_classes = torch.where(valid, classes, -1 - classes)
