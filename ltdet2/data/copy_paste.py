"""Simple copy-paste (Ghiasi et al., CVPR 2021) as a Detectron2 training dataset mapper, as BACL uses it.

Each training image and a uniformly random other training image (the *source*) are loaded with their
instance masks and go through the same large-scale-jitter-lite rule (BACL's official pipeline,
``mmdet/datasets/pipelines/transforms.py`` and its ``bacl_representation_*`` configs):

1. resize keeping the aspect ratio so that the long side is ``image_size * r``, ``r ~ U(scale_range)``;
2. random crop to at most ``image_size x image_size`` (independent integer offsets), boxes recomputed
   from the cropped masks; objects whose box is under ``min_box_size`` (an empty mask) are dropped;
3. horizontal flip with probability ``flip_prob``;
4. pad (bottom, right) to ``image_size x image_size`` with ``pad_value``.

Then a random subset of the source's objects, ``randint(0, min(n_src + 1, max_num_pasted))`` of them
(0 to n_src inclusive below the cap) chosen without replacement, is pasted with its masks onto the
destination (:func:`paste_objects`): the destination masks are cut by the union of the pasted masks and
their boxes recomputed from what remains; a destination object is kept if its box moved by at most
``box_shift_threshold`` px on every coordinate or its remaining mask covers more than
``mask_area_threshold`` px (official: 10 and 300), and dropped otherwise.

Randomness comes from numpy's global RNG, like Detectron2's augmentations (its loader seeds each worker).
Boxes are XYXY in pixels, from a mask: ``[min x, min y, max x + 1, max y + 1]`` (Detectron2's
``BitMasks.get_bounding_boxes`` and mmdet's ``BitmapMasks.get_bboxes``).
"""

import copy
import logging
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_util

from detectron2.data import detection_utils as utils
from detectron2.data.common import DatasetFromList
from detectron2.data.transforms import ResizeTransform
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks

__all__ = ["CopyPasteMapper", "ObjectsImage", "masks_to_boxes", "paste_objects"]

logger = logging.getLogger(__name__)

MASK_FORMATS = ("bitmask", "polygon")


class ObjectsImage(NamedTuple):
    """One image with its objects, as the copy-paste steps hand them on.

    image: [H, W, C] uint8 (the mapper's image format); boxes: [K, 4] float32 XYXY pixels;
    classes: [K] int64 contiguous class ids (background is not an object); masks: [K, H, W] bool."""

    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    masks: np.ndarray


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """[K, 4] float32 XYXY boxes of [K, H, W] bool masks: ``[min x, min y, max x + 1, max y + 1]``;
    all zeros for an empty mask (as mmdet's ``get_bboxes``)."""
    k, h, w = masks.shape
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # [K, H], [K, W]
    boxes = np.stack(
        [cols.argmax(1), rows.argmax(1), w - cols[:, ::-1].argmax(1), h - rows[:, ::-1].argmax(1)], axis=1
    ).astype(np.float32)
    boxes[~rows.any(1)] = 0
    return boxes.reshape(k, 4)


def paste_objects(
    destination: ObjectsImage,
    source: ObjectsImage,
    *,
    box_shift_threshold: float = 10,
    mask_area_threshold: float = 300,
) -> ObjectsImage:
    """Pastes all of ``source``'s objects (already chosen) onto ``destination`` (same image size).

    The destination masks lose the union of the source masks and their boxes are recomputed from what
    remains; a destination object is kept if every coordinate of its box moved by at most
    ``box_shift_threshold`` px, or its remaining mask area is above ``mask_area_threshold`` px (official
    ``bbox_occluded_thr`` / ``mask_occluded_thr``), and never when nothing of it remains (the official
    code could keep a fully covered object whose box lies within the shift threshold of the origin).
    Returns the kept destination objects followed by the source objects; with no source object the
    destination unchanged."""
    if destination.image.shape != source.image.shape:
        raise ValueError(
            f"paste_objects: images of different shapes {destination.image.shape} and {source.image.shape}"
        )
    if len(source.classes) == 0:
        return destination
    union = source.masks.any(axis=0)  # [H, W]
    remaining = destination.masks & ~union
    boxes = masks_to_boxes(remaining)
    area = remaining.sum(axis=(1, 2))
    unmoved = (np.abs(boxes - destination.boxes) <= box_shift_threshold).all(axis=1)
    keep = (area > 0) & (unmoved | (area > mask_area_threshold))
    return ObjectsImage(
        image=np.where(union[..., None], source.image, destination.image),
        boxes=np.concatenate([boxes[keep], source.boxes]),
        classes=np.concatenate([destination.classes[keep], source.classes]),
        masks=np.concatenate([remaining[keep], source.masks]),
    )


class _Geometry(NamedTuple):
    """One draw of the jitter: resize (height, width) -> crop at (y0, x0) of (crop_h, crop_w) -> flip."""

    height: int
    width: int
    resized_h: int
    resized_w: int
    y0: int
    x0: int
    crop_h: int
    crop_w: int
    flip: bool


class CopyPasteMapper:
    """Detectron2 training mapper with simple copy-paste and large-scale-jitter-lite (module docstring).

    Output: Detectron2's mapper format, the dataset dict with ``image`` ([C, S, S] uint8 tensor in
    ``image_format``, S = ``image_size``) and ``instances`` (``gt_boxes``, ``gt_classes`` and, with
    ``use_instance_mask``, ``gt_masks`` as ``BitMasks`` or, for ``instance_mask_format="polygon"``,
    ``PolygonMasks`` traced from the cut masks' outer contours: polygons cannot hold the holes a pasted
    object can cut, so bitmasks are the exact format). ``annotations`` is removed. Training only.
    """

    def __init__(
        self,
        *,
        dataset_dicts,
        image_size: int,
        scale_range=(0.8, 1.25),
        image_format: str = "BGR",
        use_instance_mask: bool = True,
        instance_mask_format: str = "bitmask",
        flip_prob: float = 0.5,
        pad_value: float = 0.0,
        min_box_size: float = 0.01,
        max_num_pasted: int = 100,
        box_shift_threshold: float = 10,
        mask_area_threshold: float = 300,
        exclude_same_image: bool = True,
        dataset_name=None,
    ):
        """
        Args:
            dataset_dicts: the training dataset dicts (Detectron2 format; every annotation needs a
                ``segmentation``), from which sources are drawn; in a LazyConfig ``"${..dataset}"``.
            image_size: S, the jitter's target and the output size (official: 1280).
            scale_range: range of the jitter ratio r (official: (0.8, 1.25)).
            image_format, use_instance_mask, instance_mask_format: as Detectron2's ``DatasetMapper``.
            flip_prob: probability of a horizontal flip of each image. pad_value: padding pixel value
                (official 0; Detectron2's ``FixedSizeCrop`` pads with 128).
            min_box_size: objects whose box is narrower or lower are dropped after the crop
                (official 0.01 px: empty masks).
            max_num_pasted: cap on the pasted count (official 100).
            box_shift_threshold, mask_area_threshold: the occlusion rule of :func:`paste_objects`.
            exclude_same_image: draw the source among the other images; False draws among all images,
                the destination included (official).
            dataset_name: name(s) of the training dataset, for error messages.
        """
        if instance_mask_format not in MASK_FORMATS:
            raise ValueError(f"CopyPasteMapper: instance_mask_format must be one of {MASK_FORMATS}")
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"CopyPasteMapper: scale_range must be 0 < low <= high, got {scale_range}")
        dataset_dicts = list(dataset_dicts)
        what = f"dataset {dataset_name!r}" if dataset_name is not None else "the training dataset"
        if not dataset_dicts:
            raise ValueError(f"CopyPasteMapper: {what} has no image to paste from")
        _check_masks(dataset_dicts, what)
        self.sources = DatasetFromList(dataset_dicts, copy=True, serialize=True)
        self.image_size = int(image_size)
        self.scale_range = (float(low), float(high))
        self.image_format = image_format
        self.use_instance_mask = use_instance_mask
        self.instance_mask_format = instance_mask_format
        self.flip_prob = flip_prob
        self.pad_value = pad_value
        self.min_box_size = min_box_size
        self.max_num_pasted = max_num_pasted
        self.box_shift_threshold = box_shift_threshold
        self.mask_area_threshold = mask_area_threshold
        self.exclude_same_image = exclude_same_image
        logger.info(
            f"CopyPasteMapper: {len(self.sources)} source images, size {self.image_size}, scale {self.scale_range}"
        )

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        destination = self.load(dataset_dict)
        source = self.load(self._draw_source(dataset_dict))
        num_pasted = np.random.randint(0, min(len(source.classes) + 1, self.max_num_pasted))
        chosen = np.random.choice(len(source.classes), size=num_pasted, replace=False)
        source = ObjectsImage(source.image, source.boxes[chosen], source.classes[chosen], source.masks[chosen])
        pasted = paste_objects(
            destination,
            source,
            box_shift_threshold=self.box_shift_threshold,
            mask_area_threshold=self.mask_area_threshold,
        )
        dataset_dict.pop("annotations", None)
        dataset_dict.pop("sem_seg_file_name", None)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(pasted.image.transpose(2, 0, 1)))
        dataset_dict["instances"] = self._instances(pasted)
        return dataset_dict

    def load(self, dataset_dict) -> ObjectsImage:
        """Reads the image of ``dataset_dict`` and its non-crowd objects, jittered (steps 1-4)."""
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        annotations = [a for a in dataset_dict.get("annotations", []) if a.get("iscrowd", 0) == 0]
        geometry = self._draw_geometry(*image.shape[:2])
        image = self._transform_image(image, geometry)
        masks = self._transform_masks(annotations, geometry)
        boxes = masks_to_boxes(masks)
        classes = np.array([a["category_id"] for a in annotations], dtype=np.int64)
        large = (boxes[:, 2] - boxes[:, 0] >= self.min_box_size) & (boxes[:, 3] - boxes[:, 1] >= self.min_box_size)
        if large.all():  # the usual case: no copy of the masks
            return ObjectsImage(image, boxes, classes, masks)
        return ObjectsImage(image, boxes[large], classes[large], masks[large])

    def _draw_source(self, dataset_dict):
        """A uniformly random training dict (another image's, with ``exclude_same_image``)."""
        if not self.exclude_same_image or len(self.sources) == 1:
            return self.sources[np.random.randint(len(self.sources))]
        while True:  # rejection: uniform over the other images, one draw but with probability 1/N
            source = self.sources[np.random.randint(len(self.sources))]
            if _image_key(source) != _image_key(dataset_dict):
                return source

    def _draw_geometry(self, height, width) -> _Geometry:
        size = self.image_size
        scale = size * np.random.uniform(*self.scale_range) / max(height, width)
        resized_h, resized_w = int(round(height * scale)), int(round(width * scale))
        crop_h, crop_w = min(resized_h, size), min(resized_w, size)
        y0 = np.random.randint(0, resized_h - crop_h + 1)
        x0 = np.random.randint(0, resized_w - crop_w + 1)
        flip = bool(np.random.rand() < self.flip_prob)
        return _Geometry(height, width, resized_h, resized_w, y0, x0, crop_h, crop_w, flip)

    def _transform_image(self, image, g: _Geometry):
        resized = ResizeTransform(g.height, g.width, g.resized_h, g.resized_w).apply_image(image)
        crop = resized[g.y0 : g.y0 + g.crop_h, g.x0 : g.x0 + g.crop_w]
        if g.flip:
            crop = crop[:, ::-1]
        canvas = np.full((self.image_size, self.image_size, *image.shape[2:]), self.pad_value, dtype=image.dtype)
        canvas[: g.crop_h, : g.crop_w] = crop
        return canvas

    def _transform_masks(self, annotations, g: _Geometry):
        """[K, S, S] bool masks of ``annotations`` after the jitter: polygons are scaled and rasterized
        in the crop directly; RLEs and arrays are decoded, resized (nearest) and cropped."""
        size = self.image_size
        masks = np.zeros((len(annotations), size, size), dtype=bool)
        dense = []
        for index, annotation in enumerate(annotations):  # pycocotools rasterizes one object at a time
            segmentation = annotation["segmentation"]
            if isinstance(segmentation, list):
                _rasterize_polygons(segmentation, g, masks[index])
            else:
                dense.append(index)
        if dense:
            decoded = np.stack([_decode(annotations[i]["segmentation"]) for i in dense])  # [D, h, w]
            resized = F.interpolate(torch.from_numpy(decoded)[None], size=(g.resized_h, g.resized_w), mode="nearest")[
                0
            ].numpy()
            masks[dense, : g.crop_h, : g.crop_w] = resized[:, g.y0 : g.y0 + g.crop_h, g.x0 : g.x0 + g.crop_w] > 0
        if g.flip:
            masks[:, : g.crop_h, : g.crop_w] = masks[:, : g.crop_h, : g.crop_w][:, :, ::-1]
        return masks

    def _instances(self, objects: ObjectsImage) -> Instances:
        instances = Instances((self.image_size, self.image_size))
        instances.gt_boxes = Boxes(torch.from_numpy(objects.boxes).reshape(-1, 4))
        instances.gt_classes = torch.from_numpy(objects.classes)
        if self.use_instance_mask:
            if self.instance_mask_format == "bitmask":
                instances.gt_masks = BitMasks(torch.from_numpy(objects.masks))
            else:
                instances.gt_masks = PolygonMasks([_mask_to_polygons(mask) for mask in objects.masks])
        return instances


def _image_key(dataset_dict):
    return dataset_dict.get("image_id", dataset_dict["file_name"])


def _check_masks(dataset_dicts, what):
    """Every annotation has a ``segmentation``: copy-paste cuts and pastes masks."""
    missing = [
        (d.get("file_name"), index)
        for d in dataset_dicts
        for index, a in enumerate(d.get("annotations", ()))
        if a.get("segmentation") is None
    ]
    if missing:
        file_name, index = missing[0]
        raise ValueError(
            f"CopyPasteMapper: {what} has {len(missing)} annotations without a 'segmentation' (the first: "
            f"annotation {index} of {file_name}). Copy-paste needs instance masks (polygons or RLE): use a "
            f"dataset with masks, or drop copy-paste for this one"
        )


def _rasterize_polygons(polygons, g: _Geometry, out):
    """Rasterizes one object's polygons (original pixel coordinates) into ``out`` ([S, S] bool, the
    crop at the top left). The polygons are scaled as the image, then rasterized on their own bounding
    box (pycocotools distorts polygons that leave its canvas) and the part inside the crop copied."""
    scale = np.array([g.resized_w / g.width, g.resized_h / g.height])
    points = [np.asarray(p, dtype=np.float64).reshape(-1, 2) * scale for p in polygons]
    if not points:
        return
    stacked = np.concatenate(points)
    x_min, y_min = np.floor(stacked.min(0)).astype(int)
    x_max, y_max = np.ceil(stacked.max(0)).astype(int) + 1
    x_lo, y_lo = max(x_min, g.x0), max(y_min, g.y0)
    x_hi, y_hi = min(x_max, g.x0 + g.crop_w), min(y_max, g.y0 + g.crop_h)
    if x_lo >= x_hi or y_lo >= y_hi:
        return
    local = [(p - (x_min, y_min)).reshape(-1).tolist() for p in points]
    rle = mask_util.merge(mask_util.frPyObjects(local, int(y_max - y_min), int(x_max - x_min)))
    mask = mask_util.decode(rle)
    out[y_lo - g.y0 : y_hi - g.y0, x_lo - g.x0 : x_hi - g.x0] = mask[
        y_lo - y_min : y_hi - y_min, x_lo - x_min : x_hi - x_min
    ]


def _decode(segmentation):
    if isinstance(segmentation, dict):
        return mask_util.decode(segmentation).astype(np.uint8)
    array = np.asarray(segmentation)
    if array.ndim != 2:
        raise ValueError(
            f"CopyPasteMapper: a segmentation must be polygons, an RLE or an [H, W] array, got {array.shape}"
        )
    return array.astype(np.uint8)


def _mask_to_polygons(mask):
    """Outer contours of a [H, W] bool mask as flat float polygons of >= 3 points (holes are filled)."""
    import cv2  # lazy: OpenCV is optional (not one of ltdet2's dependencies), needed only for polygon masks

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polygons = [c.reshape(-1).astype(np.float64) + 0.5 for c in contours if len(c) >= 3]
    return polygons or [np.zeros(6)]
