"""Training ltdet2's methods from YAML (yacs) configs with Detectron2's :class:`DefaultTrainer`.

:class:`LongTailTrainer` is the ``DefaultTrainer`` of ``scripts/train_net.py`` (Detectron2's ``tools/train_net.py``
for ltdet2): the model from the config (``MODEL.LTDET2``: :func:`ltdet2.config.yaml_config.add_ltdet2_config`, read by
:meth:`ltdet2.modeling.LongTailROIHeads.from_config`), frozen as ``MODEL.LTDET2.TRAINABLE`` says
(:func:`ltdet2.engine.freezing.freeze_all_but`, the function the LazyConfig engine applies ``train.trainable`` with),
the training loader with ltdet2's repeat-factor sampler (``MODEL.LTDET2.RFS``) and BACL's copy-paste mapper
(``MODEL.LTDET2.COPY_PASTE``), LOCE's memory warm-up (``MODEL.LTDET2.MEMORY_WARMUP``: :class:`YAMLMemoryWarmup`, the
hook :class:`ltdet2.hooks.MemoryWarmup` reading a yacs config) and :class:`~ltdet2.evaluation.LTLVISEvaluator` for
LVIS-style data (LT-Shapes, LVIS, :func:`ltdet2.data.register_lvis_format_dataset`). Importing this module registers
LT-Shapes (``lt_shapes_train`` / ``lt_shapes_val``) and ltdet2's heads in Detectron2's registries.

What the LazyConfig engine adds beyond Detectron2's trainer (phases, the exact resume of the data stream, stop on a
signal, named divergence errors) is not here: a YAML config trains one phase, as Detectron2's script does. A
decoupled fine-tune (LOCE stage 2, BACL stage 2) is its own YAML that starts from ``MODEL.WEIGHTS``, the pretrain's
``model_final.pth``.
"""

import functools
import logging
import os
from collections import OrderedDict

from omegaconf import OmegaConf

from detectron2.data import (
    DatasetMapper,
    MetadataCatalog,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY

import ltdet2.data  # noqa: F401  registers lt_shapes_train / lt_shapes_val
from ltdet2.data.copy_paste import CopyPasteMapper
from ltdet2.data.samplers import repeat_factor_sampler
from ltdet2.engine.freezing import check_frozen_terms, freeze_all_but
from ltdet2.evaluation import LTLVISEvaluator
from ltdet2.hooks.memory_warmup import MemoryWarmup
from ltdet2.layers import FastCPUROIPooler
from ltdet2.modeling import LongTailROIHeads

from .yaml_config import check_ltdet2_config, ltdet2_methods_on

__all__ = [
    "LongTailTrainer",
    "YAMLMemoryWarmup",
    "build_evaluator",
    "build_train_loader",
    "build_train_mapper",
    "build_train_sampler",
    "check_yaml_config",
    "train_dataset_dicts",
    "trainable_patterns",
]

logger = logging.getLogger("detectron2")


def check_yaml_config(cfg):
    """:func:`~ltdet2.config.yaml_config.check_ltdet2_config`, and a refusal of methods turned on under
    ``MODEL.LTDET2`` for ROI heads that would not build them (``MODEL.ROI_HEADS.NAME`` other than
    ``LongTailROIHeads`` or a subclass): they would be silently off."""
    check_ltdet2_config(cfg)
    on = ltdet2_methods_on(cfg)
    if not on:
        return
    name = cfg.MODEL.ROI_HEADS.NAME
    try:
        heads = ROI_HEADS_REGISTRY.get(name)
    except KeyError:
        return  # Detectron2 names the unknown heads when it builds them
    if not (isinstance(heads, type) and issubclass(heads, LongTailROIHeads)):
        raise ValueError(
            f"MODEL.LTDET2 turns on {on}, but MODEL.ROI_HEADS.NAME is {name!r}, which does not read MODEL.LTDET2: set "
            "MODEL.ROI_HEADS.NAME: LongTailROIHeads"
        )


def trainable_patterns(cfg):
    """``MODEL.LTDET2.TRAINABLE`` as ``freeze_all_but`` takes it: the list of regexes, None (all train) when empty
    or without ``MODEL.LTDET2``."""
    options = cfg.MODEL.get("LTDET2")
    patterns = list(options.TRAINABLE) if options is not None else []
    return patterns or None


def _train_names(cfg):
    names = list(cfg.DATASETS.TRAIN)
    return names[0] if len(names) == 1 else names


def train_dataset_dicts(cfg):
    """The training dataset dicts, as Detectron2's ``build_detection_train_loader(cfg)`` loads them."""
    return get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )


def build_train_mapper(cfg, dataset_dicts=None):
    """The training mapper: :class:`~ltdet2.data.CopyPasteMapper` with ``MODEL.LTDET2.COPY_PASTE`` (its sources:
    ``dataset_dicts``, by default :func:`train_dataset_dicts`), else Detectron2's ``DatasetMapper(cfg, True)``."""
    options = cfg.MODEL.get("LTDET2")
    if options is None or not options.COPY_PASTE.ENABLED:
        return DatasetMapper(cfg, True)
    copy_paste = options.COPY_PASTE
    return CopyPasteMapper(
        dataset_dicts=train_dataset_dicts(cfg) if dataset_dicts is None else dataset_dicts,
        image_size=copy_paste.IMAGE_SIZE,
        scale_range=tuple(copy_paste.SCALE_RANGE),
        image_format=cfg.INPUT.FORMAT,
        use_instance_mask=cfg.MODEL.MASK_ON,
        instance_mask_format=cfg.INPUT.MASK_FORMAT,
        box_shift_threshold=copy_paste.BOX_SHIFT_THRESHOLD,
        mask_area_threshold=copy_paste.MASK_AREA_THRESHOLD,
        dataset_name=_train_names(cfg),
    )


def build_train_sampler(cfg, dataset_dicts):
    """ltdet2's repeat-factor sampler over ``dataset_dicts`` with ``MODEL.LTDET2.RFS`` (as
    ``ltdet2.config.rio.add_rfs``: a seed shared by all processes, drawn from the RNG ``SEED`` sets); None:
    Detectron2's ``DATALOADER.SAMPLER_TRAIN``."""
    options = cfg.MODEL.get("LTDET2")
    if options is None or not options.RFS.ENABLED:
        return None
    return repeat_factor_sampler(dataset_dicts, threshold=options.RFS.THRESHOLD, power=options.RFS.POWER, seed=None)


def build_train_loader(cfg):
    """Detectron2's ``build_detection_train_loader(cfg)`` with :func:`build_train_mapper` and
    :func:`build_train_sampler` (both over the same dataset dicts)."""
    dataset_dicts = train_dataset_dicts(cfg)
    return build_detection_train_loader(
        cfg,
        mapper=build_train_mapper(cfg, dataset_dicts),
        dataset=dataset_dicts,
        sampler=build_train_sampler(cfg, dataset_dicts),
    )


def build_evaluator(cfg, dataset_name, output_folder=None):
    """:class:`~ltdet2.evaluation.LTLVISEvaluator` (``TEST.DETECTIONS_PER_IMAGE`` detections per image) for a dataset
    whose metadata says ``evaluator_type="lvis"`` (LT-Shapes, LVIS, ``register_lvis_format_dataset``),
    Detectron2's ``COCOEvaluator`` for ``"coco"``; results in ``output_folder`` (``OUTPUT_DIR/inference``)."""
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "lvis":
        return LTLVISEvaluator(dataset_name, output_dir=output_folder, max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE)
    if evaluator_type == "coco":
        return COCOEvaluator(dataset_name, output_dir=output_folder, max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE)
    raise NotImplementedError(
        f"no evaluator for dataset {dataset_name!r} (evaluator_type {evaluator_type!r}): register it with "
        "ltdet2.data.register_lvis_format_dataset (evaluator 'lvis'), or override LongTailTrainer.build_evaluator"
    )


def _lazy_view(cfg):
    """The fields of a LazyConfig phase that :func:`ltdet2.hooks.memory_warmup.warm_up_memories` reads, for a yacs
    config: the training dataset and mapper (as zero-argument LazyCall nodes), the per-iteration batch, the class
    count and the seed."""
    view = {
        "dataloader": {
            "train": {
                "dataset": {"_target_": functools.partial(train_dataset_dicts, cfg)},
                "mapper": {"_target_": functools.partial(build_train_mapper, cfg)},
                "total_batch_size": cfg.SOLVER.IMS_PER_BATCH,
            }
        },
        "model": {"roi_heads": {"num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES}},
        "train": {"seed": cfg.SEED},
    }
    return OmegaConf.create(view, flags={"allow_objects": True})


class YAMLMemoryWarmup(MemoryWarmup):
    """:class:`ltdet2.hooks.MemoryWarmup` for a :class:`LongTailTrainer`: before the first iteration of a run that does
    not resume (``trainer.resumed_from``), :func:`~ltdet2.hooks.memory_warmup.warm_up_memories` over the yacs config's
    training data (``DATASETS.TRAIN`` through the training mapper, ``SOLVER.IMS_PER_BATCH`` images per forward
    over all processes, image choice seeded with ``SEED``, 0 when negative)."""

    def phase_config(self):
        return _lazy_view(self.trainer.cfg)


def use_cpu_poolers(roi_heads, *, mask_channels_last):
    """Replaces the box and mask poolers of ``roi_heads`` (Detectron2's ``ROIPooler``, as the YAML config builds them)
    with :class:`~ltdet2.layers.FastCPUROIPooler` of the same settings, as the small LazyConfig models configure them:
    ``mask_channels_last`` for the mask pooler. Poolers hold no state: checkpoints load alike."""
    for name in ("box_pooler", "mask_pooler"):
        pooler = getattr(roi_heads, name, None)
        if pooler is not None:
            channels_last = mask_channels_last and name == "mask_pooler"
            setattr(roi_heads, name, FastCPUROIPooler.from_roi_pooler(pooler, channels_last=channels_last))


class LongTailTrainer(DefaultTrainer):
    """Detectron2's :class:`DefaultTrainer` with ltdet2's methods (the module docstring): ``MODEL.LTDET2`` is checked
    first (:func:`check_yaml_config`), then the model is built and frozen, the loader built with ltdet2's sampler
    and mapper, and LOCE's warm-up registered after the standard hooks. ``resumed_from`` is the checkpoint
    :meth:`resume_or_load` resumed from (None: the run started from ``MODEL.WEIGHTS``), as the hooks of
    :mod:`ltdet2.hooks` read it."""

    def __init__(self, cfg):
        check_yaml_config(cfg)
        options = cfg.MODEL.get("LTDET2")
        if options is not None and (options.METHOD or ltdet2_methods_on(cfg)):
            logger.info(
                f"ltdet2 method {options.METHOD or '(unnamed)'}: {ltdet2_methods_on(cfg) or 'stock model'}; "
                f"trainable {trainable_patterns(cfg) or 'all'}; RFS {options.RFS.ENABLED}, copy-paste "
                f"{options.COPY_PASTE.ENABLED}, memory warm-up {options.MEMORY_WARMUP.ENABLED}"
            )
        self.resumed_from = None
        super().__init__(cfg)

    @classmethod
    def build_model(cls, cfg):
        """Detectron2's model, its ROI heads' poolers ltdet2's CPU ones where ``MODEL.LTDET2.CPU_POOLERS`` says
        (:func:`use_cpu_poolers`), the parameters ``MODEL.LTDET2.TRAINABLE`` leaves out frozen (a loss term left without
        a trainable parameter is refused: :func:`ltdet2.engine.freezing.check_frozen_terms`)."""
        model = super().build_model(cfg)
        if cfg.MODEL.LTDET2.CPU_POOLERS:
            use_cpu_poolers(model.roi_heads, mask_channels_last=cfg.MODEL.LTDET2.MASK_CHANNELS_LAST)
        freeze_all_but(model, trainable_patterns(cfg), key="MODEL.LTDET2.TRAINABLE")
        check_frozen_terms(model)
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        return build_train_loader(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Evaluation with Detectron2's test-time augmentation (``TEST.AUG``), results keyed ``<task>_TTA``."""
        logger.info("Running inference with test-time augmentation ...")
        model = GeneralizedRCNNWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA"))
            for name in cfg.DATASETS.TEST
        ]
        res = cls.test(cfg, model, evaluators)
        return OrderedDict({k + "_TTA": v for k, v in res.items()})

    def build_hooks(self):
        ret = super().build_hooks()
        options = self.cfg.MODEL.get("LTDET2")
        if options is not None and options.MEMORY_WARMUP.ENABLED:
            ret.append(YAMLMemoryWarmup(images_per_class=options.MEMORY_WARMUP.IMAGES_PER_CLASS))
        return ret

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        self.resumed_from = (
            self.checkpointer.get_checkpoint_file() if resume and self.checkpointer.has_checkpoint() else None
        )
