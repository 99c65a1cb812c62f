# LT-Shapes, the embedded long-tailed dataset (generated on first use; see ltdet2.data.lt_shapes):
# 128x128 images used at their native size, horizontal flips, batch 8 for a 2-core CPU.
from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)

import ltdet2.data  # noqa: F401  registers lt_shapes_train / lt_shapes_val
from ltdet2.evaluation import LTLVISEvaluator

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="lt_shapes_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[L(T.RandomFlip)(horizontal=True)],
        image_format="BGR",
        use_instance_mask=True,
    ),
    total_batch_size=8,
    num_workers=1,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="lt_shapes_val", filter_empty=False),
    mapper=L(DatasetMapper)(is_train=False, augmentations=[], image_format="BGR"),
    num_workers=1,
)

dataloader.evaluator = L(LTLVISEvaluator)(
    dataset_name="${..test.dataset.names}",
    max_dets_per_image=300,
)
