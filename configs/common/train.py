# Training settings read by scripts/lazyconfig_train_net.py (Detectron2's `train` namespace, plus seed).
import torch

train = dict(
    output_dir="./output",
    init_checkpoint="",
    # regexes of parameter names (matched at the start) not loaded from init_checkpoint, so they keep the model's
    # fresh initialisation, e.g. a COCO model's class-specific heads for an LVIS phase (not applied on --resume)
    init_reinitialize=[],
    max_iter=90000,
    # a length in epochs of the phase's training set instead (with max_iter=None): max_iter is computed when the
    # set is registered, e.g. after a derived phase set is built (ltdet2.engine.epochs)
    epochs=None,
    # mixed precision: on CUDA Detectron2's AMPTrainer (precision None: float16); on a CPU bfloat16 autocast in the
    # backbone, RPN head, box head and mask head layers only (ltdet2.engine.precision)
    amp=dict(enabled=False, precision=None),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=5000, max_to_keep=3),
    eval_period=0,  # 0: evaluate once, at the end of each phase
    log_period=20,
    seed=0,
    # regexes of the parameters that train (None: all); see ltdet2.engine.freezing
    trainable=None,
    # names of loss / distillation terms (e.g. "distillers.1") that train.trainable freezes on purpose; any other
    # term whose parameters are all frozen is refused when the model is built (ltdet2.engine.freezing)
    frozen_terms=[],
    # in a project: the earlier phase whose final checkpoint this phase starts from (None: the
    # previous phase; "": none, the phase starts from its own init_checkpoint)
    init_from_phase=None,
    # in a project: the earlier phase whose frozen final model is this phase's teacher (a teacher-student
    # model, ltdet2.modeling.TeacherStudentRCNN; the runner fills model.teacher_weights and, if None, model.teacher)
    teacher_from_phase=None,
    # builders (LazyConfigs) of the datasets this phase trains on, e.g. ltdet2.data.ExemplarSetBuilder: built in
    # the phase's folder before it trains, registered whenever it runs (ltdet2.engine.derived)
    derived_datasets=[],
    # the phase's own steps (LazyCall nodes; the contract: ltdet2.engine.train_loop): Detectron2 hooks registered after
    # the standard ones, e.g. L(ltdet2.hooks.MemoryWarmup)(images_per_class=5) (LOCE: fill memories and indicators
    # before training, not on --resume) or L(ltdet2.hooks.WriteGeneratedWeights)(row_norm="keep") (LST: write the new
    # classes' generated classifier rows after the last iteration), and transforms of train.init_checkpoint, e.g.
    # L(ltdet2.modeling.expansion.ClassExpansion)(old_num_classes=K_old, seed="${...seed}") (LST: grow the previous
    # phase's class rows to this phase's model; not applied on --resume)
    hooks=[],
    # a phase whose evaluation finds nothing (no results, or every metric NaN: no detection) is not
    # recorded as done unless this is True
    allow_empty_eval=False,
    # --resume: "replay" the data stream up to the checkpoint (exact resume) or "restart" it (Detectron2's)
    resume_data="replay",
    # chosen where the config is loaded: nothing in ltdet2 assumes CUDA
    device="cuda" if torch.cuda.is_available() else "cpu",
)
