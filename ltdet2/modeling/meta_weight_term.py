"""LST's meta weight generator trained episodically with an incremental phase (Sec. 3.4): a training term over a
:class:`~ltdet2.modeling.distillers.DistillationContext` that holds the :class:`MetaWeightGenerator`.

The paper gives the episode in one sentence (a support set generates the new classes' weights, a query set
gives the loss with ``[W^O, W^N]``) and the official code never trains a generator; the episode below is
ltdet2's (proposed, not from the paper): support = the new classes' valid ground-truth boxes of the batch,
query = the student's sampled RoIs of the batch.
"""

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.structures import Boxes, Instances

from .batching import image_index, valid_ground_truth
from .weight_generator import MetaWeightGenerator

__all__ = ["MetaWeightGeneratorTerm", "new_class_boxes", "box_features"]


def new_class_boxes(targets: list[Instances], num_old_classes: int) -> tuple[list[Boxes], torch.Tensor]:
    """Per image, the valid ground-truth boxes (``gt_valid`` not False) of new classes (contiguous index >=
    ``num_old_classes``), and their classes ([S], concatenated in image order). One selection for the batch
    (a single host sync for the per-image counts), on the targets' device."""
    classes = torch.cat([t.gt_classes for t in targets])
    boxes = torch.cat([t.gt_boxes.tensor for t in targets])
    keep = (classes >= num_old_classes) & valid_ground_truth(targets, classes.device)
    rows_image = image_index([len(t) for t in targets], classes.device)
    counts = torch.bincount(rows_image[keep], minlength=len(targets)).tolist()
    return [Boxes(b) for b in boxes[keep.to(boxes.device)].split(counts)], classes[keep]


def box_features(roi_heads: nn.Module, features: dict[str, torch.Tensor], boxes: list[Boxes]) -> torch.Tensor:
    """``[N, D]``: the box head's output for ``boxes`` (per image, input-image pixels), what the box predictor's
    classifier reads (LST: the last FC without its ReLU)."""
    pooled = roi_heads.box_pooler([features[f] for f in roi_heads.box_in_features], boxes)
    return torch.flatten(roi_heads.box_head(pooled), 1)


def cosine_classifier(model: nn.Module, num_classes: int, feature_dim: int, owner: str) -> nn.Module:
    """The box predictor's cosine classifier (``weight`` [K+1, D], background last, ``scale``), checked."""
    classifier = model.roi_heads.box_predictor.cls_score
    weight = getattr(classifier, "weight", None)
    if not hasattr(classifier, "scale") or weight is None or getattr(classifier, "norm", None) is not None:
        raise TypeError(
            f"{owner}: the box predictor's cls_score ({type(classifier).__name__}) must be a CosineClassifier "
            "without learnable_norm (weight [K+1, D], scale)"
        )
    if tuple(weight.shape) != (num_classes + 1, feature_dim):
        raise ValueError(
            f"{owner}: the classifier weight is {list(weight.shape)}; expected [{num_classes + 1}, {feature_dim}] "
            f"(num_classes={num_classes} + background, feature_dim={feature_dim})"
        )
    return classifier


class MetaWeightGeneratorTerm(nn.Module):
    """Episodic training of LST's meta weight generator with the student (Sec. 3.4; the episode is ours).

    Each iteration:

    - support: the student's box features (:func:`box_features`) of the batch's valid ground-truth boxes of new
      classes (contiguous index in ``[num_old_classes, num_classes)``); the generator writes a weight per box
      from its feature and its attention over the base classes' rows of the student's classifier (``[:b]``),
      averaged per class;
    - new classes absent from the support use an exponential moving average of their generated weights
      (``ema_weights``, a checkpointed buffer; ours), or the classifier's own row before their first generation;
    - query: the student's sampled RoIs (``context.sampled_proposals``) with their ``gt_classes``; logits =
      ``s · cos(feature, row)`` over ``[W_old ; W_new ; w_background]`` (all K+1 rows, background last; ``s`` the
      classifier's scale); loss = softmax cross-entropy, mean over the RoIs, times ``weight``.

    The gradient reaches the generator, the student's box head and backbone (support and query features) and
    its classifier rows (old, background, and never-generated new rows). Returns ``{"loss_meta_weights": ...}``.

    Args:
        num_base_classes: b, the base phase's classes (the classifier's first b rows; the generator's keys).
        num_old_classes: K_old, the classes of the previous phases (the classifier's first K_old rows).
        num_classes: K, the classes of this phase (old + new).
        feature_dim: D, the box head's output size.
        weight: the loss weight.
        ema_momentum: weight of the old value in the EMA of generated weights (ours).
        attention_scale: initial s_att of the generator.
    """

    def __init__(
        self,
        *,
        num_base_classes: int,
        num_old_classes: int,
        num_classes: int,
        feature_dim: int = 1024,
        weight: float = 1.0,
        ema_momentum: float = 0.9,
        attention_scale: float = 10.0,
    ):
        super().__init__()
        if not 1 <= num_base_classes <= num_old_classes < num_classes:
            raise ValueError(
                f"MetaWeightGeneratorTerm: needs 1 <= num_base_classes <= num_old_classes < num_classes; got "
                f"num_base_classes={num_base_classes}, num_old_classes={num_old_classes}, num_classes={num_classes}"
            )
        if not 0.0 <= ema_momentum < 1.0:
            raise ValueError(f"MetaWeightGeneratorTerm: ema_momentum={ema_momentum} must be in [0, 1)")
        self.num_base_classes = int(num_base_classes)
        self.num_old_classes = int(num_old_classes)
        self.num_classes = int(num_classes)
        self.feature_dim = int(feature_dim)
        self.weight = float(weight)
        self.ema_momentum = float(ema_momentum)
        self.generator = MetaWeightGenerator(self.feature_dim, self.num_base_classes, attention_scale=attention_scale)
        num_new = self.num_classes - self.num_old_classes
        self.register_buffer("ema_weights", torch.zeros(num_new, self.feature_dim))
        self.register_buffer("ema_seen", torch.zeros(num_new, dtype=torch.bool))

    def classifier(self, model: nn.Module) -> nn.Module:
        return cosine_classifier(model, self.num_classes, self.feature_dim, type(self).__name__)

    def generate(self, features: torch.Tensor, classes: torch.Tensor, classifier_weight: torch.Tensor):
        """Per-class mean generated weights of new classes: ([K - K_old, D], RoI counts [K - K_old]) from box
        features ``[S, D]`` of new-class boxes of contiguous ``classes`` [S]."""
        per_box = self.generator(features, classifier_weight[: self.num_base_classes])
        return MetaWeightGenerator.class_average(
            per_box, classes - self.num_old_classes, self.num_classes - self.num_old_classes
        )

    def episode_weights(self, classifier_weight: torch.Tensor, features: torch.Tensor, classes: torch.Tensor):
        """``[K+1, D]``: old rows, the new classes' generated (or EMA, or own) rows, background; updates the EMA
        in training."""
        generated, counts = self.generate(features, classes, classifier_weight)
        present = (counts > 0).unsqueeze(1)
        seen = self.ema_seen.clone().unsqueeze(1)  # a copy: autograd keeps it, the EMA update below is in place
        fallback = torch.where(seen, self.ema_weights.clone(), classifier_weight[self.num_old_classes : -1])
        new_rows = torch.where(present, generated, fallback)
        if self.training:
            with torch.no_grad():
                blended = self.ema_momentum * self.ema_weights + (1 - self.ema_momentum) * generated
                update = torch.where(seen, blended, generated)
                self.ema_weights.copy_(torch.where(present, update, self.ema_weights))
                self.ema_seen |= present.squeeze(1)
        return torch.cat([classifier_weight[: self.num_old_classes], new_rows, classifier_weight[-1:]])

    def forward(self, context) -> dict[str, torch.Tensor]:
        if context.sampled_proposals is None:
            raise ValueError(
                "MetaWeightGeneratorTerm needs the student's sampled RoIs: the student's ROI heads must keep "
                "latest_sampled_proposals (use ltdet2.modeling.LongTailROIHeads)"
            )
        student = context.student
        classifier = self.classifier(student)
        boxes, classes = new_class_boxes(context.targets, self.num_old_classes)
        support = box_features(student.roi_heads, context.student_features, boxes)
        query = box_features(
            student.roi_heads, context.student_features, [p.proposal_boxes for p in context.sampled_proposals]
        )
        query_classes = torch.cat([p.gt_classes for p in context.sampled_proposals])
        weights = self.episode_weights(classifier.weight, support, classes)
        logits = classifier.scale * F.normalize(query, dim=1) @ F.normalize(weights, dim=1).t()
        loss = F.cross_entropy(logits, query_classes) if len(query_classes) else logits.sum()
        if len(classes) == 0:  # no support: the generator is unused; keep it in the graph (DDP)
            loss = loss + 0.0 * sum(p.sum() for p in self.generator.parameters())
        return {"loss_meta_weights": loss * self.weight}

    def extra_repr(self):
        return (
            f"num_base_classes={self.num_base_classes}, num_old_classes={self.num_old_classes}, "
            f"num_classes={self.num_classes}, weight={self.weight}, ema_momentum={self.ema_momentum}"
        )
