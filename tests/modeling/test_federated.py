"""Detectron2's federated loss as ltdet2 pieces (ltdet2.modeling.losses.federated, configs/federated.py,
projects/federated_loss.py): the class weights are the training set's per-class image counts to the power 0.5 (what
Detectron2's ``get_fed_loss_cls_weights`` gives from the dataset's ``class_image_count``), the helper leaves the box
predictor Detectron2's own, and the LT-Shapes project trains a few iterations."""

import json
import math
import os

import numpy as np
import pytest
import torch

from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import get_fed_loss_cls_weights
from detectron2.modeling.roi_heads import FastRCNNOutputLayers

from ltdet2.config.federated import add_federated_loss
from ltdet2.engine.phases import load_config
from ltdet2.modeling import CosineClassifier, LongTailOutputLayers
from ltdet2.modeling.losses import FederatedClassWeights, SeesawLoss

from fixtures.models import (
    ROOT,
    TEST_DEVICE,
    TINY_LT_SHAPES,
    make_batch,
    small_model_cfg,
    tiny_run_overrides,
    train_losses,
    train_short_one_phase_project,
)


def json_image_counts(dataset_name):
    """[K] images holding each class, counted here from the dataset's json (categories in id order)."""
    DatasetCatalog.get(dataset_name)  # generates the tiny LT-Shapes on first use
    with open(MetadataCatalog.get(dataset_name).json_file) as f:
        data = json.load(f)
    ids = sorted(c["id"] for c in data["categories"])
    images = {i: set() for i in ids}
    for annotation in data["annotations"]:
        images[annotation["category_id"]].add(annotation["image_id"])
    return np.array([len(images[i]) for i in ids], dtype=np.int64)


def test_the_weights_are_image_count_to_the_power_one_half(tiny_dataset):
    train = tiny_dataset[0]
    counts = json_image_counts(train)
    assert len(set(counts.tolist())) > 1 and counts.min() > 0  # a long tail, every class present
    weights = FederatedClassWeights(dataset_name=train, num_classes=TINY_LT_SHAPES.num_classes)()
    assert weights.dtype == torch.float32 and weights.shape == (TINY_LT_SHAPES.num_classes,)
    torch.testing.assert_close(weights, torch.tensor(counts, dtype=torch.float32) ** 0.5, rtol=0, atol=0)
    # what Detectron2's get_fed_loss_cls_weights gives from the dataset's class_image_count metadata
    torch.testing.assert_close(weights, get_fed_loss_cls_weights(train, 0.5), rtol=0, atol=0)
    # other powers, and several datasets summed
    torch.testing.assert_close(
        FederatedClassWeights(dataset_name=[train, train], freq_weight_power=1.0)(),
        torch.tensor(2 * counts, dtype=torch.float32),
    )
    with pytest.raises(ValueError, match=f"dataset '{train}' has 8 classes, the box predictor 9"):
        FederatedClassWeights(dataset_name=train, num_classes=9)()


def test_the_helper_keeps_detectron2s_predictor_with_its_federated_loss(tiny_dataset):
    cfg = small_model_cfg()
    cfg.roi_heads.num_classes = TINY_LT_SHAPES.num_classes
    add_federated_loss(cfg, tiny_dataset[0], num_classes=4)
    predictor_cfg = cfg.roi_heads.box_predictor
    assert predictor_cfg._target_ is FastRCNNOutputLayers
    assert predictor_cfg.use_sigmoid_ce and predictor_cfg.use_fed_loss and predictor_cfg.fed_loss_num_classes == 4
    model = instantiate(cfg).to(TEST_DEVICE)
    predictor = model.roi_heads.box_predictor
    assert type(predictor) is FastRCNNOutputLayers
    expected = torch.tensor(json_image_counts(tiny_dataset[0]), dtype=torch.float32) ** 0.5
    torch.testing.assert_close(predictor.fed_loss_cls_weights.cpu(), expected)
    assert "roi_heads.box_predictor.fed_loss_cls_weights" in model.state_dict()  # checkpointed with the model

    # it trains with Detectron2's federated sigmoid cross-entropy (FastRCNNOutputLayers.losses)
    batch = make_batch(num_images=2, size=96)
    for record in batch:
        record["instances"].gt_classes %= TINY_LT_SHAPES.num_classes
    losses = train_losses(model, batch)
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"].requires_grad

    with pytest.raises(ValueError, match=r"num_classes=50 classes per iteration must be in \[1, 8\]"):
        add_federated_loss(cfg, tiny_dataset[0])
    cfg = small_model_cfg()
    cfg.roi_heads.box_predictor.cls_loss = L(SeesawLoss)()
    with pytest.raises(ValueError, match="has a cls_loss"):
        add_federated_loss(cfg, tiny_dataset[0], num_classes=2)


def test_a_prior_probability_starts_the_classifier_at_centernet2s_bias_with_detectron2s_loss(tiny_dataset):
    def federated_cfg(**kwargs):
        cfg = small_model_cfg()
        cfg.roi_heads.num_classes = TINY_LT_SHAPES.num_classes
        return add_federated_loss(cfg, tiny_dataset[0], num_classes=4, **kwargs)

    cfg = federated_cfg(prior_prob=0.01)
    assert cfg.roi_heads.box_predictor._target_ is LongTailOutputLayers
    torch.manual_seed(0)
    model = instantiate(cfg).to(TEST_DEVICE)
    bias = model.roi_heads.box_predictor.cls_score.bias
    torch.testing.assert_close(bias, torch.full_like(bias, -math.log(99)), rtol=0, atol=0)  # sigmoid = 0.01

    # the same weights in Detectron2's predictor give the same federated loss (same class draws: same seed)
    reference = instantiate(federated_cfg()).to(TEST_DEVICE)
    assert type(reference.roi_heads.box_predictor) is FastRCNNOutputLayers
    reference.load_state_dict(model.state_dict())
    batch = make_batch(num_images=2, size=96)
    for record in batch:
        record["instances"].gt_classes %= TINY_LT_SHAPES.num_classes
    losses, expected = train_losses(model, batch), train_losses(reference, batch)
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, rtol=0, atol=0)
    # Detectron2's zero biases: about 4 ln 2 per RoI (4 classes per iteration); the prior: under half of it
    with torch.no_grad():
        reference.roi_heads.box_predictor.cls_score.bias.zero_()
    zero_bias = train_losses(reference, batch)["loss_cls"]
    assert 4 * math.log(2) * 0.9 < zero_bias.item() < 4 * math.log(2) * 1.1
    assert losses["loss_cls"].item() < 0.5 * zero_bias.item()

    with pytest.raises(ValueError, match=r"prior_prob must be in \(0, 1\) or None, got 1.0"):
        federated_cfg(prior_prob=1.0)
    cfg = small_model_cfg()
    cfg.roi_heads.box_predictor.cls_bias_init = -2.0
    with pytest.raises(ValueError, match="already has cls_bias_init=-2.0"):
        add_federated_loss(cfg, tiny_dataset[0], num_classes=2, prior_prob=0.01)
    cfg = small_model_cfg()
    cfg.roi_heads.box_predictor.classifier = L(CosineClassifier)(input_dim=1024, num_classes=8)
    with pytest.raises(ValueError, match="has a classifier module, which initialises itself"):
        add_federated_loss(cfg, tiny_dataset[0], num_classes=2, prior_prob=0.01)
    cfg = small_model_cfg()
    cfg.roi_heads.box_predictor._target_ = "torch.nn.Linear"
    with pytest.raises(ValueError, match="as the box predictor, got Linear"):
        add_federated_loss(cfg, tiny_dataset[0], num_classes=2, prior_prob=0.01)


def test_federated_loss_project_trains_a_few_iterations(tmp_path, tiny_dataset):
    # the piece holds a copy of the class count and the training dataset (ltdet2.config.federated); 50 classes per
    # iteration are more than the tiny set's 8
    overrides = [
        f"model.roi_heads.box_predictor.get_fed_loss_cls_weights.num_classes={TINY_LT_SHAPES.num_classes}",
        f"model.roi_heads.box_predictor.get_fed_loss_cls_weights.dataset_name={tiny_dataset[0]}",
        "model.roi_heads.box_predictor.fed_loss_num_classes=4",
    ]
    _, final = train_short_one_phase_project("federated_loss.py", tiny_dataset, str(tmp_path / "run"), overrides)
    expected = torch.tensor(json_image_counts(tiny_dataset[0]), dtype=torch.float32) ** 0.5
    torch.testing.assert_close(final["roi_heads.box_predictor.fed_loss_cls_weights"].cpu(), expected)


def test_a_training_dataset_override_that_misses_the_weights_is_refused(tmp_path, tiny_dataset):
    with pytest.raises(
        ValueError,
        match=r"model.roi_heads.box_predictor.get_fed_loss_cls_weights.dataset_name is 'lt_shapes_train' but "
        rf"dataloader.train.dataset.names is '{tiny_dataset[0]}'",
    ):
        load_config(
            os.path.join(ROOT, "projects", "federated_loss.py"),
            [
                *tiny_run_overrides(tiny_dataset, str(tmp_path)),
                "model.roi_heads.box_predictor.get_fed_loss_cls_weights.num_classes=8",
            ],
        )
