"""How the learning-status indicators owned by the ROI heads reach their readers and are fed.

Binding: a loss, classifier or feature source that reads indicators is an :class:`IndicatorUser`
naming them in ``indicator_names``; the ROI heads bind every such module under them at build time
(:func:`bind_indicator_users`). Updating: once per training iteration every indicator gets the box
predictor's rows as a :class:`~ltdet2.memory.PredictorBatch` (:func:`predictor_batch`) and applies its
own rule (``update_from_predictions``; see :func:`update_indicators`), before or after the losses as
its ``update_timing`` says.
"""

from collections.abc import Callable, Mapping

import torch
from torch import nn

from detectron2.structures import Instances

from ltdet2.memory import PredictorBatch

from .batching import image_index
from .extra_rows import ExtraRowsBatch

__all__ = ["IndicatorUser", "bind_indicator_users", "predictor_row_objects", "predictor_batch", "update_indicators"]


class IndicatorUser:
    """Mixin for a module that reads indicators of the ROI heads, named by ``indicator_names``.

    The indicators are owned (and checkpointed) by the ROI heads; a user holds plain references, so
    their buffers are not saved twice. Read them with :meth:`indicator`.
    """

    indicator_names: tuple[str, ...] = ()

    def _names(self) -> tuple[str, ...]:
        names = self.indicator_names
        return (names,) if isinstance(names, str) else tuple(names)

    def bind_indicators(self, indicators: Mapping[str, nn.Module], owner: str | None = None):
        """Takes the indicators this module names from ``indicators`` (name -> indicator)."""
        missing = [name for name in self._names() if name not in indicators]
        if missing:
            owner = f"{owner} ({type(self).__name__})" if owner else type(self).__name__
            raise ValueError(
                f"{owner} reads indicator(s) {missing}, but the ROI heads have {sorted(indicators)}; "
                "add them to roi_heads.indicators"
            )
        self.__dict__["_bound_indicators"] = {name: indicators[name] for name in self._names()}

    def indicator(self, name: str | None = None) -> nn.Module:
        """The bound indicator ``name`` (may be omitted when the module reads exactly one)."""
        names = self._names()
        if name is None:
            if len(names) != 1:
                raise ValueError(
                    f"{type(self).__name__} reads {len(names)} indicators {list(names)}; name the one to read"
                )
            name = names[0]
        bound = self.__dict__.get("_bound_indicators", {})
        if name not in bound:
            raise RuntimeError(
                f"{type(self).__name__} reads indicator {name!r} but none was bound; "
                "use it inside LongTailROIHeads with that indicator in `indicators`"
            )
        return bound[name]

    @property
    def bound_indicator(self) -> nn.Module:
        """The one indicator of a module that reads exactly one."""
        return self.indicator()


def bind_indicator_users(root: nn.Module, indicators: Mapping[str, nn.Module]):
    """Binds every :class:`IndicatorUser` among ``root``'s submodules; errors name the module's path."""
    for path, module in root.named_modules():
        if isinstance(module, IndicatorUser):
            module.bind_indicators(indicators, owner=path or type(root).__name__)


def predictor_row_objects(
    proposals: list[Instances], targets: list[Instances], extra_rows: ExtraRowsBatch, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and object ids of one iteration's predictor rows: the sampled RoIs, then the extra rows.

    Args:
        proposals: per image (at least one), the sampled RoIs with ``gt_classes`` and ``gt_indices`` (-1: background).
        targets: per image, the ground truth the RoIs were matched to.
        extra_rows: the rows the feature sources added after the RoIs.
        num_classes: C.

    Returns:
        labels [N+R] in [0, C]; object_ids [N+R]: a foreground RoI's (image, ground-truth box), a
        memory row's (source, class), -1 for background RoIs.
    """
    device = proposals[0].gt_classes.device
    roi_labels = torch.cat([p.gt_classes for p in proposals])
    gt_counts = torch.tensor([len(t) for t in targets], dtype=torch.int64, device=device)
    image_offsets = torch.cumsum(gt_counts, 0) - gt_counts
    roi_image = image_index([len(p) for p in proposals], device)
    roi_gt = torch.cat([p.gt_indices for p in proposals])
    roi_ids = torch.where(roi_gt >= 0, image_offsets[roi_image] + roi_gt, -1)
    extra_labels = extra_rows.labels(device)
    extra_ids = gt_counts.sum() + extra_rows.source_indices(device) * (num_classes + 1) + extra_labels
    return torch.cat([roi_labels, extra_labels]), torch.cat([roi_ids, extra_ids])


@torch.no_grad()
def predictor_batch(
    indicators: Mapping[str, nn.Module],
    logits: torch.Tensor,
    labels: torch.Tensor,
    object_ids: torch.Tensor,
    class_probabilities: Callable[[torch.Tensor], torch.Tensor],
    *,
    num_classes: int | None = None,
    num_logits: int | None = None,
) -> PredictorBatch:
    """One iteration's predictor rows as the indicators read them (built once, for every indicator).

    Args:
        indicators: name -> indicator; the class probabilities are computed only if one of them reads
            them (``reads_probabilities``).
        logits: [N, L] classification logits, ``L = scoring.num_logits(C)`` (``C+1`` with background column C;
            ``C+2`` for Seesaw's objectness-aware scoring); detached here.
        labels, object_ids: [N] each, see :func:`predictor_row_objects`.
        class_probabilities: the box predictor's scoring, ``[N, L] logits -> [N, C+1]`` probabilities
            (background column C; what its inference uses); called once on float32 logits.
        num_classes: C; when given, the probabilities are checked to be ``[N, C+1]`` (:class:`PredictorBatch`).
        num_logits: L (the scoring's ``num_logits(C)``); when given, the logits are checked to be ``[N, L]``.
    """
    logits = logits.detach()
    probabilities = None
    if any(getattr(indicator, "reads_probabilities", False) for indicator in indicators.values()):
        probabilities = class_probabilities(logits.float()).float()
    return PredictorBatch(
        logits=logits,
        labels=labels,
        object_ids=object_ids,
        probabilities=probabilities,
        num_classes=num_classes,
        num_logits=num_logits,
    )


@torch.no_grad()
def update_indicators(indicators: Mapping[str, nn.Module], batch: PredictorBatch, timing: str | None = None):
    """Feeds ``batch`` to the indicators (name -> indicator) whose ``update_timing`` is ``timing``
    (``"before_loss"`` / ``"after_loss"``; None: all), in the order of ``indicators``."""
    for indicator in indicators.values():
        if timing is None or getattr(indicator, "update_timing", "after_loss") == timing:
            indicator.update_from_predictions(batch)
