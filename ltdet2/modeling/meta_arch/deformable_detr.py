"""Two-stage Deformable DETR with iterative box refinement (Zhu et al., ICLR 2021) as a Detectron2 meta-architecture:
``transformers``' :class:`DeformableDetrForObjectDetection` (the transformer, the heads, the Hungarian matcher and the
losses) on a Detectron2 backbone and Detectron2's data path (``DatasetMapper`` dicts in, ``Instances`` out). The
detector of the step-wise paper (Dong et al., ICCV 2023; ``../shared/reference/stepwise.md``).

``transformers`` is imported when a model is built (``import ltdet2`` does not need it). The model is always built
from a config, never with ``from_pretrained``: nothing is downloaded, and the multi-scale deformable attention is
``transformers``' pure-PyTorch one (hub kernels are only swapped in by ``kernelize``, which ``from_pretrained`` calls).
"""

import contextlib
import math
import re

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils import comm

__all__ = ["DeformableDETR", "DeformableDetrLRFactor", "AdamWWithGradClip", "box_xyxy_to_cxcywh", "box_cxcywh_to_xyxy"]

# the loss terms of transformers' criterion and the key of their weight in ``loss_weights``
_LOSS_TERMS = {"loss_ce": "cls", "loss_bbox": "bbox", "loss_giou": "giou"}


# a class head's entries in a state dict: detr.class_embed.<i> and detr.model.decoder.class_embed.<i> (shared)
_CLASS_HEAD_KEY = re.compile(r"(^|\.)class_embed\.\d+\.(weight|bias)$")


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def _refuse_accelerate_normalisation():
    """``transformers``' criterion already divides by the mean box count over the processes when ``accelerate``'s
    ``PartialState`` is set up; the wrapper's correction would then apply twice: refused."""
    from transformers.utils import is_accelerate_available

    if is_accelerate_available():
        from accelerate import PartialState

        if PartialState._shared_state:
            raise RuntimeError(
                "DeformableDETR: accelerate's PartialState is initialised, so transformers' loss already normalises "
                "by the mean box count over the processes, and this wrapper's correction (Detectron2's launch, "
                "torch.distributed) would apply a second time; train with Detectron2's launcher without accelerate"
            )


class _BackboneAdapter(nn.Module):
    """A Detectron2 backbone in the place of ``transformers``' ``DeformableDetrConvEncoder``: ``forward(pixel_values,
    pixel_mask)`` gives ``[(feature_map, mask)]`` for ``in_features`` (the mask resized to each map as the encoder does:
    nearest, True = image), and ``intermediate_channel_sizes`` their channels (``DeformableDetrModel`` builds its
    ``input_proj`` from them, and the extra levels on the last map). Holds no parameters: the backbone is the
    meta-architecture's ``backbone`` (a plain attribute here, so that its parameters have one name)."""

    def __init__(self, backbone: Backbone, in_features):
        super().__init__()
        object.__setattr__(self, "backbone", backbone)
        shapes = backbone.output_shape()
        self.in_features = list(in_features)
        self.intermediate_channel_sizes = [shapes[name].channels for name in self.in_features]

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor):
        features = self.backbone(pixel_values)
        out = []
        for name in self.in_features:
            feature_map = features[name]
            mask = F.interpolate(pixel_mask[None].float(), size=feature_map.shape[-2:]).to(torch.bool)[0]
            out.append((feature_map, mask))
        return out


@torch.no_grad()
def _reset_deformable_attention(attn: nn.Module):
    """The official ``MSDeformAttn._reset_parameters``: zero offsets with a bias pointing each head in its own
    direction (k-th point k times as far), uniform attention weights, xavier value / output projections."""
    nn.init.constant_(attn.sampling_offsets.weight, 0.0)
    thetas = torch.arange(attn.n_heads, dtype=torch.float32) * (2.0 * math.pi / attn.n_heads)
    grid = torch.stack([thetas.cos(), thetas.sin()], -1)
    grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(attn.n_heads, 1, 1, 2)
    grid = grid.repeat(1, attn.n_levels, attn.n_points, 1)
    for i in range(attn.n_points):
        grid[:, :, i, :] *= i + 1
    attn.sampling_offsets.bias.copy_(grid.view(-1))
    nn.init.constant_(attn.attention_weights.weight, 0.0)
    nn.init.constant_(attn.attention_weights.bias, 0.0)
    nn.init.xavier_uniform_(attn.value_proj.weight)
    nn.init.constant_(attn.value_proj.bias, 0.0)
    nn.init.xavier_uniform_(attn.output_proj.weight)
    nn.init.constant_(attn.output_proj.bias, 0.0)


@contextlib.contextmanager
def _conv_encoder(encoder: nn.Module):
    """While ``DeformableDetrModel`` is built, its ``DeformableDetrConvEncoder(config)`` is ``encoder``: the model is
    built around it (its ``input_proj`` from the encoder's channels) without building and discarding a backbone of
    ``transformers``' own."""
    from transformers.models.deformable_detr import modeling_deformable_detr as hf

    original = hf.DeformableDetrConvEncoder
    hf.DeformableDetrConvEncoder = lambda config: encoder
    try:
        yield
    finally:
        hf.DeformableDetrConvEncoder = original


@META_ARCH_REGISTRY.register()
class DeformableDETR(nn.Module):
    """Deformable DETR (two-stage, iterative box refinement by default) on a Detectron2 backbone.

    ``self.detr`` is ``transformers``' :class:`DeformableDetrForObjectDetection` with ``detr.model.backbone`` replaced
    by an adapter around ``self.backbone`` (a Detectron2 :class:`Backbone`, e.g. a ResNet with ``out_features``
    res3-res5: strides 8, 16, 32; ``DeformableDetrModel`` adds the stride-64 level with a 3x3 stride-2 convolution in
    ``input_proj``). Parameter names are ``backbone.*`` and ``detr.*``. The heads ``detr.class_embed`` and
    ``detr.bbox_embed`` (one per decoder layer, plus the encoder's proposal head last in two-stage mode) share their
    parameters with ``detr.model.decoder``'s, which refines the boxes with them: ``named_parameters`` names them
    ``detr.model.decoder.{class,bbox}_embed.*`` (met first), the state dict holds both names.

    Training: the images are normalised with ``pixel_mean``/``pixel_std`` and padded together (zeros) with a pixel
    mask (1 = image); the ground truth becomes ``transformers``' labels (boxes cxcywh normalised by each image's
    unpadded size, ``class_labels``). The losses are those ``DeformableDetrForObjectDetection`` computes with the labels
    (its Hungarian matcher with costs ``matcher_costs``, sigmoid focal loss with ``focal_alpha``, L1 and GIoU, on the
    last decoder layer and, with ``aux_loss``, every other one: ``loss_ce``, ``loss_bbox``, ``loss_giou``, and
    ``loss_*_{i}`` for layer i), plus, in two-stage mode with ``encoder_loss``, the official code's loss of the
    encoder's proposals (the same criterion against class-agnostic targets, ``loss_*_enc``; ``transformers`` does not
    compute it, and without it the proposal head never trains). Each term is multiplied by its weight in
    ``loss_weights`` (``transformers`` weighs the classification term 1; the official code 2). With several processes
    the terms are normalised by the mean number of boxes over the processes, as the official code does
    (``transformers`` does that only under ``accelerate``). The cardinality error is not returned (no gradient).

    Inference (Deformable DETR's ``PostProcess``): sigmoid scores of every (query, class), the top ``num_detections``
    of them per image with their query's box; boxes in the input image's pixels, then
    :func:`detector_postprocess` to the dict's ``height``/``width`` (clipped; empty boxes dropped).

    Exemplar scores (step-wise): :meth:`annotation_scores`, the Hungarian-matched query's sigmoids of each annotation
    (what :func:`~ltdet2.engine.exemplar_scoring.score_annotations` calls). The training step is
    :meth:`training_outputs` then :meth:`losses` (:class:`~ltdet2.modeling.meta_arch.TeacherStudentDETR` runs them
    with hooks).

    Args:
        backbone: a Detectron2 backbone whose ``in_features`` outputs go to the transformer (fine strides first).
        num_classes: the class count (sigmoid scores, no background column).
        in_features: the backbone outputs used (default: all of ``backbone.output_shape()``, by stride).
        d_model, encoder_layers, decoder_layers, num_heads, ffn_dim, n_points, dropout: the transformer's sizes
            (``DeformableDetrConfig``'s ``d_model``, ``{encoder,decoder}_layers``, ``*_attention_heads``,
            ``*_ffn_dim``, ``*_n_points``, ``dropout``; the paper: 256, 6, 6, 8, 1024, 4, 0.1).
        num_feature_levels: levels of the multi-scale attention (the backbone's plus extra stride-2 convolutions).
        num_queries: object queries (two-stage: the encoder proposals kept); the paper 300.
        two_stage, with_box_refine: the Deformable DETR variants (two-stage needs box refinement).
        aux_loss: losses on every decoder layer (the official default), not only the last.
        encoder_loss: the two-stage encoder proposals' loss (official code); no effect without ``two_stage``.
        matcher_costs: ``{"cls", "bbox", "giou"}`` costs of the Hungarian matcher (official 2, 5, 2).
        loss_weights: ``{"cls", "bbox", "giou"}`` weights of the loss terms (official 2, 5, 2; the step-wise code
            uses cls 3; ``transformers``' own weighting is 1, 5, 2).
        focal_alpha: the focal loss's alpha (0.25).
        num_detections: detections per image at inference (LVIS: 300).
        official_init: re-initialise the transformer and heads as the official code does (xavier transformer
            weights, classification bias at the prior 0.01, zero last box layer, identical heads on every layer);
            ``transformers``' initialisation (normal(0.02)) is meant for loading checkpoints. Biases of the
            transformer's linear layers stay zero.
        pixel_mean, pixel_std, input_format: as :class:`GeneralizedRCNN`.
        detr_config: further ``DeformableDetrConfig`` arguments (e.g. ``activation_function``).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        num_classes: int,
        in_features=None,
        d_model: int = 256,
        encoder_layers: int = 6,
        decoder_layers: int = 6,
        num_heads: int = 8,
        ffn_dim: int = 1024,
        n_points: int = 4,
        dropout: float = 0.1,
        num_feature_levels: int = 4,
        num_queries: int = 300,
        two_stage: bool = True,
        with_box_refine: bool = True,
        aux_loss: bool = True,
        encoder_loss: bool = True,
        matcher_costs=None,
        loss_weights=None,
        focal_alpha: float = 0.25,
        num_detections: int = 300,
        official_init: bool = True,
        pixel_mean=(103.530, 116.280, 123.675),
        pixel_std=(1.0, 1.0, 1.0),
        input_format: str = "BGR",
        detr_config=None,
    ):
        super().__init__()
        from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection

        shapes = backbone.output_shape()
        if in_features is None:
            in_features = sorted(shapes, key=lambda name: shapes[name].stride)
        in_features = list(in_features)
        missing = [name for name in in_features if name not in shapes]
        if missing:
            raise ValueError(f"DeformableDETR: in_features {missing} are not outputs of the backbone ({list(shapes)})")
        if num_feature_levels < len(in_features):
            raise ValueError(
                f"DeformableDETR: num_feature_levels={num_feature_levels} is fewer than the backbone's in_features "
                f"{in_features}"
            )
        self.backbone = backbone
        self.in_features = in_features
        # strides of every level, the extra ones included (for the check of the encoder's size in two-stage mode)
        last = shapes[in_features[-1]].stride
        self.level_strides = [shapes[name].stride for name in in_features] + [
            last * 2 ** (k + 1) for k in range(num_feature_levels - len(in_features))
        ]
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.two_stage = two_stage
        self.encoder_loss = encoder_loss
        self.num_detections = num_detections
        self.input_format = input_format
        costs = {"cls": 2, "bbox": 5, "giou": 2, **(matcher_costs or {})}
        self.loss_weights = {"cls": 2.0, "bbox": 5.0, "giou": 2.0, **(loss_weights or {})}
        unknown = set(costs) - set(_LOSS_TERMS.values()) or set(self.loss_weights) - set(_LOSS_TERMS.values())
        if unknown:
            raise ValueError(
                f"DeformableDETR: matcher_costs / loss_weights keys are 'cls', 'bbox', 'giou'; got {unknown}"
            )

        config = DeformableDetrConfig(
            use_timm_backbone=False,  # only a config: the backbone is ours (_conv_encoder)
            num_labels=num_classes,
            d_model=d_model,
            encoder_layers=encoder_layers,
            decoder_layers=decoder_layers,
            encoder_attention_heads=num_heads,
            decoder_attention_heads=num_heads,
            encoder_ffn_dim=ffn_dim,
            decoder_ffn_dim=ffn_dim,
            encoder_n_points=n_points,
            decoder_n_points=n_points,
            dropout=dropout,
            num_feature_levels=num_feature_levels,
            num_queries=num_queries,
            two_stage_num_proposals=num_queries,
            two_stage=two_stage,
            with_box_refine=with_box_refine,
            auxiliary_loss=aux_loss,
            class_cost=costs["cls"],
            bbox_cost=costs["bbox"],
            giou_cost=costs["giou"],
            focal_alpha=focal_alpha,
            disable_custom_kernels=True,
            **(detr_config or {}),
        )
        with _conv_encoder(_BackboneAdapter(backbone, in_features)):
            self.detr = DeformableDetrForObjectDetection(config)
        self._check_shared_heads()
        if official_init:
            self._reset_parameters_as_official()

        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        if self.pixel_mean.shape != self.pixel_std.shape:
            raise ValueError(f"DeformableDETR: pixel_mean {pixel_mean} and pixel_std {pixel_std} have different shapes")

    @staticmethod
    def checkpoint_class_rows_unlike(state_dict, num_classes: int) -> list:
        """(key, shape, rows expected) of a checkpoint's class-head entries (``...class_embed.<i>.weight`` /
        ``.bias``: ``num_classes`` rows, sigmoid scores, no background row) that hold another count; the phase runner
        checks a teacher's checkpoint with it before the phase trains."""
        return [
            (key, tuple(value.shape), num_classes)
            for key, value in state_dict.items()
            if _CLASS_HEAD_KEY.search(key) and int(value.shape[0]) != num_classes
        ]

    @classmethod
    def from_config(cls, cfg):
        raise NotImplementedError(
            "DeformableDETR is built from a LazyConfig (configs/models/deformable_detr_r18_small.py), not a yacs config"
        )

    @property
    def device(self):
        return self.pixel_mean.device

    # --- construction ------------------------------------------------------------------------------------------------

    def _check_shared_heads(self):
        """The decoder's refinement (and, two-stage, proposal) heads are the detector's own heads, as in the official
        code (``transformers`` ties them when the model is built; checked, since its refinement depends on it)."""
        detr = self.detr
        pairs = []
        if detr.model.decoder.bbox_embed is not None:
            pairs.append((detr.model.decoder.bbox_embed, detr.bbox_embed))
        if detr.model.decoder.class_embed is not None:
            pairs.append((detr.model.decoder.class_embed, detr.class_embed))
        for decoder_heads, heads in pairs:
            for a, b in zip(decoder_heads.parameters(), heads.parameters()):
                if a is not b:
                    raise RuntimeError(
                        "DeformableDETR: transformers did not tie detr.model.decoder's heads to the detector's "
                        "(class_embed / bbox_embed); this transformers version builds Deformable DETR differently"
                    )

    @torch.no_grad()
    def _reset_parameters_as_official(self):
        """The official code's initialisation (``deformable_detr.py``, ``deformable_transformer.py``)."""
        detr = self.detr
        transformer = [detr.model.encoder, detr.model.decoder.layers]
        for name in ("enc_output", "pos_trans", "reference_points"):
            if hasattr(detr.model, name):
                transformer.append(getattr(detr.model, name))
        for module in transformer:
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        from transformers.models.deformable_detr.modeling_deformable_detr import (
            DeformableDetrMultiscaleDeformableAttention,
        )

        for module in detr.model.modules():
            if isinstance(module, DeformableDetrMultiscaleDeformableAttention):
                _reset_deformable_attention(module)
        nn.init.normal_(detr.model.level_embed)
        for proj in detr.model.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        # one head initialised, then copied to every layer (the official code clones an initialised head)
        bias = -math.log((1 - 0.01) / 0.01)
        first_class, first_box = detr.class_embed[0], detr.bbox_embed[0]
        first_class.reset_parameters()
        nn.init.constant_(first_class.bias, bias)
        for layer in first_box.layers:
            layer.reset_parameters()
        nn.init.constant_(first_box.layers[-1].weight, 0)
        nn.init.constant_(first_box.layers[-1].bias, 0)
        if not self.two_stage:
            first_box.layers[-1].bias[2:] = -2.0
        for head in detr.class_embed[1:]:
            head.load_state_dict(first_class.state_dict())
        for head in detr.bbox_embed[1:]:
            head.load_state_dict(first_box.state_dict())

    # --- inputs ------------------------------------------------------------------------------------------------------

    def preprocess_image(self, batched_inputs):
        """Normalised images padded together (:class:`ImageList`) and the pixel mask (B, H, W), 1 on the images."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images)
        mask = torch.zeros(images.tensor.shape[0], *images.tensor.shape[-2:], dtype=torch.long, device=self.device)
        for i, (h, w) in enumerate(images.image_sizes):
            mask[i, :h, :w] = 1
        self._check_encoder_size(images.tensor.shape[-2:])
        return images, mask

    def _check_encoder_size(self, size):
        """Two-stage mode keeps ``num_queries`` of the encoder's positions: the padded batch must have as many."""
        if not self.two_stage:
            return
        height, width = size
        positions = sum(math.ceil(height / s) * math.ceil(width / s) for s in self.level_strides)
        if positions < self.num_queries:
            raise ValueError(
                f"DeformableDETR: a {height}x{width} batch gives the encoder {positions} positions (strides "
                f"{self.level_strides}), fewer than num_queries={self.num_queries}, the proposals two-stage mode "
                f"keeps: use larger images or fewer queries"
            )

    @staticmethod
    def targets_from_instances(instances, image_sizes, device):
        """``transformers``' labels: per image ``class_labels`` and ``boxes`` (cx, cy, w, h) divided by the image's
        unpadded (width, height)."""
        return DeformableDETR.normalized_targets(
            [inst.gt_boxes.tensor for inst in instances], [inst.gt_classes for inst in instances], image_sizes, device
        )

    @staticmethod
    def normalized_targets(boxes, classes, image_sizes, device):
        """``transformers``' labels from per-image ``[G, 4]`` xyxy ``boxes`` in input-image pixels and ``[G]``
        contiguous ``classes``: ``class_labels`` and ``boxes`` (cx, cy, w, h) divided by the image's unpadded
        (width, height)."""
        targets = []
        for image_boxes, image_classes, (h, w) in zip(boxes, classes, image_sizes):
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
            image_boxes = image_boxes.to(device=device, dtype=torch.float32)
            targets.append(
                {"class_labels": image_classes.to(device), "boxes": box_xyxy_to_cxcywh(image_boxes / scale)},
            )
        return targets

    def matcher(self):
        """``transformers``' Hungarian matcher with the model's costs (``matcher_costs``), as its criterion has it."""
        from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher

        config = self.detr.config
        return DeformableDetrHungarianMatcher(
            class_cost=config.class_cost, bbox_cost=config.bbox_cost, giou_cost=config.giou_cost
        )

    # --- forward -----------------------------------------------------------------------------------------------------

    def forward(self, batched_inputs):
        if not self.training:
            return self.inference(batched_inputs)
        _, _, targets, outputs = self.training_outputs(batched_inputs)
        return self.losses(outputs, targets)

    def training_outputs(self, batched_inputs):
        """The training step before the losses: ``(images, mask, targets, outputs)``, the padded :class:`ImageList`,
        the pixel mask, ``transformers``' labels and ``DeformableDetrForObjectDetection``'s output with them."""
        if "instances" not in batched_inputs[0]:
            raise ValueError("DeformableDETR: training inputs need 'instances' (DatasetMapper with is_train=True)")
        images, mask = self.preprocess_image(batched_inputs)
        targets = self.targets_from_instances([x["instances"] for x in batched_inputs], images.image_sizes, self.device)
        outputs = self.detr(pixel_values=images.tensor, pixel_mask=mask, labels=targets)
        return images, mask, targets, outputs

    def losses(self, outputs, targets):
        """The weighted loss terms (Detectron2's dict of scalars) from ``DeformableDetrForObjectDetection``'s output
        with labels, plus the encoder's terms in two-stage mode."""
        terms = {k: v for k, v in outputs.loss_dict.items() if not k.startswith("cardinality_error")}
        if self.two_stage and self.encoder_loss:
            terms.update(self.encoder_losses(outputs, targets))
        scale = self._num_boxes_correction(targets)
        losses = {}
        for name, value in terms.items():
            base = next((t for t in _LOSS_TERMS if name == t or name.startswith(t + "_")), None)
            if base is None:
                raise KeyError(
                    f"DeformableDETR: transformers returned a loss term {name!r} this wrapper has no weight for"
                )
            weight = self.loss_weights[_LOSS_TERMS[base]]
            losses[name] = value * (weight * scale if scale is not None else weight)
        return losses

    def encoder_losses(self, outputs, targets):
        """The official code's ``enc_outputs`` terms: ``transformers``' criterion on the encoder's proposals
        (sigmoid of the proposal boxes, all classes scored) against the same boxes with every label 0."""
        from transformers.loss.loss_deformable_detr import DeformableDetrImageLoss

        config = self.detr.config
        criterion = DeformableDetrImageLoss(
            matcher=self.matcher(),
            num_classes=config.num_labels,
            focal_alpha=config.focal_alpha,
            losses=["labels", "boxes"],
        )
        enc_outputs = {
            "logits": outputs.enc_outputs_class,
            "pred_boxes": outputs.enc_outputs_coord_logits.sigmoid(),
        }
        binary = [{"class_labels": torch.zeros_like(t["class_labels"]), "boxes": t["boxes"]} for t in targets]
        return {f"{k}_enc": v for k, v in criterion(enc_outputs, binary).items()}

    def _num_boxes_correction(self, targets):
        """With several processes: (this process's box count) / (the mean count over processes), both at least 1,
        which turns ``transformers``' normalisation by the local count into the official one; None with one."""
        if comm.get_world_size() == 1:
            return None
        _refuse_accelerate_normalisation()
        local = float(sum(len(t["class_labels"]) for t in targets))
        total = torch.tensor([local], device=self.device)
        torch.distributed.all_reduce(total)
        return max(local, 1.0) / max(total.item() / comm.get_world_size(), 1.0)

    @torch.no_grad()
    def inference(self, batched_inputs, do_postprocess: bool = True):
        images, mask = self.preprocess_image(batched_inputs)
        outputs = self.detr(pixel_values=images.tensor, pixel_mask=mask)
        results = self.detections(outputs.logits, outputs.pred_boxes, images.image_sizes)
        if not do_postprocess:
            return results
        processed = []
        for result, x, size in zip(results, batched_inputs, images.image_sizes):
            height, width = x.get("height", size[0]), x.get("width", size[1])
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed

    @torch.no_grad()
    def annotation_scores(self, inputs, score: str = "max_foreground") -> torch.Tensor:
        """Exemplar scores (step-wise, ``../shared/reference/stepwise.md`` §2.2) of the annotations of a batch of
        :class:`~ltdet2.engine.exemplar_scoring.AnnotationBoxMapper` outputs (``image``, ``boxes`` xyxy in the
        resized image's pixels, ``classes`` contiguous): ``[sum G_i]`` float, in the inputs' order.

        The model runs as at inference (call it in eval mode); the last decoder layer's queries are
        Hungarian-matched to each image's annotations with the model's own matcher (:meth:`matcher`: its costs,
        boxes normalised by the image's unpadded size as in training). An annotation's score is its matched query's
        largest sigmoid over the classes (``"max_foreground"``, the official ``deformable_detr_data.py:354-356``) or
        its sigmoid of the annotation's class (``"ground_truth"``). An image with more annotations than queries
        leaves some unmatched: they score 0.
        """
        if score not in ("max_foreground", "ground_truth"):
            raise ValueError(f"DeformableDETR.annotation_scores: score={score!r}; expected max_foreground/ground_truth")
        images, mask = self.preprocess_image(inputs)
        outputs = self.detr(pixel_values=images.tensor, pixel_mask=mask)
        device = outputs.logits.device
        boxes = [x["boxes"] for x in inputs]
        classes = [x["classes"].to(device=device, dtype=torch.long) for x in inputs]
        counts = [len(b) for b in boxes]
        scores = outputs.logits.new_zeros(sum(counts), dtype=torch.float32)
        if not scores.numel():
            return scores
        targets = self.normalized_targets(boxes, classes, images.image_sizes, device)
        indices = self.matcher()({"logits": outputs.logits, "pred_boxes": outputs.pred_boxes}, targets)
        starts = torch.tensor([0, *counts[:-1]], device=device).cumsum(0)
        image = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)]).to(device)
        query = torch.cat([q for q, _ in indices]).to(device)
        row = torch.cat([a.to(device) + starts[i] for i, (_, a) in enumerate(indices)])  # annotation rows matched
        probs = outputs.logits[image, query].float().sigmoid()  # [M, C]
        if score == "max_foreground":
            matched = probs.max(dim=1).values
        else:
            matched = probs.gather(1, torch.cat(classes)[row, None])[:, 0]
        scores[row] = matched
        return scores

    def detections(self, logits, pred_boxes, image_sizes):
        """Deformable DETR's ``PostProcess``: per image the top ``num_detections`` (query, class) sigmoid scores, with
        the query's box in the input image's pixels (``Instances`` of ``image_size``)."""
        batch, queries, classes = logits.shape
        k = min(self.num_detections, queries * classes)
        scores, index = logits.sigmoid().flatten(1).topk(k, dim=1)
        query, labels = index // classes, index % classes
        boxes = box_cxcywh_to_xyxy(pred_boxes.gather(1, query.unsqueeze(-1).expand(-1, -1, 4)))
        results = []
        for i, (h, w) in enumerate(image_sizes):
            result = Instances((h, w))
            result.pred_boxes = Boxes(boxes[i] * boxes.new_tensor([w, h, w, h]))
            result.scores = scores[i]
            result.pred_classes = labels[i]
            results.append(result)
        return results


class DeformableDetrLRFactor:
    """``lr_factor_func`` of Detectron2's ``get_default_optimizer_params`` for Deformable DETR: the official code's
    learning rates relative to the base one: ``backbone`` for the backbone's parameters (``backbone.*``; official 0.1,
    lr 2e-5), ``linear_proj`` for the deformable attention's sampling offsets and the reference points (official 0.1),
    1 for the rest."""

    def __init__(self, backbone: float = 0.1, linear_proj: float = 0.1):
        self.backbone = backbone
        self.linear_proj = linear_proj

    def __call__(self, name: str) -> float:
        if name.startswith("backbone."):
            return self.backbone
        if "sampling_offsets" in name or "reference_points" in name:
            return self.linear_proj
        return 1.0


class AdamWWithGradClip(torch.optim.AdamW):
    """AdamW that first clips the gradient norm of all its parameters together to ``clip_max_norm`` (DETR's
    ``--clip_max_norm``, 0.1 for Deformable DETR; 0 or None: no clipping). Detectron2's clipping of LazyConfig
    optimizers is per parameter (``maybe_add_gradient_clipping``); this is the global one. Under AMP the trainer's
    grad scaler unscales the gradients before it calls ``step``, so the norm is that of the true gradients."""

    def __init__(self, params, *, clip_max_norm: float | None = 0.1, **kwargs):
        super().__init__(params, **kwargs)
        self.clip_max_norm = clip_max_norm

    def step(self, closure=None):
        if self.clip_max_norm:
            params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip_max_norm)
        return super().step(closure)
