"""Detectron2's FastRCNNOutputLayers with a pluggable classifier, classification loss and test-time scoring."""

import math

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, _log_classification_stats
from detectron2.structures import Instances

from ..extra_rows import ExtraRowsBatch
from ..losses.sigmoid_background import sigmoid_background_loss, sigmoid_background_probs

CLASS_SCORINGS = ("softmax", "sigmoid_background")
# BACL's official init of all C+1 classifier biases: prior probability 0.001 (mmcv's bias_init_with_prob)
SIGMOID_BACKGROUND_BIAS = -math.log((1 - 0.001) / 0.001)


class LongTailOutputLayers(FastRCNNOutputLayers):
    """Box predictor whose classifier and classification loss are modules, and which trains on
    extra rows (memory features) after the sampled RoIs.

    Scores are ``[N, C+1]`` logits with background at index C. Their class probabilities come from
    one function, :meth:`predict_class_probabilities`: inference scores detections with it and the
    learning-status indicators read it. ``class_scoring`` chooses it:

    - ``"softmax"`` (default): Detectron2's own (softmax; sigmoid of each logit with ``use_sigmoid_ce``),
      trained with Detectron2's loss unless a ``cls_loss`` is given. With ``classifier=None``,
      ``cls_loss=None`` and no extra rows, losses and outputs are exactly those of
      :class:`FastRCNNOutputLayers`.
    - ``"sigmoid_background"``: BACL's sigmoid classifier whose last channel is background (paper
      Eq. 2-5): probabilities ``[sigmoid(z_j) * (1 - sigmoid(z_C)), sigmoid(z_C)]``
      (:func:`~ltdet2.modeling.sigmoid_background_probs`), default loss
      :func:`~ltdet2.modeling.losses.sigmoid_background_loss` (BCE over all C+1 channels, background
      rows with target 1 on channel C), and all C+1 biases of the linear ``cls_score`` initialised to
      ``-ln(999)`` (official code; not in the paper). Not Detectron2's ``use_sigmoid_ce``, which has no
      background channel (all-zero targets for background rows, last column unused).

    Args:
        classifier: module mapping ``[N, D]`` features to ``[N, C+1]`` logits; replaces the linear
            ``cls_score`` (and keeps its name, so checkpoints line up).
        cls_loss: module ``cls_loss(logits, labels, weights=None) -> scalar`` replacing the default
            loss. If it reads indicators (an ``IndicatorUser``), the ROI heads bind the ones it names to
            it when they are built. A loss declaring a ``class_scoring`` (BACL's FCBL) must match this one.
        class_scoring: ``"softmax"`` or ``"sigmoid_background"``, see above.
        cls_bias_init: initial value of the linear ``cls_score``'s C+1 biases; None: the scoring's
            default (Detectron2's 0 for ``"softmax"``, ``-ln(999)`` for ``"sigmoid_background"``). Only
            for the linear ``cls_score`` (a ``classifier`` module initialises itself).
        regressor_input_relu: ``bbox_pred`` reads ``ReLU(x)`` while the classifier reads ``x`` as it is (LST's
            ``FPNCosinePredictor``, after a box head whose last FC has no ReLU,
            :class:`~ltdet2.modeling.box_heads.LinearOutputConvFCHead`). False (default): both read ``x``.
        other arguments: those of :class:`FastRCNNOutputLayers`.
    """

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        classifier: nn.Module | None = None,
        cls_loss: nn.Module | None = None,
        class_scoring: str = "softmax",
        cls_bias_init: float | None = None,
        regressor_input_relu: bool = False,
        **kwargs,
    ):
        super().__init__(input_shape, **kwargs)
        self.regressor_input_relu = bool(regressor_input_relu)
        if class_scoring not in CLASS_SCORINGS:
            raise ValueError(
                f"LongTailOutputLayers: class_scoring must be one of {CLASS_SCORINGS}, got {class_scoring!r}"
            )
        if class_scoring == "sigmoid_background" and self.use_sigmoid_ce:
            raise ValueError(
                "LongTailOutputLayers: class_scoring='sigmoid_background' is BACL's classifier with a background "
                "channel; Detectron2's use_sigmoid_ce is another one: turn it off"
            )
        loss_scoring = getattr(cls_loss, "class_scoring", None)
        if loss_scoring is not None and loss_scoring != class_scoring:
            raise ValueError(
                f"LongTailOutputLayers: cls_loss {type(cls_loss).__name__} is a loss for class_scoring="
                f"{loss_scoring!r}, but the box predictor scores with class_scoring={class_scoring!r}"
            )
        self.class_scoring = class_scoring
        if classifier is not None:
            if cls_bias_init is not None:
                raise ValueError(
                    "LongTailOutputLayers: cls_bias_init initialises the linear cls_score; "
                    f"the classifier {type(classifier).__name__} initialises itself"
                )
            self.cls_score = classifier
        else:
            if cls_bias_init is None and class_scoring == "sigmoid_background":
                cls_bias_init = SIGMOID_BACKGROUND_BIAS
            if cls_bias_init is not None:
                nn.init.constant_(self.cls_score.bias, cls_bias_init)
        self.cls_loss = cls_loss

    @classmethod
    def from_config(cls, cfg, input_shape):
        return super().from_config(cfg, input_shape)

    def forward(self, x):
        """``(scores [N, C+1], deltas [N, 4C or 4])`` of ``[N, D]`` features (more dimensions are flattened)."""
        if not self.regressor_input_relu:
            return super().forward(x)
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        return self.cls_score(x), self.bbox_pred(F.relu(x))

    def predict_class_probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """``[N, C+1]`` class probabilities (background column C) from ``[N, C+1]`` logits: the test-time
        scoring, shared by inference and the learning-status indicators."""
        if self.class_scoring == "sigmoid_background":
            return sigmoid_background_probs(scores)
        if self.use_sigmoid_ce:
            return scores.sigmoid()
        return F.softmax(scores, dim=-1)

    def predict_probs(self, predictions: tuple[torch.Tensor, torch.Tensor], proposals: list[Instances]):
        """Per image, ``[R_i, C+1]`` class probabilities from :meth:`predict_class_probabilities`."""
        scores, _ = predictions
        return self.predict_class_probabilities(scores).split([len(p) for p in proposals], dim=0)

    def classification_loss(self, scores, gt_classes, weights=None):
        if self.cls_loss is not None:
            return self.cls_loss(scores, gt_classes, weights)
        if self.class_scoring == "sigmoid_background":
            return sigmoid_background_loss(scores, gt_classes, weights)
        if self.use_sigmoid_ce:
            if weights is not None:
                raise ValueError("use_sigmoid_ce does not take per-row weights; give a cls_loss")
            return self.sigmoid_cross_entropy_loss(scores, gt_classes)
        if scores.numel() == 0:
            return scores.sum() * 0.0
        per_row = nn.functional.cross_entropy(scores, gt_classes, reduction="none")
        if weights is not None:
            per_row = per_row * weights
        return per_row.sum() / scores.shape[0]

    def losses(self, predictions, proposals, extra_rows: ExtraRowsBatch | None = None):
        """
        Args:
            predictions: ``(scores [N+R, C+1], deltas [N+R, 4C or 4])`` for the N sampled RoIs of
                ``proposals`` followed by the R extra rows.
            proposals (list[Instances]): with ``proposal_boxes``, ``gt_boxes``, ``gt_classes``.
            extra_rows: the R extra rows; their boxes (if any) train regression, their weights scale
                their classification terms. Losses are averaged over all N+R rows (regression over
                the rows that carry boxes), as if the rows were sampled RoIs.
        """
        if not extra_rows and self.cls_loss is None and self.class_scoring == "softmax":
            return super().losses(predictions, proposals)
        scores, proposal_deltas = predictions
        device = scores.device
        num_rois = sum(len(p) for p in proposals)
        extra_rows = extra_rows or ExtraRowsBatch()
        roi_classes = (
            cat([p.gt_classes for p in proposals], dim=0)
            if proposals
            else torch.empty(0, dtype=torch.int64, device=device)
        )
        gt_classes = torch.cat([roi_classes, extra_rows.labels(device)])
        _log_classification_stats(scores[:num_rois], roi_classes)

        weights = None
        if len(extra_rows) and any(r.weights is not None for r in extra_rows.rows):
            weights = torch.cat(
                [torch.ones(num_rois, dtype=scores.dtype, device=device), extra_rows.weights(device, scores.dtype)]
            )
        loss_cls = self.classification_loss(scores, gt_classes, weights)

        if proposals:
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals], dim=0)
        else:
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=device)
        extra_proposal_boxes, extra_gt_boxes = extra_rows.boxes()
        if extra_proposal_boxes is not None:
            proposal_boxes = torch.cat([proposal_boxes, extra_proposal_boxes.to(proposal_boxes.dtype)])
            gt_boxes = torch.cat([gt_boxes, extra_gt_boxes.to(gt_boxes.dtype)])
        box_deltas, box_classes = proposal_deltas, gt_classes
        if not all(r.has_boxes for r in extra_rows.rows):  # else no copy of the [N+R, 4C] deltas
            box_rows = torch.cat([torch.ones(num_rois, dtype=torch.bool, device=device), extra_rows.box_mask(device)])
            box_deltas, box_classes = proposal_deltas[box_rows], gt_classes[box_rows]
        loss_box_reg = self.box_reg_loss(proposal_boxes, gt_boxes, box_deltas, box_classes)
        losses = {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg}
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}
