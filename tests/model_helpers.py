"""Small R-CNN models and seeded batches shared by the tests of the long-tail heads and methods."""
import copy
import os

import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from ltdet2.data import LTShapesSpec
from ltdet2.modeling import LongTailOutputLayers, LongTailROIHeads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 6


def small_model_cfg(mask=False):
    name = "mask_rcnn_r18_fpn_small.py" if mask else "faster_rcnn_r18_fpn_small.py"
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "models", name)).model
    cfg.roi_heads.num_classes = NUM_CLASSES
    cfg.roi_heads.batch_size_per_image = 32
    return cfg


def long_tail_cfg(cfg, **roi_head_options):
    cfg = copy.deepcopy(cfg)
    cfg.roi_heads._target_ = LongTailROIHeads
    cfg.roi_heads.box_predictor._target_ = LongTailOutputLayers
    for key, value in roi_head_options.items():
        cfg.roi_heads[key] = value
    return cfg


def make_batch(num_images=2, size=96, seed=0, mask=False, boxes_per_image=3, empty_images=()):
    """Random images with ``boxes_per_image`` random boxes of random classes (and box masks); the images
    whose index is in ``empty_images`` have no annotation (empty ``Instances``, as Detectron2's mapper
    makes them). The random draws do not depend on ``empty_images``."""
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for index in range(num_images):
        image = torch.randint(0, 255, (3, size, size), generator=generator, dtype=torch.uint8)
        xy = torch.rand(boxes_per_image, 2, generator=generator) * size * 0.5
        wh = 12 + torch.rand(boxes_per_image, 2, generator=generator) * size * 0.4
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)
        classes = torch.randint(0, NUM_CLASSES, (boxes_per_image,), generator=generator)
        if index in empty_images:
            boxes, classes = boxes[:0], classes[:0]
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(boxes)
        instances.gt_classes = classes
        if mask:
            masks = torch.zeros(len(boxes), size, size, dtype=torch.bool)
            for i, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
                masks[i, y0:y1, x0:x1] = True
            instances.gt_masks = BitMasks(masks)
        batch.append({"image": image, "instances": instances, "height": size, "width": size})
    return batch


def paired_models(mask=False, **roi_head_options):
    """A stock model and an ltdet2 one (LongTail heads with ``roi_head_options``), same weights."""
    stock_cfg = small_model_cfg(mask)
    torch.manual_seed(0)
    stock = instantiate(stock_cfg)
    ours = instantiate(long_tail_cfg(stock_cfg, **roi_head_options))
    missing, unexpected = ours.load_state_dict(stock.state_dict(), strict=False)
    assert not unexpected
    return stock, ours


def train_losses(model, batch, seed=1):
    model.train()
    torch.manual_seed(seed)
    with EventStorage(0):
        return model(batch)


# A tiny LT-Shapes for end-to-end runs (registered once per test session by conftest.py).
TINY_LT_SHAPES = LTShapesSpec(num_train=60, num_val=20, image_size=64, shapes=("circle", "star"),
                              colors=("red", "blue"), fills=("solid", "striped"), group_fractions=(0.5, 0.5, 0.0))


def tiny_run_overrides(tiny_dataset, output_dir):
    """Overrides that point a project at the tiny LT-Shapes, on the CPU, without loader workers."""
    train_name, val_name = tiny_dataset
    return [
        f"train.output_dir={output_dir}",
        f"dataloader.train.dataset.names={train_name}",
        f"dataloader.test.dataset.names={val_name}",
        f"model.roi_heads.num_classes={TINY_LT_SHAPES.num_classes}",
        "train.device=cpu",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
    ]
