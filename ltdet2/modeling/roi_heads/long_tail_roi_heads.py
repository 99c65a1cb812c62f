"""StandardROIHeads whose box predictor also trains on rows from memories (feature sources)."""

import logging
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from detectron2.config import configurable, instantiate
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Boxes, Instances

from ltdet2.memory.class_queue import resolve_storage_dtype
from ltdet2.memory.indicators import UPDATE_TIMINGS, MeanScore, SoftConfusionMatrix
from ltdet2.utils.cpu import has_native_cpu_bfloat16

from ..box_predictors import LongTailOutputLayers
from ..extra_rows import ExtraRowsBatch
from ..feature_sources.base import STAGES, SourceContext
from ..feature_sources.feature_hallucination import FeatureHallucination
from ..feature_sources.memory_feature_sampler import MemoryFeatureSampler
from ..feature_sources.object_replay import ObjectReplay
from ..indicator_links import bind_indicator_users, predictor_batch, predictor_row_objects, update_indicators

logger = logging.getLogger(__name__)


_KEPT_ROI_FIELDS = ("proposal_boxes", "gt_classes", "gt_indices", "gt_boxes")
MASK_INFERENCE_DTYPES = ("float32", "bfloat16", "auto")


def resolve_mask_inference_dtype(choice: str, device_type: str) -> torch.dtype | None:
    """The autocast dtype of the mask head at inference (None: float32, no autocast) for a ``mask_inference_dtype``
    choice on ``device_type``. ``"auto"`` is bfloat16 only on a CPU with native bf16
    (:func:`~ltdet2.utils.cpu.has_native_cpu_bfloat16`): on an AVX2-only CPU bf16 made the mask head 6-7x slower
    (docs/results/speed/inference_bf16_avx2.json); on CUDA it is float32 (not measured there; ask for ``"bfloat16"``
    by name)."""
    if choice == "auto":
        choice = "bfloat16" if device_type == "cpu" and has_native_cpu_bfloat16() else "float32"
    return torch.bfloat16 if choice == "bfloat16" else None


def split_ignored_targets(targets: Instances) -> tuple[Instances, Instances, torch.Tensor | None]:
    """One image's ground truth as the box head samples with it, and as the rest of the heads see it.

    Returns:
        sampling targets: ``targets`` with ``gt_classes`` -1 where ``gt_valid`` is False (a shallow copy; the
            others fields are shared), so that RoIs matched to those boxes get Detectron2's "ignore" label;
        valid targets: the valid boxes only;
        positions: [G] int64, the position of each box among the valid ones (-1 for invalid ones); None when
            every box is valid (the first two are then ``targets`` itself).
    """
    if not targets.has("gt_valid") or bool(targets.gt_valid.all()):
        return targets, targets, None
    valid = targets.gt_valid
    sampling = Instances(targets.image_size, **targets.get_fields())
    sampling.gt_classes = torch.where(valid, targets.gt_classes, -1)
    positions = torch.where(valid, torch.cumsum(valid.long(), 0) - 1, -1)
    return sampling, targets[valid], positions


def sampling_targets(targets: Instances) -> Instances:
    """One image's ground truth as the box head samples with it: :func:`split_ignored_targets`' sampling targets
    (always a shallow copy) with ``gt_indices`` ([G] int64), each box's position among the valid ones (-1 for
    invalid ones). Detectron2's ``label_and_sample_proposals`` copies every ``gt_*`` field of the ground truth onto
    the RoIs matched to it, so the sampled RoIs come back with the index of their box."""
    sampling, _, positions = split_ignored_targets(targets)
    if positions is None:
        sampling = Instances(targets.image_size, **targets.get_fields())
        positions = torch.arange(len(targets), dtype=torch.int64, device=targets.gt_boxes.device)
    sampling.gt_indices = positions
    return sampling


@ROI_HEADS_REGISTRY.register()
class LongTailROIHeads(StandardROIHeads):
    """StandardROIHeads + feature sources + learning-status indicators.

    In training, after proposals are sampled, each feature source sees the iteration
    (:class:`SourceContext`) and may return extra rows (:class:`ExtraRows`): "pooled" rows go
    through the box head with the sampled RoIs, "box_head" rows go straight to the predictor.
    The rows feed the classification loss and, where they carry boxes, the regression loss; never
    the mask head (which only sees the sampled foreground proposals). Every indicator updates itself
    from the predictor's rows, detached (``update_from_predictions``; the class probabilities are the
    predictor's own, :meth:`LongTailOutputLayers.predict_class_probabilities`), before the losses or
    after them as its ``update_timing`` says (LOCE's mean score before, so EBL reads this iteration's
    update; the default after).

    Pooled rows go through the box head in a call of their own, after the sampled RoIs' (no copy of
    the RoIs' pooled features), unless the box head normalises over the batch (BatchNorm in training),
    where they go through with the RoIs as one batch.

    With no sources and no indicators the heads are exactly :class:`StandardROIHeads`.

    Ignored ground truth: targets may carry ``gt_valid`` ([G] bool; :class:`~ltdet2.data.ValidityDatasetMapper`).
    An RoI whose matched ground truth (the matcher's argmax) is invalid and which the matcher labels foreground
    is neither positive nor negative for the box head (Detectron2's label -1, never sampled); RoIs the matcher
    labels background stay negatives. Only the box head's sampling changes: the RPN sees every box (the heads
    never alter its targets), and feature sources and indicators see only the valid ground truth (the RoIs'
    ``gt_indices`` index the valid boxes). Without ``gt_valid``, or with all True, nothing changes.

    In training with feature sources or indicators, :meth:`forward` is StandardROIHeads' with the valid ground truth
    handed to the box branch; otherwise it is StandardROIHeads' own. Nothing is kept between calls but
    :attr:`latest_sampled_proposals`.

    After each training forward, :attr:`latest_sampled_proposals` holds, per image, the sampled RoIs
    (``proposal_boxes``, ``gt_classes``, ``gt_indices`` and, for images with ground truth, ``gt_boxes``), as
    they were sampled (before ``train_on_pred_boxes`` replaces their boxes), for distillation terms that reuse
    the student's RoIs (:class:`~ltdet2.modeling.distillers.SharedRoIKLDistillation`); None before the first.

    A mask head with ``bind_classifier`` (:class:`~ltdet2.modeling.TransferMaskHead`) is given the box predictor's
    ``cls_score`` when the heads are built (the source of its class-specific mask weights).

    Args:
        feature_sources: modules with a ``stage`` and ``forward(context) -> ExtraRows or None``.
        indicators: name -> learning-status indicator (or its LazyConfig); owned (and checkpointed)
            here and bound by name to every module under the heads that reads them (feature sources,
            the predictor's loss or classifier: :class:`~ltdet2.modeling.indicator_links.IndicatorUser`).
        mask_inference_dtype: ``"float32"`` (default, Detectron2's), ``"bfloat16"`` or ``"auto"``: with bfloat16, at
            inference the mask head runs under bf16 autocast (its convolutions and deconvolution; the mask pooler
            stays float32, as torchvision's autocast rule for RoIAlign keeps it) and its ``pred_masks`` come back as
            float32 probabilities. About 2x faster mask head on CPUs with bf16 instructions, 6-7x slower on
            CPUs without them (AVX2); masks differ by bf16 rounding (3 significant digits), so check AP before
            using it (``docs/benchmarks.md``). ``"auto"``: bfloat16 on a CPU with bf16 instructions, float32
            elsewhere (:func:`resolve_mask_inference_dtype`; the choice is logged once). Training is unchanged.
        other arguments: those of :class:`StandardROIHeads`.
    """

    @configurable
    def __init__(
        self,
        *,
        feature_sources: Sequence[nn.Module] = (),
        indicators: dict[str, nn.Module] | None = None,
        mask_inference_dtype: str = "float32",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mask_inference_dtype not in MASK_INFERENCE_DTYPES:
            raise ValueError(
                f"mask_inference_dtype {mask_inference_dtype!r}: expected one of {sorted(MASK_INFERENCE_DTYPES)}"
            )
        self.mask_inference_dtype = mask_inference_dtype
        self._logged_mask_inference_dtype = False
        self.feature_sources = nn.ModuleList(feature_sources)
        # LazyConfig does not instantiate the values of a plain dict; do it here
        self.indicators = nn.ModuleDict({name: instantiate(value) for name, value in (indicators or {}).items()})
        for index, source in enumerate(self.feature_sources):
            if source.stage not in STAGES:
                raise ValueError(
                    f"feature source {index} ({type(source).__name__}) has stage "
                    f"{source.stage!r}; expected one of {STAGES}"
                )
        for name, indicator in self.indicators.items():
            if not callable(getattr(indicator, "update_from_predictions", None)):
                raise TypeError(
                    f"indicator {name!r} ({type(indicator).__name__}) has no "
                    "update_from_predictions(batch); use a LearningStatusIndicator"
                )
            timing = getattr(indicator, "update_timing", "after_loss")
            if timing not in UPDATE_TIMINGS:
                raise ValueError(
                    f"indicator {name!r} ({type(indicator).__name__}) has update_timing {timing!r}; "
                    f"expected one of {UPDATE_TIMINGS}"
                )
        if not self.is_stock and not isinstance(self.box_predictor, LongTailOutputLayers):
            raise TypeError(
                f"LongTailROIHeads with feature sources or indicators needs a LongTailOutputLayers "
                f"box predictor (it trains on extra rows); got {type(self.box_predictor).__name__}"
            )
        self.bind_indicators()
        bind_classifier = getattr(getattr(self, "mask_head", None), "bind_classifier", None)
        if bind_classifier is not None:  # a mask head reading the box classifier (TransferMaskHead)
            bind_classifier(self.box_predictor.cls_score)
        self.latest_sampled_proposals = None

    @classmethod
    def from_config(cls, cfg, input_shape):
        """StandardROIHeads' arguments, plus what ``MODEL.LTDET2`` (:func:`ltdet2.config.yaml_config.add_ltdet2_config`)
        turns on, built as the LazyConfig helpers (``ltdet2.config.loce``, ``.rio``, ``.bacl``) build it: the
        indicators (``"mean_score"`` for EBL / MFS, ``"confusion"`` for FCBL / FHM), the feature sources (MFS, object
        replay, FHM, in that order) and a :class:`LongTailOutputLayers` box predictor (its own ``from_config``) in
        place of Detectron2's.

        With every ``MODEL.LTDET2`` method off the arguments are StandardROIHeads' own (Detectron2's predictor, no
        extra random draw): the heads are StandardROIHeads. Without ``MODEL.LTDET2`` (``add_ltdet2_config`` not
        called) they are too, with a warning."""
        ret = super().from_config(cfg, input_shape)
        if cfg.MODEL.get("LTDET2") is None:
            warnings.warn(
                "MODEL.ROI_HEADS.NAME is LongTailROIHeads but the config has no MODEL.LTDET2 keys: the heads are "
                "Detectron2's StandardROIHeads, with no long-tail method. Call "
                "ltdet2.config.yaml_config.add_ltdet2_config(cfg) before merging the YAML file (scripts/train_net.py "
                "does) and turn methods on under MODEL.LTDET2",
                UserWarning,
                stacklevel=2,
            )
            return ret
        # imported here: the config package may import the modeling one
        from ltdet2.config.yaml_config import check_ltdet2_config, ltdet2_methods_on

        check_ltdet2_config(cfg)
        ret["mask_inference_dtype"] = cfg.MODEL.LTDET2.MASK_INFERENCE_DTYPE
        if not ltdet2_methods_on(cfg):
            return ret
        options = cfg.MODEL.LTDET2
        num_classes = ret["num_classes"]
        box_head_output = ret["box_head"].output_shape
        ret["box_predictor"] = LongTailOutputLayers(cfg, box_head_output)
        feature_dim = box_head_output.channels * (box_head_output.width or 1) * (box_head_output.height or 1)
        pooled_channels = input_shape[ret["box_in_features"][0]].channels
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION

        indicators = {}
        if options.EBL.ENABLED or options.MFS.ENABLED:
            indicators["mean_score"] = MeanScore(
                num_classes=num_classes,
                alpha=options.MEAN_SCORE.ALPHA,
                background_score=options.MEAN_SCORE.BACKGROUND_SCORE,
                sync="global",
                update_timing="before_loss",
            )
        if options.FCBL.ENABLED or options.FHM.ENABLED:
            indicators["confusion"] = SoftConfusionMatrix(num_classes=num_classes, sync="global")
        sources = []
        if options.MFS.ENABLED:
            sources.append(
                MemoryFeatureSampler(
                    num_classes=num_classes,
                    feature_shape=(pooled_channels, resolution, resolution),
                    capacity=options.MFS.CAPACITY,
                    num_sampled_classes=options.MFS.NUM_SAMPLED_CLASSES,
                    per_class=options.MFS.PER_CLASS,
                    indicator="mean_score",
                    storage_dtype=resolve_storage_dtype(options.MFS.STORAGE_DTYPE, "MODEL.LTDET2.MFS.STORAGE_DTYPE"),
                    shared_eta=options.MFS.SHARED_ETA,
                )
            )
        if options.REPLAY.ENABLED:
            train_names = list(cfg.DATASETS.TRAIN)
            if not train_names:
                raise ValueError("MODEL.LTDET2.REPLAY targets the classes of DATASETS.TRAIN, which is empty")
            sources.append(
                ObjectReplay(
                    num_classes=num_classes,
                    feature_dim=feature_dim,
                    dataset_name=train_names[0] if len(train_names) == 1 else train_names,
                    max_images=options.REPLAY.MAX_IMAGES,
                    capacity=options.REPLAY.CAPACITY,
                    per_class=options.REPLAY.PER_CLASS,
                    mode=options.REPLAY.MODE,
                    storage_dtype=resolve_storage_dtype(
                        options.REPLAY.STORAGE_DTYPE, "MODEL.LTDET2.REPLAY.STORAGE_DTYPE"
                    ),
                    sync="local",
                )
            )
        if options.FHM.ENABLED:
            sources.append(
                FeatureHallucination(
                    num_classes=num_classes,
                    feature_dim=feature_dim,
                    num_sampled_classes=options.FHM.NUM_SAMPLED_CLASSES,
                    per_class=options.FHM.PER_CLASS,
                    momentum=options.FHM.MOMENTUM,
                    indicator="confusion",
                )
            )
        ret["indicators"] = indicators
        ret["feature_sources"] = sources
        return ret

    def _forward_mask(self, features, instances):
        """StandardROIHeads' mask branch; at inference with a bfloat16 ``mask_inference_dtype`` under bf16 autocast,
        its ``pred_masks`` cast back to float32."""
        if self.training or not self.mask_on:
            return super()._forward_mask(features, instances)
        device_type = next(iter(features.values())).device.type
        dtype = resolve_mask_inference_dtype(self.mask_inference_dtype, device_type)
        if self.mask_inference_dtype == "auto" and not self._logged_mask_inference_dtype:
            self._logged_mask_inference_dtype = True
            logger.info(
                f"mask_inference_dtype='auto' on {device_type}: the mask head runs in "
                f"{'bfloat16' if dtype is not None else 'float32'} at inference"
            )
        if dtype is None:
            return super()._forward_mask(features, instances)
        with torch.autocast(device_type, dtype=dtype):
            instances = super()._forward_mask(features, instances)
        for instances_per_image in instances:
            instances_per_image.pred_masks = instances_per_image.pred_masks.float()
        return instances

    @property
    def is_stock(self):
        return not self.feature_sources and not self.indicators

    def bind_indicators(self):
        """Gives every module under the heads that reads indicators the ones it names (done at build;
        call again after replacing such a module)."""
        bind_indicator_users(self, self.indicators)

    # --- sampling: which ground-truth box each sampled RoI matched --------------------------------

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals: list[Instances], targets: list[Instances]):
        """Stock sampling, RoIs matched to invalid ground truth left out; also sets ``gt_indices`` (index into
        the image's valid ground truth, -1 for background) on each image's RoIs.

        The indices come with Detectron2's own copy of the matched ground truth's ``gt_*`` fields
        (:func:`sampling_targets`), so the sampling (and its random draws) is StandardROIHeads'."""
        proposals = super().label_and_sample_proposals(proposals, [sampling_targets(t) for t in targets])
        for proposals_per_image in proposals:
            if proposals_per_image.has("gt_indices"):
                is_foreground = proposals_per_image.gt_classes < self.num_classes
                proposals_per_image.gt_indices = torch.where(is_foreground, proposals_per_image.gt_indices, -1)
            else:  # an image without ground truth: no gt_* field was copied
                proposals_per_image.gt_indices = torch.full_like(proposals_per_image.gt_classes, -1)
        self.latest_sampled_proposals = [
            Instances(p.image_size, **{k: p.get(k) for k in _KEPT_ROI_FIELDS if p.has(k)}) for p in proposals
        ]
        return proposals

    # --- training with feature sources and indicators ----------------------------------------------

    def forward(self, images, features, proposals, targets=None):
        """StandardROIHeads' forward. In training with feature sources or indicators, its training step with the
        box branch (:meth:`_forward_box_with_sources`) also given each image's valid ground truth."""
        if not self.training or self.is_stock:
            return super().forward(images, features, proposals, targets)
        assert targets, "'targets' argument is required during training"
        proposals = self.label_and_sample_proposals(proposals, targets)
        valid_targets = [split_ignored_targets(t)[1] for t in targets]
        losses = self._forward_box_with_sources(features, proposals, valid_targets)
        losses.update(self._forward_mask(features, proposals))
        losses.update(self._forward_keypoint(features, proposals))
        return proposals, losses

    def _forward_box_with_sources(
        self, features: dict[str, torch.Tensor], proposals: list[Instances], targets: list[Instances]
    ):
        """The box branch's losses in training: the sampled RoIs' rows and the feature sources' extra rows, the
        indicators updated from them (``targets``: per image, the valid ground truth)."""
        feature_maps = [features[f] for f in self.box_in_features]
        pooled = self.box_pooler(feature_maps, [p.proposal_boxes for p in proposals])
        context = SourceContext(
            proposals=proposals,
            targets=targets,
            pool=lambda boxes: self.box_pooler(feature_maps, [Boxes(b) for b in boxes]),
            box_head=self.box_head,
            pooled_features=pooled,
            box_features=None,
            num_classes=self.num_classes,
        )
        pooled_rows = self._run_sources("pooled", context)
        num_rois = pooled.shape[0]
        context.box_features, pooled_rows = self._box_head_with_rows(pooled, pooled_rows)
        head_rows = self._run_sources("box_head", context)
        extra_rows = ExtraRowsBatch(pooled_rows + head_rows)

        predictions = self.box_predictor(torch.cat([context.box_features] + [r.features for r in extra_rows.rows]))
        del pooled
        batch = self._predictor_batch(predictions[0], proposals, targets, extra_rows)
        self._update_indicators(batch, "before_loss")
        losses = self.box_predictor.losses(predictions, proposals, extra_rows)
        self._update_indicators(batch, "after_loss")

        if self.train_on_pred_boxes:
            with torch.no_grad():
                roi_predictions = (predictions[0][:num_rois], predictions[1][:num_rois])
                pred_boxes = self.box_predictor.predict_boxes_for_gt_classes(roi_predictions, proposals)
                for proposals_per_image, pred_boxes_per_image in zip(proposals, pred_boxes):
                    proposals_per_image.proposal_boxes = Boxes(pred_boxes_per_image)
        return losses

    def _run_sources(self, stage, context):
        rows = []
        for index, source in enumerate(self.feature_sources):
            if source.stage != stage:
                continue
            source_rows = source(context)
            if source_rows is not None and len(source_rows) > 0:
                source_rows.source_index = index
                rows.append(source_rows)
        return rows

    def _box_head_with_rows(self, pooled, pooled_rows):
        """Box-head features of the sampled RoIs ([N, D]) and the pooled rows carrying theirs."""
        if not pooled_rows:
            return self.box_head(pooled), []
        row_features = torch.cat([r.features for r in pooled_rows])
        if self._box_head_normalizes_over_batch():
            head_output = self.box_head(torch.cat([pooled, row_features]))
            roi_output, row_output = head_output[: pooled.shape[0]], head_output[pooled.shape[0] :]
        else:
            roi_output, row_output = self.box_head(pooled), self.box_head(row_features)
        row_outputs = row_output.split([len(r) for r in pooled_rows])
        return roi_output, [r.with_features(f) for r, f in zip(pooled_rows, row_outputs)]

    def _box_head_normalizes_over_batch(self):
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in self.box_head.modules())

    def _predictor_batch(self, logits, proposals, targets, extra_rows: ExtraRowsBatch):
        if not self.indicators:
            return None
        labels, object_ids = predictor_row_objects(proposals, targets, extra_rows, self.num_classes)
        return predictor_batch(
            self.indicators,
            logits,
            labels,
            object_ids,
            self.box_predictor.predict_class_probabilities,
            num_classes=self.num_classes,
            num_logits=getattr(self.box_predictor, "num_logits", None),  # LongTailOutputLayers: scoring.num_logits(C)
        )

    def _update_indicators(self, batch, timing):
        if batch is not None:
            update_indicators(self.indicators, batch, timing)
