"""The YAML configs of configs/yaml/ build what the LazyConfig projects build: the same modules (names, classes,
parameter and buffer shapes and dtypes, which parameters train, the modules' reprs, the heads' settings), and the
same schedule, optimizer, freezing, sampler, mapper and warm-up settings."""

import os

import pytest
import torch

from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import detection_utils
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import build_roi_heads

from ltdet2.config.yaml_config import add_ltdet2_config
from ltdet2.config.yaml_trainer import LongTailTrainer, build_train_mapper, build_train_sampler, train_dataset_dicts
from ltdet2.data.copy_paste import CopyPasteMapper
from ltdet2.engine.train_loop import build_model as build_lazy_model
from ltdet2.hooks import MemoryWarmup

from fixtures.models import ROOT, TEST_DEVICE

# (YAML config, LazyConfig project, phase): the LT-Shapes models are built whole
LT_SHAPES = [
    ("loce_lt_shapes_pretrain.yaml", "projects/loce.py", "pretrain"),
    ("loce_lt_shapes.yaml", "projects/loce.py", "finetune"),
    ("rio_lt_shapes.yaml", "projects/rio.py", None),
    ("bacl_lt_shapes_representation.yaml", "projects/bacl.py", "representation"),
    ("bacl_lt_shapes.yaml", "projects/bacl.py", "classifier"),
]
# the LVIS ones: their ROI heads (the method's modules) and settings
LVIS = [
    ("loce_lvis_v1_pretrain.yaml", "projects/loce_lvis_v1.py", "pretrain"),
    ("loce_lvis_v1.yaml", "projects/loce_lvis_v1.py", "finetune"),
    ("rio_lvis_v1.yaml", "projects/rio_lvis_v1.py", None),
    ("bacl_lvis_v1_representation.yaml", "projects/bacl_lvis_v1.py", "representation"),
    ("bacl_lvis_v1.yaml", "projects/bacl_lvis_v1.py", "classifier"),
]
PRETRAINS = [  # a fine-tune YAML and the YAML of the phase it starts from
    ("loce_lt_shapes.yaml", "loce_lt_shapes_pretrain.yaml"),
    ("bacl_lt_shapes.yaml", "bacl_lt_shapes_representation.yaml"),
    ("loce_lvis_v1.yaml", "loce_lvis_v1_pretrain.yaml"),
    ("bacl_lvis_v1.yaml", "bacl_lvis_v1_representation.yaml"),
]


def yaml_cfg(name, *opts):
    cfg = get_cfg()
    add_ltdet2_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "yaml", name))
    cfg.merge_from_list(["MODEL.DEVICE", TEST_DEVICE, *opts])
    return cfg


def lazy_phase(project, phase):
    cfg = LazyConfig.load(os.path.join(ROOT, project))
    cfg = cfg.phases[phase] if phase else cfg
    cfg.train.device = TEST_DEVICE
    return cfg


def head_settings(roi_heads):
    predictor = roi_heads.box_predictor
    return dict(
        num_classes=roi_heads.num_classes,
        batch_size_per_image=roi_heads.batch_size_per_image,
        positive_fraction=roi_heads.positive_fraction,
        iou_thresholds=roi_heads.proposal_matcher.thresholds,
        box_in_features=roi_heads.box_in_features,
        test_score_thresh=predictor.test_score_thresh,
        test_nms_thresh=predictor.test_nms_thresh,
        test_topk_per_image=predictor.test_topk_per_image,
        box_reg_weights=predictor.box2box_transform.weights,
        box_reg_loss_type=predictor.box_reg_loss_type,
        loss_weight={k: predictor.loss_weight.get(k, 1.0) for k in ("loss_cls", "loss_box_reg")},
        indicators=list(getattr(roi_heads, "indicators", {})),
    )


def model_settings(model):
    rpn = model.proposal_generator
    anchors = [a.tolist() for a in rpn.anchor_generator.cell_anchors]
    return dict(
        pixel_mean=model.pixel_mean.flatten().tolist(),
        pixel_std=model.pixel_std.flatten().tolist(),
        input_format=model.input_format,
        rpn_topk=(rpn.pre_nms_topk, rpn.post_nms_topk),
        rpn_batch=(rpn.batch_size_per_image, rpn.positive_fraction, rpn.nms_thresh),
        anchors=anchors,
        heads=head_settings(model.roi_heads),
    )


def assert_same_modules(yaml_module, lazy_module):
    yaml_types = [(name, type(m)) for name, m in yaml_module.named_modules()]
    lazy_types = [(name, type(m)) for name, m in lazy_module.named_modules()]
    assert yaml_types == lazy_types
    yaml_state, lazy_state = yaml_module.state_dict(), lazy_module.state_dict()
    assert list(yaml_state) == list(lazy_state)
    for key, value in yaml_state.items():
        assert (value.shape, value.dtype) == (lazy_state[key].shape, lazy_state[key].dtype), key
    yaml_grads = [(n, p.requires_grad) for n, p in yaml_module.named_parameters()]
    assert yaml_grads == [(n, p.requires_grad) for n, p in lazy_module.named_parameters()]
    assert repr(yaml_module) == repr(lazy_module)  # extra_repr: the sources', classifiers' and losses' arguments


def yaml_schedule(cfg):
    options = cfg.MODEL.LTDET2
    return dict(
        max_iter=cfg.SOLVER.MAX_ITER,
        steps=list(cfg.SOLVER.STEPS),
        warmup_iters=cfg.SOLVER.WARMUP_ITERS,
        warmup_factor=cfg.SOLVER.WARMUP_FACTOR,
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        batch=cfg.SOLVER.IMS_PER_BATCH,
        checkpoint_period=cfg.SOLVER.CHECKPOINT_PERIOD,
        trainable=list(options.TRAINABLE),
        warmup_images=[options.MEMORY_WARMUP.IMAGES_PER_CLASS] if options.MEMORY_WARMUP.ENABLED else [],
        rfs=(options.RFS.THRESHOLD, options.RFS.POWER) if options.RFS.ENABLED else None,
        train=list(cfg.DATASETS.TRAIN),
        test=list(cfg.DATASETS.TEST),
    )


def lazy_schedule(phase):
    schedule, train = phase.lr_multiplier, phase.train
    sampler = phase.dataloader.train.get("sampler", None)
    names = phase.dataloader.train.dataset.names
    return dict(
        max_iter=train.max_iter,
        steps=list(schedule.scheduler.milestones),
        warmup_iters=round(schedule.warmup_length * train.max_iter),
        warmup_factor=schedule.warmup_factor,
        lr=phase.optimizer.lr,
        momentum=phase.optimizer.momentum,
        weight_decay=phase.optimizer.weight_decay,
        batch=phase.dataloader.train.total_batch_size,
        checkpoint_period=train.checkpointer.period,
        trainable=list(train.trainable or []),
        warmup_images=[h.images_per_class for h in instantiate(train.hooks) if isinstance(h, MemoryWarmup)],
        rfs=(sampler.threshold, sampler.power) if sampler is not None else None,
        train=[names] if isinstance(names, str) else list(names),
        test=[phase.dataloader.test.dataset.names],
    )


@pytest.mark.parametrize("yaml_name,project,phase", LT_SHAPES)
def test_lt_shapes_models_equal_the_lazyconfig_ones(yaml_name, project, phase):
    lazy = lazy_phase(project, phase)
    cfg = yaml_cfg(yaml_name, "MODEL.WEIGHTS", "")
    yaml_model, lazy_model = LongTailTrainer.build_model(cfg), build_lazy_model(lazy)
    assert_same_modules(yaml_model, lazy_model)
    assert model_settings(yaml_model) == model_settings(lazy_model)
    assert yaml_schedule(cfg) == lazy_schedule(lazy)


@pytest.mark.parametrize("yaml_name,project,phase", LVIS)
def test_lvis_heads_and_settings_equal_the_lazyconfig_ones(yaml_name, project, phase):
    lazy = lazy_phase(project, phase)
    opts = []
    if lazy.model.roi_heads.get("feature_sources"):  # LOCE's MFS at LVIS size is 2.4 GB: 1 entry per class here
        for source in lazy.model.roi_heads.feature_sources:
            if "capacity" in source and "feature_shape" in source:
                source.capacity = 1
                opts = ["MODEL.LTDET2.MFS.CAPACITY", 1]
    cfg = yaml_cfg(yaml_name, *opts)
    shapes = {f"p{level}": ShapeSpec(channels=256, stride=2**level) for level in range(2, 7)}
    torch.manual_seed(0)
    yaml_heads = build_roi_heads(cfg, shapes)
    lazy_heads = instantiate(lazy.model.roi_heads)
    assert_same_modules(yaml_heads, lazy_heads)
    assert head_settings(yaml_heads) == head_settings(lazy_heads)
    rpn = lazy.model.proposal_generator
    assert (tuple(rpn.pre_nms_topk), tuple(rpn.post_nms_topk)) == (
        (cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN, cfg.MODEL.RPN.PRE_NMS_TOPK_TEST),
        (cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN, cfg.MODEL.RPN.POST_NMS_TOPK_TEST),
    )
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0 and "freeze_at" not in lazy.model.backbone.bottom_up
    assert yaml_schedule(cfg) == lazy_schedule(lazy)
    if phase not in ("finetune", "classifier"):
        assert cfg.MODEL.WEIGHTS == lazy.train.init_checkpoint
    mapper = lazy.dataloader.train.mapper
    if "augmentations" in mapper:  # multi-scale 640-800 and flip
        resize = mapper.augmentations[0]
        assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(resize.short_edge_length)
        assert cfg.INPUT.MAX_SIZE_TRAIN == resize.max_size
    else:
        assert cfg.MODEL.LTDET2.COPY_PASTE.IMAGE_SIZE == mapper.image_size


@pytest.mark.parametrize("finetune,pretrain", PRETRAINS)
def test_finetunes_start_from_their_pretrain(finetune, pretrain):
    finetune_cfg, pretrain_cfg = yaml_cfg(finetune), yaml_cfg(pretrain)
    assert finetune_cfg.MODEL.WEIGHTS == os.path.join(pretrain_cfg.OUTPUT_DIR, "model_final.pth")
    assert finetune_cfg.MODEL.LTDET2.TRAINABLE  # a decoupled fine-tune


def test_rio_sampler_is_ltdet2s_rfs(tiny_dataset):
    train_name = tiny_dataset[0]
    lazy = lazy_phase("projects/rio.py", None)
    lazy.dataloader.train.dataset.names = train_name
    lazy.dataloader.train.sampler.threshold = 0.5  # the tiny set's 60 images: classes under t=0.001 are none
    cfg = yaml_cfg("rio_lt_shapes.yaml", "DATASETS.TRAIN", (train_name,), "MODEL.LTDET2.RFS.THRESHOLD", 0.5)
    lazy_sampler = instantiate(lazy.dataloader.train.sampler)
    yaml_sampler = build_train_sampler(cfg, train_dataset_dicts(cfg))
    assert type(yaml_sampler) is type(lazy_sampler)
    assert torch.equal(yaml_sampler._int_part, lazy_sampler._int_part)
    assert torch.equal(yaml_sampler._frac_part, lazy_sampler._frac_part)
    assert yaml_sampler._int_part.max() > 1  # rarer classes are repeated


def test_bacl_representation_mapper_is_ltdet2s_copy_paste(tiny_dataset):
    train_name = tiny_dataset[0]
    lazy = lazy_phase("projects/bacl.py", "representation")
    lazy.dataloader.train.dataset.names = train_name
    cfg = yaml_cfg("bacl_lt_shapes_representation.yaml", "DATASETS.TRAIN", (train_name,))
    lazy_mapper, yaml_mapper = instantiate(lazy.dataloader.train.mapper), build_train_mapper(cfg)
    assert type(yaml_mapper) is CopyPasteMapper
    options = (
        "image_size scale_range image_format instance_mask_format flip_prob pad_value min_box_size max_num_pasted "
        "box_shift_threshold mask_area_threshold exclude_same_image"
    ).split()
    assert {k: getattr(yaml_mapper, k) for k in options} == {k: getattr(lazy_mapper, k) for k in options}
    # masks in the output as Detectron2's DatasetMapper(cfg): with MODEL.MASK_ON (the LazyConfig mapper always)
    assert yaml_mapper.use_instance_mask is cfg.MODEL.MASK_ON is False
    assert len(yaml_mapper.sources) == len(lazy_mapper.sources)


def test_lt_shapes_input_is_used_at_its_native_size():
    """Base-LT-Shapes.yaml: MIN_SIZE 0 (no resize) and flips, as the LazyConfig mapper (flips only)."""
    cfg = yaml_cfg("Base-LT-Shapes.yaml")
    for is_train in (True, False):
        for augmentation in detection_utils.build_augmentation(cfg, is_train):
            transform = augmentation.get_transform(torch.zeros(128, 96, 3).numpy())
            assert transform.apply_image(torch.zeros(128, 96, 3).numpy()).shape == (128, 96, 3)


def test_cpu_poolers_and_mask_inference_dtype():
    """MODEL.LTDET2.CPU_POOLERS / MASK_CHANNELS_LAST (on in Base-LT-Shapes.yaml) give the poolers of the small
    LazyConfig Mask R-CNN; off, Detectron2's ROIPooler. MASK_INFERENCE_DTYPE reaches LongTailROIHeads."""
    from detectron2.modeling.poolers import ROIPooler

    from ltdet2.layers import FastCPUROIPooler

    cfg = yaml_cfg("loce_lt_shapes.yaml", "MODEL.WEIGHTS", "", "MODEL.MASK_ON", "True")
    cfg.MODEL.LTDET2.MASK_INFERENCE_DTYPE = "bfloat16"
    heads = LongTailTrainer.build_model(cfg).roi_heads
    lazy = LazyConfig.load(os.path.join(ROOT, "configs", "models", "mask_rcnn_r18_fpn_small.py")).model.roi_heads
    assert type(heads.box_pooler) is FastCPUROIPooler and type(heads.mask_pooler) is FastCPUROIPooler
    assert (heads.box_pooler.channels_last, heads.mask_pooler.channels_last) == (False, True)
    assert (lazy.box_pooler.get("channels_last", False), lazy.mask_pooler.channels_last) == (False, True)
    assert repr(heads.mask_pooler) == repr(instantiate(lazy.mask_pooler))
    assert heads.mask_inference_dtype == "bfloat16"

    off = LongTailTrainer.build_model(
        yaml_cfg("loce_lt_shapes.yaml", "MODEL.WEIGHTS", "", "MODEL.LTDET2.CPU_POOLERS", "False")
    ).roi_heads
    assert type(off.box_pooler) is ROIPooler
