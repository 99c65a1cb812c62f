"""CopyPasteMapper and add_copy_paste: the jitter, the occlusion rule, the pasted count, flips, errors, and a
real Detectron2 train loader on the tiny LT-Shapes."""

import os

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from pycocotools import mask as mask_util

from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog
from detectron2.structures import BitMasks, BoxMode, PolygonMasks
from detectron2.structures.masks import polygons_to_bitmask

from ltdet2.config.copy_paste import add_copy_paste
from ltdet2.data import CopyPasteMapper
from ltdet2.data.copy_paste import ObjectsImage, masks_to_boxes, paste_objects
from ltdet2.engine import make_phase

from fixtures.models import ROOT, TINY_LT_SHAPES

S = 64  # image size of the synthetic tests


def _rect_polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _image_dict(tmp_path, name, height, width, rects, image_id, colors=None):
    """A synthetic image (grey, each rectangle painted in its colour) and its dict with polygon masks."""
    image = np.full((height, width, 3), 100, dtype=np.uint8)
    annotations = []
    for index, (x0, y0, x1, y1, category) in enumerate(rects):
        color = colors[index] if colors else (20 * index + 40, 255 - 30 * index, 10 * category)
        image[y0:y1, x0:x1] = color
        annotations.append(
            {
                "bbox": [x0, y0, x1, y1],
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": category,
                "segmentation": _rect_polygon(x0, y0, x1, y1),
            }
        )
    file_name = str(tmp_path / f"{name}.png")
    cv2.imwrite(file_name, image)  # BGR on disk, read back in the mapper's format
    return {"file_name": file_name, "height": height, "width": width, "image_id": image_id, "annotations": annotations}


def _objects(masks, classes=None):
    masks = np.asarray(masks, dtype=bool)
    classes = np.arange(len(masks)) if classes is None else np.asarray(classes)
    image = np.zeros((*masks.shape[1:], 3), dtype=np.uint8)
    return ObjectsImage(image, masks_to_boxes(masks), classes.astype(np.int64), masks)


def _rect_masks(*rects, size=S):
    masks = np.zeros((len(rects), size, size), dtype=bool)
    for mask, (x0, y0, x1, y1) in zip(masks, rects):
        mask[y0:y1, x0:x1] = True
    return masks


def test_masks_to_boxes_equals_detectron2_and_zero_for_empty():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 20, 30)) > 0.97
    masks[2] = False
    expected = BitMasks(torch.from_numpy(masks)).get_bounding_boxes().tensor.numpy()
    np.testing.assert_array_equal(masks_to_boxes(masks), expected)
    np.testing.assert_array_equal(masks_to_boxes(masks)[2], [0, 0, 0, 0])
    assert masks_to_boxes(np.zeros((0, 8, 8), dtype=bool)).shape == (0, 4)


def test_paste_fully_covered_dropped_partly_covered_recomputed():
    destination = _objects(
        _rect_masks((10, 10, 20, 20), (10, 40, 50, 60), (50, 2, 60, 8), (1, 1, 4, 4)), classes=[3, 4, 5, 6]
    )
    # covers the first and the last object entirely, the right half of the second, nothing of the third; the
    # last one's empty box [0, 0, 0, 0] is within 10 px of its old one (the official code would keep it)
    source = _objects(_rect_masks((5, 5, 30, 25), (30, 35, 60, 62), (0, 0, 5, 5)), classes=[0, 1, 2])
    source.image[:] = 200
    pasted = paste_objects(destination, source)
    np.testing.assert_array_equal(pasted.classes, [4, 5, 0, 1, 2])  # kept destination objects, then the source's
    np.testing.assert_array_equal(pasted.boxes[0], [10, 40, 30, 60])  # recomputed from the remaining mask
    np.testing.assert_array_equal(pasted.masks[0], _rect_masks((10, 40, 30, 60))[0])
    np.testing.assert_array_equal(pasted.boxes[1], [50, 2, 60, 8])  # untouched
    np.testing.assert_array_equal(pasted.boxes[2:], source.boxes)
    np.testing.assert_array_equal(pasted.masks[2:], source.masks)
    union = source.masks.any(0)
    assert (pasted.image[union] == 200).all() and (pasted.image[~union] == 0).all()


@pytest.mark.parametrize("cut_from, kept", [(20, True), (19, False)])
def test_paste_keeps_an_object_whose_box_moved_at_most_10_px(cut_from, kept):
    """Remaining area 200 / 180 px (under 300): only the box rule can keep it."""
    destination = _objects(_rect_masks((10, 10, 30, 30)))
    source = _objects(_rect_masks((cut_from, 0, 40, 40)))
    pasted = paste_objects(destination, source)
    assert (len(pasted.classes) == 2) is kept
    assert len(paste_objects(destination, source, box_shift_threshold=11).classes) == 2


@pytest.mark.parametrize("extra_pixel, kept", [(False, False), (True, True)])
def test_paste_keeps_an_object_whose_remaining_mask_is_over_300_px(extra_pixel, kept):
    """The box moves by 25 px: only the area rule (> 300 px) can keep it."""
    masks = _rect_masks((10, 10, 50, 30))
    masks[0, 30, 10] = extra_pixel
    destination = _objects(masks)
    pasted = paste_objects(destination, _objects(_rect_masks((25, 0, 64, 64))))
    assert (len(pasted.classes) == 2) is kept
    if kept:
        np.testing.assert_array_equal(pasted.boxes[0], [10, 10, 25, 31])
        assert pasted.masks[0].sum() == 301
    assert len(paste_objects(destination, _objects(_rect_masks((25, 0, 64, 64))), mask_area_threshold=500).classes) == 1


def test_paste_nothing_returns_the_destination():
    destination = _objects(_rect_masks((10, 10, 30, 30)))
    empty = _objects(np.zeros((0, S, S), dtype=bool))
    assert paste_objects(destination, empty) is destination


def _mapper(dicts, **options):
    options = {"image_size": S, "image_format": "BGR", **options}
    return CopyPasteMapper(dataset_dicts=dicts, **options)


def test_pasted_count_is_uniform_in_0_to_n_without_replacement(tmp_path):
    """The only other image is the source: its 4 objects (inside the area any crop keeps) are pasted onto an
    image without objects, 0 to 4 of them, each count about equally often, distinct objects."""
    destination = _image_dict(tmp_path, "empty", S, S, [], image_id=0)
    source = _image_dict(tmp_path, "source", S, S, [(20 + 6 * c, 22, 24 + 6 * c, 30, c) for c in range(4)], image_id=1)
    mapper = _mapper([destination, source])
    counts = []
    for seed in range(250):
        np.random.seed(seed)
        classes = mapper(destination)["instances"].gt_classes.tolist()
        assert len(set(classes)) == len(classes)
        counts.append(len(classes))
    frequencies = np.bincount(counts, minlength=5) / len(counts)
    assert len(frequencies) == 5 and (np.abs(frequencies - 0.2) < 0.08).all(), frequencies


def test_same_seed_same_output_and_source_is_another_image(tmp_path):
    dicts = [_image_dict(tmp_path, f"im{i}", S, S, [(8 + 4 * i, 10, 30 + 4 * i, 40, i)], image_id=i) for i in range(3)]
    mapper = _mapper(dicts)
    outputs = []
    for _ in range(2):
        np.random.seed(7)
        outputs.append(mapper(dicts[0]))
    assert torch.equal(outputs[0]["image"], outputs[1]["image"])
    assert torch.equal(outputs[0]["instances"].gt_boxes.tensor, outputs[1]["instances"].gt_boxes.tensor)

    loaded = []
    load = mapper.load
    mapper.load = lambda d: loaded.append(d["image_id"]) or load(d)
    for seed in range(60):
        np.random.seed(seed)
        mapper(dicts[0])
    destinations, sources = loaded[0::2], loaded[1::2]
    assert set(destinations) == {0} and set(sources) == {1, 2}  # never from itself
    mapper.exclude_same_image = False  # official: any image, the destination included
    loaded.clear()
    for seed in range(60):
        np.random.seed(seed)
        mapper(dicts[0])
    assert set(loaded[1::2]) == {0, 1, 2}


def test_both_images_get_the_same_resize_rule(tmp_path):
    """A fixed ratio 0.5 without flip: the destination (64x64) and a source of another shape (32x128) both
    have their long side scaled to 0.5 * 64 = 32, i.e. by 0.5 and 0.25."""
    destination = _image_dict(tmp_path, "dst", 64, 64, [(8, 8, 24, 40, 0)], image_id=0)
    source = _image_dict(tmp_path, "src", 32, 128, [(64, 4, 96, 28, 1)], image_id=1)
    mapper = _mapper([destination, source], scale_range=(0.5, 0.5), flip_prob=0.0)
    expected = {0: [4, 4, 12, 20], 1: [16, 1, 24, 7]}
    seen = set()
    for seed in range(10):
        np.random.seed(seed)
        instances = mapper(destination)["instances"]
        for box, category in zip(instances.gt_boxes.tensor.tolist(), instances.gt_classes.tolist()):
            assert box == expected[category]
            seen.add(category)
    assert seen == {0, 1}


def test_jitter_ratio_keeps_aspect_and_pads(tmp_path):
    """Ratio r in [0.8, 1.25]: a 48x64 image is scaled by S * r / 64 on both axes, the part beyond the
    resized image is padding, and a crop only happens where the resized image exceeds S."""
    image = _image_dict(tmp_path, "landscape", 48, 64, [(16, 12, 48, 36, 0)], image_id=0)
    mapper = _mapper([image], flip_prob=0.0, pad_value=7)
    scales = []
    for seed in range(30):
        np.random.seed(seed)
        loaded = mapper.load(image)
        assert loaded.image.shape == (S, S, 3)
        x0, y0, x1, y1 = loaded.boxes[0]
        scale_x, scale_y = (x1 - x0) / 32, (y1 - y0) / 24
        assert abs(scale_x - scale_y) < 0.1
        scales.append(scale_x)
        resized_h = round(48 * scale_x)
        if resized_h < S - 2:
            assert (loaded.image[resized_h + 2 :] == 7).all()
    assert 0.78 < min(scales) < 0.9 and 1.15 < max(scales) < 1.27


def test_polygons_rasterized_as_detectron2_inside_and_across_the_crop(tmp_path):
    """Masks equal Detectron2's rasterization of the scaled polygon on the whole resized image, cropped."""
    image = _image_dict(tmp_path, "big", 64, 64, [(0, 0, 10, 10, 0)], image_id=0)
    triangle = [5.3, 60.2, 61.7, 3.1, 63.0, 63.0]
    image["annotations"] = [dict(image["annotations"][0], segmentation=[triangle])]
    mapper = _mapper([image], flip_prob=0.0, scale_range=(1.25, 1.25))
    for seed in range(5):
        np.random.seed(seed)
        geometry = mapper._draw_geometry(64, 64)
        np.random.seed(seed)
        loaded = mapper.load(image)
        full = polygons_to_bitmask([np.array(triangle) * 1.25], 80, 80)
        expected = full[geometry.y0 : geometry.y0 + S, geometry.x0 : geometry.x0 + S]
        np.testing.assert_array_equal(loaded.masks[0], expected)


def test_rle_and_polygon_masks_agree(tmp_path):
    image = _image_dict(tmp_path, "rle", S, S, [(10, 20, 40, 30, 2)], image_id=0)
    as_rle = dict(image, annotations=[dict(image["annotations"][0])])
    mask = np.zeros((S, S), dtype=np.uint8, order="F")
    mask[20:30, 10:40] = 1
    as_rle["annotations"][0]["segmentation"] = mask_util.encode(mask)
    mapper = _mapper([image], scale_range=(1.0, 1.0), flip_prob=0.0)
    np.testing.assert_array_equal(mapper.load(image).masks, mapper.load(as_rle).masks)
    np.testing.assert_array_equal(mapper.load(image).masks[0], mask.astype(bool))


def test_flip_is_consistent_between_image_boxes_and_masks(tmp_path):
    """At ratio 1 the image is its own size: the painted rectangle, its mask and its box flip together."""
    image = _image_dict(tmp_path, "flip", 40, S, [(5, 8, 20, 30, 0)], image_id=0, colors=[(0, 0, 255)])
    kept = _mapper([image], scale_range=(1.0, 1.0), flip_prob=0.0).load(image)
    flipped = _mapper([image], scale_range=(1.0, 1.0), flip_prob=1.0).load(image)
    np.testing.assert_array_equal(flipped.boxes, [[S - 20, 8, S - 5, 30]])
    np.testing.assert_array_equal(flipped.masks[:, :40], kept.masks[:, :40, ::-1])
    np.testing.assert_array_equal(flipped.image[:40], kept.image[:40, ::-1])
    red = (flipped.image == (0, 0, 255)).all(axis=2)  # BGR
    np.testing.assert_array_equal(red, flipped.masks[0])


def test_polygon_mask_format_traces_the_bitmasks(tmp_path):
    image = _image_dict(tmp_path, "poly", S, S, [(10, 20, 40, 30, 2)], image_id=0)
    other = _image_dict(tmp_path, "other", S, S, [(30, 10, 50, 50, 1)], image_id=1)
    mapper = _mapper([image, other], instance_mask_format="polygon", scale_range=(1.0, 1.0), flip_prob=0.0)
    for seed in range(6):
        np.random.seed(seed)
        instances = mapper(image)["instances"]
        assert isinstance(instances.gt_masks, PolygonMasks)
        for polygons, box in zip(instances.gt_masks.polygons, instances.gt_boxes.tensor.tolist()):
            traced = polygons_to_bitmask(polygons, S, S)
            np.testing.assert_allclose(masks_to_boxes(traced[None])[0], box, atol=1)


def test_dataset_without_masks_is_a_clear_error(tmp_path):
    image = _image_dict(tmp_path, "boxes", S, S, [(10, 20, 40, 30, 2)], image_id=0)
    del image["annotations"][0]["segmentation"]
    with pytest.raises(ValueError, match=r"dataset 'boxes_only'.*1 annotations without a 'segmentation'.*boxes\.png"):
        _mapper([image], dataset_name="boxes_only")
    # through the config helper: the error names the dataset of dataloader.train
    DatasetCatalog.register("copy_paste_boxes_only", lambda: [image])
    try:
        cfg = LazyConfig.load(os.path.join(ROOT, "configs", "data", "lt_shapes.py"))
        cfg.dataloader.train.dataset.names = "copy_paste_boxes_only"
        add_copy_paste(cfg.dataloader, image_size=S)
        with pytest.raises(ValueError, match="dataset 'copy_paste_boxes_only'"):
            instantiate(cfg.dataloader.train.mapper)
    finally:
        DatasetCatalog.remove("copy_paste_boxes_only")


def test_config_helper_keeps_the_old_mapper_settings_and_follows_dataset_overrides(tiny_dataset):
    """On the LT-Shapes defaults and the LVIS v1 data config; a phase made with make_phase and a dataset
    override reaches the mapper's sources."""
    lvis = LazyConfig.load(os.path.join(ROOT, "configs", "data", "lvis_v1.py"))
    add_copy_paste(lvis.dataloader, image_size=1280)
    mapper = lvis.dataloader.train.mapper
    assert mapper.image_size == 1280 and list(mapper.scale_range) == [0.8, 1.25]
    assert mapper.image_format == "BGR" and mapper.use_instance_mask is True
    assert OmegaConf.to_container(mapper, resolve=False)["dataset_dicts"] == "${..dataset}"

    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "lt_shapes_defaults.py"))
    add_copy_paste(cfg.dataloader, image_size=128, mask_area_threshold=200)
    phase = OmegaConf.create(make_phase(cfg))
    LazyConfig.apply_overrides(phase, [f"dataloader.train.dataset.names={tiny_dataset[0]}"])
    mapper = instantiate(phase.dataloader.train.mapper)
    assert isinstance(mapper, CopyPasteMapper) and mapper.mask_area_threshold == 200
    assert len(mapper.sources) == len(instantiate(phase.dataloader.train.dataset)) <= TINY_LT_SHAPES.num_train


def test_train_loader_on_tiny_lt_shapes(tiny_dataset):
    """A real Detectron2 train loader: every instance's box is its mask's extent, masks are non-empty."""
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "data", "lt_shapes.py"))
    cfg.dataloader.train.dataset.names = tiny_dataset[0]
    cfg.dataloader.train.num_workers = 0
    cfg.dataloader.train.total_batch_size = 4
    add_copy_paste(cfg.dataloader, image_size=TINY_LT_SHAPES.image_size)
    np.random.seed(0)
    loader = iter(instantiate(cfg.dataloader.train))
    num_instances = 0
    for _ in range(3):
        for item in next(loader):
            assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.uint8
            instances = item["instances"]
            assert isinstance(instances.gt_masks, BitMasks) and instances.image_size == (64, 64)
            masks = instances.gt_masks.tensor
            assert masks.flatten(1).any(1).all()
            assert torch.equal(instances.gt_masks.get_bounding_boxes().tensor, instances.gt_boxes.tensor)
            assert ((instances.gt_classes >= 0) & (instances.gt_classes < TINY_LT_SHAPES.num_classes)).all()
            num_instances += len(instances)
    assert num_instances > 12
