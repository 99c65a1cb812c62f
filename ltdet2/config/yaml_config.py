"""The YAML (yacs) keys of ltdet2's methods: :func:`add_ltdet2_config` adds ``MODEL.LTDET2`` to a Detectron2
``CfgNode`` (as Detectron2's projects add theirs, e.g. PointRend's ``add_pointrend_config``), and
:func:`check_ltdet2_config` refuses what the keys cannot express.

The defaults are those of the LazyConfig helpers in ``ltdet2.config.loce``, ``ltdet2.config.rio`` and
``ltdet2.config.bacl`` (the papers' and official codes' values) with every method off: a config that only calls
``add_ltdet2_config`` builds Detectron2's own model. With ``MODEL.ROI_HEADS.NAME: LongTailROIHeads`` the ROI heads
read these keys (:meth:`ltdet2.modeling.LongTailROIHeads.from_config`) and build the modules the LazyConfig helpers
build; :class:`ltdet2.config.yaml_trainer.LongTailTrainer` (``scripts/train_net.py``) reads the data, freezing and
warm-up keys. The multi-phase methods (LST, step-wise) are LazyConfig-only.

Usage::

    cfg = get_cfg()
    add_ltdet2_config(cfg)
    cfg.merge_from_file("configs/yaml/loce_lt_shapes.yaml")
"""

from detectron2.config import CfgNode as CN

__all__ = [
    "CLASSIFIERS",
    "CLASS_SCORINGS",
    "LAZYCONFIG_ONLY_METHODS",
    "METHODS",
    "STORAGE_DTYPES",
    "add_ltdet2_config",
    "check_ltdet2_config",
    "ltdet2_methods_on",
]

# MODEL.LTDET2.METHOD: a label of the config ("": none); the multi-phase methods are refused with their projects
METHODS = ("", "loce", "rio", "bacl")
LAZYCONFIG_ONLY_METHODS = {
    "lst": (
        "LST (class-incremental phases with balanced replay, network expansion and distillation from the previous "
        "phase)",
        ("projects/lst.py", "projects/lst_lvis_v0_5.py", "projects/lst_lvis_v1.py"),
    ),
    "stepwise": (
        "the step-wise method (exemplar sets scored by the pretrained model, head expert, knowledge transfer)",
        ("projects/stepwise.py", "projects/stepwise_lvis_v0_5.py", "projects/stepwise_lvis_v1.py"),
    ),
}
_METHOD_ALIASES = {"step_wise": "stepwise", "step-wise": "stepwise", "smooth_tail": "stepwise"}
CLASSIFIERS = ("", "CosineClassifier", "WeightNormCosineClassifier")  # "": Detectron2's linear cls_score
CLASS_SCORINGS = ("softmax", "sigmoid_background")
STORAGE_DTYPES = ("", "float16", "bfloat16")
REPLAY_MODES = ("recent", "random")
MASK_INFERENCE_DTYPES = ("float32", "bfloat16", "auto")  # ltdet2.modeling.roi_heads.long_tail_roi_heads


def add_ltdet2_config(cfg):
    """Adds ``MODEL.LTDET2`` (every method off) to ``cfg``, a Detectron2 ``CfgNode``; returns ``cfg``."""
    _C = cfg
    _C.MODEL.LTDET2 = CN()
    # A label of the config, logged by the trainer: "", "loce", "rio" or "bacl". "lst" and "stepwise" are refused:
    # their phases are LazyConfig-only (projects/lst.py, projects/stepwise.py).
    _C.MODEL.LTDET2.METHOD = ""

    # --- the box predictor: classifier and scoring (any method) ---------------------------------------------------
    _C.MODEL.LTDET2.CLASSIFIER = CN()
    # "" (Detectron2's linear cls_score), "WeightNormCosineClassifier" (RIO's official distLinear: learnable
    # per-class norm, fixed scale) or "CosineClassifier" (pure cosine, global scale; LST's)
    _C.MODEL.LTDET2.CLASSIFIER.NAME = ""
    # The cosine classifiers' scale s (RIO's official 48; LST uses 10)
    _C.MODEL.LTDET2.CLASSIFIER.SCALE = 48.0
    # CosineClassifier only: s is learnt (WeightNormCosineClassifier's is fixed)
    _C.MODEL.LTDET2.CLASSIFIER.LEARNABLE_SCALE = True
    # How logits become test-time probabilities (and the default loss): "softmax" (Detectron2's; its sigmoid with
    # MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE) or "sigmoid_background" (BACL: C+1 sigmoids, background last, biases -ln 999)
    _C.MODEL.LTDET2.CLASS_SCORING = "softmax"
    # The mask head's precision at inference: "float32" (Detectron2's) or "bfloat16" (autocast; faster on CPUs with
    # bf16 instructions; check AP first). LongTailROIHeads only.
    _C.MODEL.LTDET2.MASK_INFERENCE_DTYPE = "float32"
    # CPU speed (ltdet2.layers.FastCPUROIPooler): the box and mask poolers' RoIAlign backward as matmuls on CPU
    # (CUDA and inference keep torchvision's kernels), and the mask features in channels-last layout on CPU. Same
    # values up to float rounding. Applied to any ROI heads' poolers by ltdet2's trainer (LongTailTrainer.build_model);
    # Base-LT-Shapes.yaml turns both on, as the small LazyConfig models do.
    _C.MODEL.LTDET2.CPU_POOLERS = False
    _C.MODEL.LTDET2.MASK_CHANNELS_LAST = False

    # --- LOCE (Feng et al., ICCV 2021) ------------------------------------------------------------------------------
    # The mean classification score s read by EBL and MFS (added when either is on)
    _C.MODEL.LTDET2.MEAN_SCORE = CN()
    # Momentum alpha: a class with n entries in a batch gets s <- alpha^n s + (1 - alpha^n) mean(entries)
    _C.MODEL.LTDET2.MEAN_SCORE.ALPHA = 0.9
    # The fixed background score hat-s_{C+1} (also EBL's background entry)
    _C.MODEL.LTDET2.MEAN_SCORE.BACKGROUND_SCORE = 0.01

    _C.MODEL.LTDET2.EBL = CN()
    # Equilibrium loss: softmax cross-entropy on logits + log(s) (needs CLASS_SCORING "softmax")
    _C.MODEL.LTDET2.EBL.ENABLED = False

    _C.MODEL.LTDET2.MFS = CN()
    # Memory-augmented feature sampling: pooled RoI features of 16 dense boxes per ground-truth box in per-class
    # queues; k classes drawn with p ∝ 1/s, m stored features each, trained by the classifier and the regressor
    _C.MODEL.LTDET2.MFS.ENABLED = False
    # M, stored features per class
    _C.MODEL.LTDET2.MFS.CAPACITY = 80
    # k, classes drawn per iteration and process (with replacement, official)
    _C.MODEL.LTDET2.MFS.NUM_SAMPLED_CLASSES = 8
    # m, features drawn per drawn class
    _C.MODEL.LTDET2.MFS.PER_CLASS = 4
    # Storage dtype of the queues: "" (the features' own) or "float16" / "bfloat16" (LVIS: "float16", 2.4 GB)
    _C.MODEL.LTDET2.MFS.STORAGE_DTYPE = ""
    # True: one dense-box offset draw per image (official code); False: one per box (paper)
    _C.MODEL.LTDET2.MFS.SHARED_ETA = False

    _C.MODEL.LTDET2.MEMORY_WARMUP = CN()
    # Before the first iteration of a run that does not resume, a class-balanced pass without backward fills the
    # memories and mean scores (LOCE's official fine-tune; ltdet2.hooks.MemoryWarmup)
    _C.MODEL.LTDET2.MEMORY_WARMUP.ENABLED = False
    # Images per class in the warm-up, on every process (official: 5)
    _C.MODEL.LTDET2.MEMORY_WARMUP.IMAGES_PER_CLASS = 5

    # --- RIO (Chang et al., ICML 2021) ------------------------------------------------------------------------------
    _C.MODEL.LTDET2.RFS = CN()
    # Repeat-factor sampling of the training images (ltdet2.data.repeat_factor_sampler; not with
    # DATALOADER.SAMPLER_TRAIN: RepeatFactorTrainingSampler, Detectron2's own)
    _C.MODEL.LTDET2.RFS.ENABLED = False
    # t in r_c = max(1, (t / f_c) ** p), f_c the fraction of training images holding class c
    _C.MODEL.LTDET2.RFS.THRESHOLD = 0.001
    # p (0.5: LVIS' square root)
    _C.MODEL.LTDET2.RFS.POWER = 0.5

    _C.MODEL.LTDET2.REPLAY = CN()
    # Object-centric memory replay: box-head features of the rare classes' RoIs stored and replayed into the
    # classifier and the regressor (targeted classes counted on DATASETS.TRAIN)
    _C.MODEL.LTDET2.REPLAY.ENABLED = False
    # Targeted classes: those in at most this many training images
    _C.MODEL.LTDET2.REPLAY.MAX_IMAGES = 30
    # Stored entries per targeted class
    _C.MODEL.LTDET2.REPLAY.CAPACITY = 60
    # Entries replayed per targeted class present in the batch
    _C.MODEL.LTDET2.REPLAY.PER_CLASS = 20
    # "recent" (the newest, official default) or "random" (official option, without replacement)
    _C.MODEL.LTDET2.REPLAY.MODE = "recent"
    # Storage dtype of the queues: "" (the features' own), "float16" or "bfloat16"
    _C.MODEL.LTDET2.REPLAY.STORAGE_DTYPE = ""

    # --- BACL (Qi et al., TMM 2023) ---------------------------------------------------------------------------------
    # FCBL and FHM read the soft confusion matrix (cumulative, summed over processes), added when either is on
    _C.MODEL.LTDET2.FCBL = CN()
    # Foreground classification balance loss (needs CLASS_SCORING "sigmoid_background")
    _C.MODEL.LTDET2.FCBL.ENABLED = False
    # Margin scale alpha of alpha * log(M_ij / M_ji) (0: the weight term alone)
    _C.MODEL.LTDET2.FCBL.ALPHA = 0.85
    # Weight term: a non-ground-truth class counts if its probability >= the ground truth's or >= this
    _C.MODEL.LTDET2.FCBL.WEIGHT_THRESHOLD = 0.7
    # False: the margin alone
    _C.MODEL.LTDET2.FCBL.WEIGHT_TERM = True

    _C.MODEL.LTDET2.FHM = CN()
    # Feature hallucination: per-class mean / variance of box-head features (EMA), rows mu + eps * std for classes
    # drawn with p ∝ 1 - M_ii, trained by the classifier only (needs CLASS_SCORING "sigmoid_background")
    _C.MODEL.LTDET2.FHM.ENABLED = False
    # c, classes drawn per iteration and process
    _C.MODEL.LTDET2.FHM.NUM_SAMPLED_CLASSES = 8
    # m, hallucinated features per drawn class
    _C.MODEL.LTDET2.FHM.PER_CLASS = 12
    # beta, the EMA momentum of the class statistics
    _C.MODEL.LTDET2.FHM.MOMENTUM = 0.9

    _C.MODEL.LTDET2.COPY_PASTE = CN()
    # Simple copy-paste with large-scale-jitter-lite as the training mapper (BACL stage 1; needs instance masks
    # in the training annotations, output as INPUT.MASK_FORMAT: "bitmask" is exact); replaces the INPUT resize and flip
    _C.MODEL.LTDET2.COPY_PASTE.ENABLED = False
    # S, the jitter's target and the output size (LVIS: 1280; LT-Shapes: 128)
    _C.MODEL.LTDET2.COPY_PASTE.IMAGE_SIZE = 1280
    # Range of the jitter ratio r
    _C.MODEL.LTDET2.COPY_PASTE.SCALE_RANGE = (0.8, 1.25)
    # Occlusion rule: a covered object stays if its box moved at most this many px ...
    _C.MODEL.LTDET2.COPY_PASTE.BOX_SHIFT_THRESHOLD = 10.0
    # ... or more than this many px of its mask remain
    _C.MODEL.LTDET2.COPY_PASTE.MASK_AREA_THRESHOLD = 300.0

    # --- decoupled training (LOCE and BACL stage 2) -----------------------------------------------------------------
    # Regexes (matched at the start of parameter names) of the parameters that train; the rest is frozen, BatchNorm
    # without a trainable parameter becomes FrozenBatchNorm2d (ltdet2.engine.freezing.freeze_all_but). []: all train
    _C.MODEL.LTDET2.TRAINABLE = []
    return cfg


def _method(options) -> str:
    method = str(options.METHOD).strip().lower()
    return _METHOD_ALIASES.get(method, method)


def ltdet2_methods_on(cfg) -> list[str]:
    """The ``MODEL.LTDET2`` switches of ``cfg`` that change the model (``"EBL"``, ``"MFS"``, ``"REPLAY"``, ``"FCBL"``,
    ``"FHM"``, ``"CLASSIFIER"``, ``"CLASS_SCORING"``), in that order; [] without ``MODEL.LTDET2``."""
    options = cfg.MODEL.get("LTDET2")
    if options is None:
        return []
    on = [name for name in ("EBL", "MFS", "REPLAY", "FCBL", "FHM") if options[name].ENABLED]
    if options.CLASSIFIER.NAME:
        on.append("CLASSIFIER")
    if options.CLASS_SCORING != "softmax":
        on.append("CLASS_SCORING")
    return on


def check_ltdet2_config(cfg):
    """Refuses a ``MODEL.LTDET2`` that names a LazyConfig-only method (LST, step-wise: the error names the project
    files to run instead), an unknown name, or methods that cannot go together. Does nothing without
    ``MODEL.LTDET2``."""
    options = cfg.MODEL.get("LTDET2")
    if options is None:
        return
    method = _method(options)
    if method in LAZYCONFIG_ONLY_METHODS:
        what, projects = LAZYCONFIG_ONLY_METHODS[method]
        raise ValueError(
            f"MODEL.LTDET2.METHOD={options.METHOD!r}: {what} is a multi-phase method that ltdet2 runs from LazyConfig "
            f"projects only; YAML configs cannot express its phases. Use {projects[0]} (LT-Shapes) or "
            f"{', '.join(projects[1:])} (LVIS): python scripts/lazyconfig_train_net.py --config-file {projects[0]}"
        )
    if method not in METHODS:
        raise ValueError(
            f"MODEL.LTDET2.METHOD={options.METHOD!r}: expected one of {METHODS} (a label of the config), or "
            f"{tuple(LAZYCONFIG_ONLY_METHODS)}, which are LazyConfig-only"
        )
    _check_choice("CLASSIFIER.NAME", options.CLASSIFIER.NAME, CLASSIFIERS)
    _check_choice("CLASS_SCORING", options.CLASS_SCORING, CLASS_SCORINGS)
    _check_choice("MFS.STORAGE_DTYPE", options.MFS.STORAGE_DTYPE, STORAGE_DTYPES)
    _check_choice("REPLAY.STORAGE_DTYPE", options.REPLAY.STORAGE_DTYPE, STORAGE_DTYPES)
    _check_choice("REPLAY.MODE", options.REPLAY.MODE, REPLAY_MODES)
    _check_choice("MASK_INFERENCE_DTYPE", options.MASK_INFERENCE_DTYPE, MASK_INFERENCE_DTYPES)
    if options.EBL.ENABLED and options.FCBL.ENABLED:
        raise ValueError(
            "MODEL.LTDET2: EBL.ENABLED and FCBL.ENABLED are both classification losses; turn one of them off"
        )
    if options.EBL.ENABLED and options.CLASS_SCORING != "softmax":
        raise ValueError(
            f"MODEL.LTDET2.EBL is a softmax cross-entropy; it does not train CLASS_SCORING={options.CLASS_SCORING!r}: "
            "set MODEL.LTDET2.CLASS_SCORING to 'softmax'"
        )
    for name in ("FCBL", "FHM"):
        if options[name].ENABLED and options.CLASS_SCORING != "sigmoid_background":
            raise ValueError(
                f"MODEL.LTDET2.{name} is BACL's, for the sigmoid classifier with a background channel: set "
                f"MODEL.LTDET2.CLASS_SCORING to 'sigmoid_background' (it is {options.CLASS_SCORING!r})"
            )
    if options.MEMORY_WARMUP.ENABLED:
        if not (options.EBL.ENABLED or options.MFS.ENABLED):
            raise ValueError(
                "MODEL.LTDET2.MEMORY_WARMUP fills LOCE's memory and mean scores: it needs MFS.ENABLED or EBL.ENABLED"
            )
        if int(options.MEMORY_WARMUP.IMAGES_PER_CLASS) < 1:
            raise ValueError(
                f"MODEL.LTDET2.MEMORY_WARMUP.IMAGES_PER_CLASS={options.MEMORY_WARMUP.IMAGES_PER_CLASS}: at least 1 "
                "(or MEMORY_WARMUP.ENABLED: False)"
            )
    if options.RFS.ENABLED and cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"MODEL.LTDET2.RFS.ENABLED with DATALOADER.SAMPLER_TRAIN={cfg.DATALOADER.SAMPLER_TRAIN!r}: choose one "
            "sampler (leave SAMPLER_TRAIN at 'TrainingSampler' for ltdet2's RFS)"
        )


def _check_choice(key, value, choices):
    if value not in choices:
        raise ValueError(f"MODEL.LTDET2.{key}={value!r}: expected one of {choices}")
