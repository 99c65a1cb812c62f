"""Exemplar scoring (issue #12): every annotation scored once by the box head on its ground-truth box, equal to a
direct per-annotation computation, for both score modes and both class scorings; score tables refused when they
come from another dataset or model."""

import os

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import detectron2.data.transforms as T
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.structures import Boxes, BoxMode

from ltdet2.engine.exemplar_scoring import (
    ScoreTableMismatch,
    load_score_table,
    save_score_table,
    score_annotations,
)
from ltdet2.modeling.losses.sigmoid_background import sigmoid_background_probs

from fixtures.models import TINY_LT_SHAPES, long_tail_cfg, small_model_cfg

RESIZE = 96  # the tiny images are 64 x 64: boxes are scaled by 1.5


def tiny_model(**roi_head_options):
    cfg = small_model_cfg()
    cfg.roi_heads.num_classes = TINY_LT_SHAPES.num_classes
    if roi_head_options:
        cfg = long_tail_cfg(cfg)
        for key, value in roi_head_options.items():
            cfg.roi_heads.box_predictor[key] = value
    torch.manual_seed(0)
    return instantiate(cfg).eval()


def direct_probabilities(model, dataset_name, probabilities):
    """{annotation id: (image id, json category id, [C+1] probabilities, contiguous class)}: one image at a time,
    the box head on one ground-truth box at a time."""
    metadata = MetadataCatalog.get(dataset_name)
    json_id = {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}
    rows = {}
    heads = model.roi_heads
    with torch.no_grad():
        for record in DatasetCatalog.get(dataset_name):
            image = utils.read_image(record["file_name"], format="BGR")
            resize = T.ResizeShortestEdge(RESIZE, 1000).get_transform(image)
            image = resize.apply_image(image)
            scale = image.shape[0] / record["height"]
            images = model.preprocess_image([{"image": torch.as_tensor(image.transpose(2, 0, 1).copy())}])
            features = model.backbone(images.tensor)
            for annotation in record["annotations"]:
                box = BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYXY_ABS)
                box = torch.tensor([box], dtype=torch.float32) * scale
                pooled = heads.box_pooler([features[f] for f in heads.box_in_features], [Boxes(box)])
                logits, _ = heads.box_predictor(heads.box_head(pooled))
                rows[annotation["id"]] = (
                    record["image_id"],
                    json_id[annotation["category_id"]],
                    probabilities(logits)[0],
                    annotation["category_id"],
                )
    return rows


@pytest.mark.parametrize(
    "options,probabilities",
    [({}, lambda z: F.softmax(z, dim=-1)), ({"class_scoring": "sigmoid_background"}, sigmoid_background_probs)],
    ids=["softmax", "sigmoid_background"],
)
def test_scores_equal_a_direct_per_annotation_computation(tiny_dataset, options, probabilities):
    train_name, _ = tiny_dataset
    model = tiny_model(**options)
    expected = direct_probabilities(model, train_name, probabilities)
    assert len(expected) == sum(len(r["annotations"]) for r in DatasetCatalog.get(train_name)) > 20
    for score in ("max_foreground", "ground_truth"):
        table = score_annotations(
            model, train_name, mapper_augmentations=[T.ResizeShortestEdge(RESIZE, 1000)], score=score, batch_size=4
        )
        assert sorted(table["annotation_id"].tolist()) == sorted(expected)  # every annotation, once
        got = {
            a: (i, c, s)
            for a, i, c, s in zip(*(table[k].tolist() for k in ("annotation_id", "image_id", "category_id", "score")))
        }
        for annotation_id, (image_id, category_id, probs, label) in expected.items():
            value = probs[:-1].max() if score == "max_foreground" else probs[label]
            assert got[annotation_id] == (image_id, category_id, pytest.approx(float(value), abs=1e-5)), annotation_id
        assert not model.training


def test_score_table_from_another_dataset_or_checkpoint_is_refused(tmp_path):
    table = {
        "annotation_id": np.array([3, 1], dtype=np.int64),
        "image_id": np.array([7, 7], dtype=np.int64),
        "category_id": np.array([2, 5], dtype=np.int64),
        "score": np.array([0.25, 0.75], dtype=np.float32),
    }
    identity = {
        "dataset": "a_train",
        "dataset_json": {"path": "/data/a.json", "size": 10, "mtime": 1.0},
        "checkpoint": {"path": "/run/pretrain/model_final.pth", "size": 5, "mtime": 2.0},
        "score": "max_foreground",
    }
    path = str(tmp_path / "scores.npz")
    save_score_table(path, table, identity)
    loaded = load_score_table(path, expect=identity)
    for key in table:
        np.testing.assert_array_equal(loaded[key], table[key])
    with pytest.raises(
        ScoreTableMismatch, match=r"scores.npz comes from another dataset \(dataset: file has 'a_train'"
    ):
        load_score_table(path, expect={**identity, "dataset": "b_train"})
    other_model = {**identity, "checkpoint": {**identity["checkpoint"], "mtime": 3.0}}
    with pytest.raises(ScoreTableMismatch, match=r"scores.npz comes from another model \(checkpoint: "):
        load_score_table(path, expect=other_model)
    with pytest.raises(FileNotFoundError, match="score table file not found: .*missing.npz"):
        load_score_table(os.path.join(tmp_path, "missing.npz"))
