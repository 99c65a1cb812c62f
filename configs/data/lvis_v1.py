# LVIS v1 with Detectron2's own registrations (images and json under $DETECTRON2_DATASETS/lvis,
# coco): multi-scale training at short edge 640-800, batch 16, evaluation on val with 300 detections.
# Set DETECTRON2_DATASETS before the run starts: Detectron2 reads it when detectron2.data is imported
# (unset: ./datasets, relative to the folder the run starts in). A json file or image folder that is
# not there is named, with the dataset and the variable, before the model is built.
from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)

from ltdet2.evaluation import LTLVISEvaluator

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="lvis_v1_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length=(640, 672, 704, 736, 768, 800),
                sample_style="choice",
                max_size=1333,
            ),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
        use_instance_mask=True,
    ),
    total_batch_size=16,
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="lvis_v1_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="BGR",
    ),
    num_workers=4,
)

dataloader.evaluator = L(LTLVISEvaluator)(
    dataset_name="${..test.dataset.names}",
    max_dets_per_image=300,
)

NUM_CLASSES = 1203
NUM_TRAIN_IMAGES = 100170
