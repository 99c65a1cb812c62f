"""Detectron2's FastRCNNOutputLayers with a pluggable classifier, classification loss and test-time scoring."""

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, _log_classification_stats
from detectron2.structures import Instances

from ..classifiers import CosineClassifier, WeightNormCosineClassifier
from ..extra_rows import ExtraRowsBatch
from ..losses.equilibrium import EquilibriumLoss
from ..losses.foreground_balance import ForegroundBalanceLoss
from .scoring import (
    ClassScoring,
    SigmoidCEScoring,
    SoftmaxScoring,
    check_loss_scoring,
    detectron2_scoring,
    scoring_from_name,
)


class LongTailOutputLayers(FastRCNNOutputLayers):
    """Box predictor whose classifier, classification loss and scoring are modules, and which trains on
    extra rows (memory features) after the sampled RoIs.

    Scores are ``[N, C+1]`` logits with background at index C (other than C+1 columns where the scoring says so,
    below). The ``scoring`` (a
    :class:`~ltdet2.modeling.box_predictors.scoring.ClassScoring`) turns them into class probabilities
    (:meth:`predict_class_probabilities`: inference scores detections with it and the learning-status
    indicators read it), gives the classification loss when no ``cls_loss`` is given, and initialises the
    linear ``cls_score``'s biases:

    - :class:`~ltdet2.modeling.box_predictors.scoring.SoftmaxScoring` (default) and
      :class:`~ltdet2.modeling.box_predictors.scoring.SigmoidCEScoring` (the default with ``use_sigmoid_ce``):
      Detectron2's own. With ``classifier=None``, ``cls_loss=None`` and no extra rows, losses and outputs are
      exactly those of :class:`FastRCNNOutputLayers` (its losses are computed there). With ``use_fed_loss`` the
      loss is Detectron2's federated sigmoid cross-entropy (its class draws are the predictor's).
    - :class:`~ltdet2.modeling.box_predictors.scoring.SigmoidBackgroundScoring`: BACL's sigmoid classifier whose
      last channel is background (paper Eq. 2-5), biases at ``-ln(999)``. Not Detectron2's ``use_sigmoid_ce``,
      which has no background channel: the two are refused together.
    - :class:`~ltdet2.modeling.box_predictors.scoring.ObjectnessSoftmaxScoring`: Seesaw's objectness-aware scoring,
      ``C+2`` logits (C classes, then foreground and background objectness).

    The classifier gives ``num_logits = scoring.num_logits(C)`` columns (``C+1`` but for a scoring that asks for
    more): the linear ``cls_score`` is built with that many outputs (Detectron2's init), a ``classifier`` module must
    give that many (checked when it has a 2-D ``weight`` and at every forward). Whatever the logits, the class
    probabilities are ``[N, C+1]`` (background column C), and the logged ``fast_rcnn/*`` accuracies are those of
    the test-time decisions (the argmax of the probabilities when the logits are not ``C+1`` columns).

    Args:
        classifier: module mapping ``[N, D]`` features to ``[N, num_logits]`` logits (``[N, C+1]`` but for a
            scoring that asks for more); replaces the linear ``cls_score`` (and keeps its name, so checkpoints line
            up).
        cls_loss: module ``cls_loss(logits, labels, weights=None) -> scalar`` replacing the scoring's
            loss. If it reads indicators (an ``IndicatorUser``), the ROI heads bind the ones it names to
            it when they are built. A loss declaring a ``class_scoring`` (BACL's FCBL: ``"sigmoid_background"``; a
            scoring's name, or a scoring class) must be one for this predictor's scoring.
        scoring: a :class:`~ltdet2.modeling.box_predictors.scoring.ClassScoring`; None: Detectron2's
            (:class:`SoftmaxScoring`, :class:`SigmoidCEScoring` with ``use_sigmoid_ce``). A
            :class:`SigmoidCEScoring` turns ``use_sigmoid_ce`` on (Detectron2's code reads it).
        class_scoring: the scoring by name, instead of ``scoring`` (the option's form before scorings were
            objects; saved configs use it): ``"softmax"`` (Detectron2's, as ``scoring=None``) or
            ``"sigmoid_background"`` (:class:`SigmoidBackgroundScoring()`). After construction the attribute
            of that name is the scoring's name.
        cls_bias_init: initial value of the linear ``cls_score``'s ``num_logits`` biases; None: the scoring's
            (:meth:`ClassScoring.init_bias`: Detectron2's 0, ``-ln(999)`` for ``"sigmoid_background"``). Only
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
        scoring: ClassScoring | None = None,
        class_scoring: str | None = None,
        cls_bias_init: float | None = None,
        regressor_input_relu: bool = False,
        **kwargs,
    ):
        super().__init__(input_shape, **kwargs)
        self.regressor_input_relu = bool(regressor_input_relu)
        if scoring is not None and class_scoring is not None:
            raise ValueError(
                "LongTailOutputLayers: give scoring or class_scoring (its name), not both; got "
                f"scoring={type(scoring).__name__} and class_scoring={class_scoring!r}"
            )
        if class_scoring is not None:
            try:
                scoring = scoring_from_name(class_scoring, use_sigmoid_ce=self.use_sigmoid_ce)
            except ValueError as error:
                raise ValueError(f"LongTailOutputLayers: {error}") from None
        elif scoring is None:
            scoring = detectron2_scoring(self.use_sigmoid_ce)
        if not isinstance(scoring, ClassScoring):
            raise TypeError(
                f"LongTailOutputLayers: scoring must be a ClassScoring (ltdet2.modeling.box_predictors.scoring), "
                f"got {type(scoring).__name__}"
            )
        if isinstance(scoring, SigmoidCEScoring):
            self.use_sigmoid_ce = True  # Detectron2's losses and predict_probs read it
        elif self.use_sigmoid_ce:
            raise ValueError(
                f"LongTailOutputLayers: scoring {type(scoring).__name__} ({scoring.name!r}) is not Detectron2's "
                "sigmoid classifier; use_sigmoid_ce is another one: turn it off (or use SigmoidCEScoring)"
            )
        check_loss_scoring(cls_loss, scoring, "LongTailOutputLayers")
        self.num_logits = int(scoring.num_logits(self.num_classes))
        if classifier is None and self.cls_score.out_features != self.num_logits:
            # a scoring with other than C+1 columns: the linear classifier sized for it, with Detectron2's init
            self.cls_score = nn.Linear(self.cls_score.in_features, self.num_logits)
            nn.init.normal_(self.cls_score.weight, std=0.01)
            nn.init.constant_(self.cls_score.bias, 0)
        elif classifier is not None:
            rows = getattr(classifier, "weight", None)
            if isinstance(rows, torch.Tensor) and rows.dim() == 2 and rows.shape[0] != self.num_logits:
                raise ValueError(self._logit_count_error(type(classifier).__name__, rows.shape[0], scoring))
        if classifier is not None:
            if cls_bias_init is not None:
                raise ValueError(
                    "LongTailOutputLayers: cls_bias_init initialises the linear cls_score; "
                    f"the classifier {type(classifier).__name__} initialises itself"
                )
            self.cls_score = classifier
        elif cls_bias_init is not None:
            nn.init.constant_(self.cls_score.bias, cls_bias_init)
        else:
            scoring.init_bias(self.cls_score.bias)
        self.cls_loss = cls_loss
        self.scoring = scoring

    @classmethod
    def from_config(cls, cfg, input_shape):
        """Detectron2's arguments, plus, from ``MODEL.LTDET2`` (:func:`ltdet2.config.yaml_config.add_ltdet2_config`),
        the classifier (``CLASSIFIER``), the scoring (``CLASS_SCORING``) and the loss (``EBL``, ``FCBL``) that the
        LazyConfig helpers set (``ltdet2.config.rio.add_cosine_classifier``,
        ``ltdet2.config.bacl.use_sigmoid_background``, ``ltdet2.config.loce.add_ebl``, ``ltdet2.config.bacl.add_fcbl``).
        Without ``MODEL.LTDET2``: Detectron2's."""
        ret = super().from_config(cfg, input_shape)
        options = cfg.MODEL.get("LTDET2")
        if options is None:
            return ret
        num_classes = ret["num_classes"]
        input_dim = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        classifier = options.CLASSIFIER
        if classifier.NAME == "WeightNormCosineClassifier":
            ret["classifier"] = WeightNormCosineClassifier(input_dim, num_classes, scale=classifier.SCALE)
        elif classifier.NAME == "CosineClassifier":
            ret["classifier"] = CosineClassifier(
                input_dim, num_classes, scale=classifier.SCALE, learnable_scale=classifier.LEARNABLE_SCALE
            )
        elif classifier.NAME:
            raise ValueError(f"MODEL.LTDET2.CLASSIFIER.NAME={classifier.NAME!r} is not a classifier of ltdet2")
        if options.CLASS_SCORING != "softmax":  # "softmax": Detectron2's scoring (as scoring=None)
            ret["scoring"] = scoring_from_name(options.CLASS_SCORING)
        if options.EBL.ENABLED:
            ret["cls_loss"] = EquilibriumLoss(
                indicator="mean_score", background_score=options.MEAN_SCORE.BACKGROUND_SCORE
            )
        if options.FCBL.ENABLED:
            ret["cls_loss"] = ForegroundBalanceLoss(
                indicator="confusion",
                num_classes=num_classes,
                alpha=options.FCBL.ALPHA,
                weight_threshold=options.FCBL.WEIGHT_THRESHOLD,
                weight_term=options.FCBL.WEIGHT_TERM,
            )
        return ret

    @property
    def class_scoring(self) -> str:
        """The scoring's name (``"softmax"``, ``"sigmoid_ce"``, ``"sigmoid_background"``, ...)."""
        return self.scoring.name

    def _logit_count_error(self, classifier: str, columns: int, scoring: ClassScoring) -> str:
        return (
            f"LongTailOutputLayers: the classifier {classifier} gives {columns} logit columns, but the scoring "
            f"{type(scoring).__name__} ({scoring.name!r}) takes {self.num_logits} for {self.num_classes} classes "
            f"(ClassScoring.num_logits); build the classifier with that many outputs"
        )

    def forward(self, x):
        """``(scores [N, num_logits], deltas [N, 4C or 4])`` of ``[N, D]`` features (more dimensions are flattened);
        ``num_logits`` is ``C+1`` unless the scoring asks for more."""
        if not self.regressor_input_relu:
            scores, deltas = super().forward(x)
        else:
            if x.dim() > 2:
                x = torch.flatten(x, start_dim=1)
            scores, deltas = self.cls_score(x), self.bbox_pred(F.relu(x))
        if scores.shape[-1] != self.num_logits:
            raise ValueError(self._logit_count_error(type(self.cls_score).__name__, scores.shape[-1], self.scoring))
        return scores, deltas

    def predict_class_probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """``[N, C+1]`` class probabilities (background column C, in [0, 1]) from ``[N, num_logits]`` logits
        (``C+1``, or what the scoring asks for: Seesaw's ``C+2``): the test-time scoring (the ``scoring``'s), shared
        by inference and the learning-status indicators (:class:`~ltdet2.memory.PredictorBatch`)."""
        return self.scoring.probabilities(scores)

    def predict_probs(self, predictions: tuple[torch.Tensor, torch.Tensor], proposals: list[Instances]):
        """Per image, ``[R_i, C+1]`` class probabilities from :meth:`predict_class_probabilities`."""
        scores, _ = predictions
        return self.predict_class_probabilities(scores).split([len(p) for p in proposals], dim=0)

    def classification_loss(self, scores, gt_classes, weights=None):
        """The ``cls_loss``, else the scoring's loss (Detectron2's federated one with ``use_fed_loss``)."""
        if self.cls_loss is not None:
            return self.cls_loss(scores, gt_classes, weights)
        if self.use_fed_loss:  # draws classes with the predictor's fed_loss_cls_weights: Detectron2's own method
            if weights is not None:
                raise ValueError("use_fed_loss does not take per-row weights; give a cls_loss")
            return self.sigmoid_cross_entropy_loss(scores, gt_classes)
        return self.scoring.loss(scores, gt_classes, weights)

    def _losses_are_detectron2s(self) -> bool:
        """No ``cls_loss`` and the scoring is Detectron2's own: :meth:`FastRCNNOutputLayers.losses` computes them."""
        return self.cls_loss is None and type(self.scoring) is (
            SigmoidCEScoring if self.use_sigmoid_ce else SoftmaxScoring
        )

    def losses(self, predictions, proposals, extra_rows: ExtraRowsBatch | None = None):
        """
        Args:
            predictions: ``(scores [N+R, num_logits], deltas [N+R, 4C or 4])`` for the N sampled RoIs of
                ``proposals`` followed by the R extra rows.
            proposals (list[Instances]): with ``proposal_boxes``, ``gt_boxes``, ``gt_classes``.
            extra_rows: the R extra rows; their boxes (if any) train regression, their weights scale
                their classification terms. Losses are averaged over all N+R rows (regression over
                the rows that carry boxes), as if the rows were sampled RoIs.
        """
        if not extra_rows and self._losses_are_detectron2s():
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
        roi_scores = scores[:num_rois]
        if self.num_logits != self.num_classes + 1:  # not C classes and background: log the test-time decisions
            roi_scores = self.predict_class_probabilities(roi_scores.detach())
        _log_classification_stats(roi_scores, roi_classes)

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
