"""Training and evaluation of one phase: Detectron2's SimpleTrainer/AMPTrainer with its usual hooks.

The same steps and writers (progress printer, metrics.json, TensorBoard events) as Detectron2's
``tools/lazyconfig_train_net.py``; ltdet2 adds the evaluator's output folder, per-phase seeding,
freezing (``train.trainable``), the phase's own hooks (``train.hooks``, below), and an exact resume:

* every rank's RNG and own buffers come back from the checkpoint (:mod:`ltdet2.engine.checkpoint`);
* the training batches come from RNG streams of the data loader's own (:class:`ReplayableLoader`), and
  a resumed run first replays the data stream of the iterations already trained without training on
  it (``train.resume_data="replay"``, the default), so it sees the batches the uninterrupted run would.
  Replaying costs the data loading of those iterations (no model step); ``train.resume_data="restart"``
  skips it and starts the stream again, as Detectron2 does (not exact). Exactness needs ``train.seed
  >= 0`` (the default, 0);
* a stop request (a preemption or time-out signal, :mod:`ltdet2.engine.launch`) saves a checkpoint of
  the current iteration on every rank and stops with :class:`~ltdet2.engine.launch.TrainingInterrupted`;
* a resume at the end of the schedule (a run killed while it saved ``model_final``: its last periodic checkpoint
  is of the last iteration) takes no step and writes ``model_final`` from that checkpoint; a resume from a
  checkpoint beyond ``train.max_iter`` is refused, as is a schedule without iterations (``train.max_iter`` < 1).

A divergence (a non-finite loss, or Detectron2's check of non-finite boxes or scores in the model) stops training with
:class:`TrainingDiverged`, naming the iteration and each loss term's last value.

**Phase hooks** (``train.hooks``: a list of LazyCall nodes, default empty). A method's extra steps are declared by the
phase, not written here (e.g. :mod:`ltdet2.hooks`: LOCE's memory warm-up, LST's phase-end write of generated rows and
its network expansion). :func:`do_train` instantiates every entry (:func:`build_phase_hooks`) after building the
model, before the optimizer and the data loader; each must be one or both of:

* a Detectron2 :class:`~detectron2.engine.HookBase`: registered after the standard hooks (iteration timer, LR
  scheduler, periodic checkpointer, stop on request, periodic evaluation, writers, and the save of ``model_final`` of a
  run resumed at the end of its schedule), in list order, before the checkpoint is loaded, so a hook with a
  ``state_dict`` is saved and resumed with the trainer (Detectron2's hook state; the periodic checkpointer saves in its
  ``after_step``, before the phase's hooks' ``after_step``: state changed there is saved with the next checkpoint,
  state changed in ``before_step`` with this iteration's). Its ``before_train`` runs after the
  checkpoint is loaded and the RNG restored, before the first iteration (the standard hooks' draw no random number);
  its ``after_train`` after the writers closed and ``model_final`` was saved, also after an error or a stop request:
  :func:`training_finished` tells whether the loop reached ``train.max_iter``;
* an initial-checkpoint transform: an object with ``transform_initial_checkpoint(state_dict, model_state, where)``
  returning the state dict to load (``model_state``: the model's; ``where``: names the checkpoint and the phase for
  errors). The checkpointer applies the transforms, in list order, to ``train.init_checkpoint`` after
  ``train.init_reinitialize``'s entries are dropped, never to a checkpoint the run resumes from
  (:class:`~ltdet2.engine.checkpoint.AtomicCheckpointer`'s ``initial_transforms``).

The trainer a hook sees (``self.trainer``, Detectron2's ``SimpleTrainer`` / ``AMPTrainer``: ``model`` (the DDP wrapper
when there are several processes), ``optimizer``, ``data_loader``, ``iter``, ``start_iter``, ``max_iter``,
``storage``) carries, as Detectron2's ``DefaultTrainer`` does:

* ``trainer.cfg``: the phase config;
* ``trainer.checkpointer``: the phase's :class:`~ltdet2.engine.checkpoint.AtomicCheckpointer` (``save_final``,
  ``save_on_all_ranks``: collectives);
* ``trainer.resumed_from``: the checkpoint the run resumed from (None: it started from ``train.init_checkpoint``);
* ``trainer.resumed_checkpoint``: that checkpoint's further data (``iteration``, what a hook saved with it, ...; None
  when not resumed).

``resumed_from`` / ``resumed_checkpoint`` are set once the checkpoint is loaded (None before). Hooks run on every
rank; a step that is a collective must run on all of them. A hook's constructor should only store its options: the
phase runner may instantiate entries before training (:func:`initial_checkpoint_checks`: a transform may offer
``check_initial_checkpoint(state_dict, cfg, where)``, run on ``train.init_checkpoint`` before the phase trains).
"""

import contextlib
import inspect
import logging
import os

import numpy as np
from omegaconf import OmegaConf

from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, HookBase, SimpleTrainer, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model as _create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from ..utils.lazy_config import lazy_target
from .checkpoint import AtomicCheckpointer, PeriodicCheckpointer, capture_rng_state, restore_rng_state
from .freezing import check_frozen_terms, freeze_all_but
from .stop_requests import TrainingInterrupted, stop_requested_on_any_rank, stop_requests_armed

logger = logging.getLogger("detectron2")

FINAL_CHECKPOINT = "model_final.pth"
RESUME_DATA_MODES = ("replay", "restart")


class TrainingDiverged(FloatingPointError):
    """Training stopped on a non-finite loss or prediction, at ``iteration``; ``losses``: each loss term's last value
    ({name: float}, of iteration ``losses_iteration``; None when no step had computed them yet)."""

    def __init__(self, message, *, iteration=None, losses=None, losses_iteration=None):
        super().__init__(message)
        self.iteration = iteration
        self.losses = losses
        self.losses_iteration = losses_iteration


class _NamedLossCheck:
    """Detectron2's trainers stop on a non-finite loss, and its models on non-finite boxes or scores ("Predicted boxes
    or scores contain Inf/NaN"); this names the iteration and each loss term's last value in the error
    (:class:`TrainingDiverged`)."""

    _last_losses = None  # (iteration, {name: detached loss}) of the last step that computed its losses

    def _write_metrics(self, loss_dict, data_time, prefix="", iter=None):
        iteration = self.iter if iter is None else iter
        self._last_losses = (iteration, {name: value.detach() for name, value in loss_dict.items()})
        try:
            super()._write_metrics(loss_dict, data_time, prefix, **({} if iter is None else {"iter": iter}))
        except FloatingPointError as e:
            losses = _loss_values(self._last_losses[1])
            raise TrainingDiverged(
                f"the loss became infinite or NaN at iteration {iteration}: {_format_losses(losses)}",
                iteration=iteration,
                losses=losses,
                losses_iteration=iteration,
            ) from e

    def run_step(self):
        try:
            super().run_step()
        except TrainingDiverged:
            raise
        except FloatingPointError as e:  # raised by the model (its box and score checks), before the losses
            if self._last_losses is None:
                last, losses, terms = None, None, "no loss was computed before it in this run"
            else:
                last, losses = self._last_losses[0], _loss_values(self._last_losses[1])
                terms = f"the loss terms at iteration {last}: {_format_losses(losses)}"
            raise TrainingDiverged(
                f"training diverged at iteration {self.iter}: {str(e).strip()} ({terms})",
                iteration=self.iter,
                losses=losses,
                losses_iteration=last,
            ) from e


def _loss_values(loss_dict):
    return {name: float(value) for name, value in loss_dict.items()}


def _format_losses(losses):
    return ", ".join(f"{name}={value:.4g}" for name, value in losses.items())


class Trainer(_NamedLossCheck, SimpleTrainer):
    pass


class AMPTrainerWithNamedLosses(_NamedLossCheck, AMPTrainer):
    pass


def seed_phase(cfg):
    """Seeds every RNG from ``train.seed`` (+ rank), so a phase run alone equals it run in sequence."""
    seed = cfg.train.get("seed", -1)
    seed_all_rng(None if seed is None or seed < 0 else seed + comm.get_rank())


class ReplayableLoader:
    """Iterates a training data loader with RNG streams of its own, and skips batches on resume.

    Every ``next`` on the loader (and the start of its workers, which draw their seeds then) runs with
    this object's torch / numpy / random states swapped in, seeded from ``seed`` and the rank, so the
    batches depend on the seed alone, not on what the model or a memory warm-up drew before. Setting
    ``skip = k`` before the first iteration draws and drops the first k batches (the iterations a
    resumed run already trained), which puts the stream where the uninterrupted run had it.
    """

    def __init__(self, loader, *, seed=None):
        self.loader = loader
        self.skip = 0
        if seed is None or seed < 0:
            seed = int(np.random.randint(2**31))
        # one stream per rank, unrelated to the model's seed (seed + rank)
        self._seed = int(np.random.SeedSequence([seed, comm.get_rank(), 0x5EED]).generate_state(1)[0])
        self._state = None

    @contextlib.contextmanager
    def _own_rng(self):
        outside = capture_rng_state()
        if self._state is None:
            seed_all_rng(self._seed)
        else:
            restore_rng_state(self._state)
        try:
            yield
        finally:
            self._state = capture_rng_state()
            restore_rng_state(outside)

    def __iter__(self):
        with self._own_rng():
            iterator = iter(self.loader)
            for _ in range(self.skip):
                next(iterator)
        while True:
            with self._own_rng():
                try:
                    batch = next(iterator)
                except StopIteration:
                    return
            yield batch


class StopOnRequest(HookBase):
    """After every iteration, on every rank: if a stop was requested on any rank (a preemption or
    time-out signal, :func:`ltdet2.engine.launch.request_stop`), saves a checkpoint of this iteration
    with every rank's state and stops training (:class:`~ltdet2.engine.launch.TrainingInterrupted`;
    the writers' ``after_train`` still writes this iteration's metrics). The last iteration is not
    interrupted: the phase's final checkpoint is saved then anyway."""

    def __init__(self, checkpointer, period):
        self.checkpointer = checkpointer
        self.period = period  # the periodic checkpointer's: its checkpoint of this iteration is not saved twice

    def after_step(self):
        iteration = self.trainer.iter
        if not stop_requested_on_any_rank() or iteration >= self.trainer.max_iter - 1:
            return
        name = f"model_{iteration:07d}"
        if (iteration + 1) % self.period:
            self.checkpointer.save_on_all_ranks(name, iteration=iteration)
        path = os.path.join(self.checkpointer.save_dir, f"{name}.pth")
        raise TrainingInterrupted(
            f"training stopped on request after iteration {iteration} (of {self.trainer.max_iter}); saved {path}; "
            f"run again with --resume to continue from it",
            checkpoint=path,
            iteration=iteration,
        )


def build_evaluator(cfg):
    if "evaluator" not in cfg.dataloader:
        return None
    evaluator_cfg = cfg.dataloader.evaluator
    # like Detectron2's train_net: results and per-class AP go to <phase output>/inference
    if evaluator_cfg.get("output_dir") is None and _accepts_output_dir(evaluator_cfg):
        evaluator_cfg.output_dir = os.path.join(cfg.train.output_dir, "inference")
    return instantiate(evaluator_cfg)


def _accepts_output_dir(lazy_cfg):
    try:
        return "output_dir" in inspect.signature(lazy_target(lazy_cfg)).parameters
    except (TypeError, ValueError):
        return False


def do_test(cfg, model):
    """Evaluates ``model`` on ``dataloader.test``; returns the evaluator's results (or {})."""
    evaluator = build_evaluator(cfg)
    if evaluator is None:
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator)
    if comm.is_main_process():
        print_csv_format(results)
    return results


def build_model(cfg):
    """Instantiates ``cfg.model``, freezes what ``train.trainable`` leaves out (refusing a loss or distillation
    term left with no trainable parameter unless ``train.frozen_terms`` names it), moves it to the device."""
    model = instantiate(cfg.model)
    freeze_all_but(model, cfg.train.get("trainable", None))
    check_frozen_terms(model, cfg.train.get("frozen_terms", None) or ())
    model.to(cfg.train.device)
    return model


INITIAL_TRANSFORM_METHOD = "transform_initial_checkpoint"
INITIAL_CHECK_METHOD = "check_initial_checkpoint"


def _instantiate_hook(cfg, index, node):
    where = f"train.hooks[{index}] of the phase in {cfg.train.get('output_dir', None)}"
    try:
        entry = instantiate(node)
    except TypeError as e:  # e.g. an option the hook does not take
        raise TypeError(f"{where} ({lazy_target(node)}): {e}") from e
    if not isinstance(entry, HookBase) and not callable(getattr(entry, INITIAL_TRANSFORM_METHOD, None)):
        raise TypeError(
            f"{where} is a {type(entry).__name__}: an entry of train.hooks must be a Detectron2 HookBase or have a "
            f"{INITIAL_TRANSFORM_METHOD}(state_dict, model_state, where) method (ltdet2.engine.train_loop)"
        )
    return entry


def build_phase_hooks(cfg):
    """The phase's ``train.hooks`` instantiated, in order (the module docstring's contract); a TypeError naming
    the entry for one that is neither a hook nor an initial-checkpoint transform, or that its target refuses."""
    return [_instantiate_hook(cfg, index, node) for index, node in enumerate(cfg.train.get("hooks", None) or [])]


def initial_checkpoint_transforms(entries):
    """The initial-checkpoint transforms among the phase's hook entries: their bound ``transform_initial_checkpoint``
    methods, in order (for :class:`~ltdet2.engine.checkpoint.AtomicCheckpointer`'s ``initial_transforms``)."""
    return [
        getattr(e, INITIAL_TRANSFORM_METHOD) for e in entries if callable(getattr(e, INITIAL_TRANSFORM_METHOD, None))
    ]


def initial_checkpoint_checks(cfg):
    """The checks the phase's initial-checkpoint transforms offer before training: the bound
    ``check_initial_checkpoint(state_dict, cfg, where)`` methods of its ``train.hooks`` entries that have one, in order
    (the phase runner calls them on ``train.init_checkpoint`` before training, so that a checkpoint a transform cannot
    take is refused before any work; each raises an error naming ``where``)."""
    return [
        getattr(e, INITIAL_CHECK_METHOD)
        for e in build_phase_hooks(cfg)
        if callable(getattr(e, INITIAL_CHECK_METHOD, None))
    ]


def create_ddp_model(model, cfg):
    """Detectron2's ``create_ddp_model`` with ``train.ddp``; a model on the CPU (gloo) gets no
    ``device_ids`` (Detectron2 passes the local rank, which DDP refuses for CPU modules).

    A model with ``local`` memories or indicators (:func:`ltdet2.memory.local_memory_names`) gets
    ``broadcast_buffers=False`` when ``train.ddp`` does not say: DDP's default copies rank 0's buffers to
    every rank at each forward, which would replace each rank's own memories with rank 0's. Saying
    ``broadcast_buffers=True`` for such a model on several processes is refused."""
    from ltdet2.memory.distributed import local_memory_names

    ddp = dict(cfg.train.get("ddp", None) or {})
    if next(model.parameters()).device.type == "cpu":
        ddp.setdefault("device_ids", None)
    local = local_memory_names(model)
    if local and ddp.get("broadcast_buffers", None) and comm.get_world_size() > 1:
        raise ValueError(
            f"train.ddp.broadcast_buffers=True would overwrite the local memories {local[:5]} of every rank "
            "with rank 0's at each forward; set it to False (or the memories' sync to 'global')"
        )
    if local:
        ddp.setdefault("broadcast_buffers", False)
    return _create_ddp_model(model, **ddp)


def check_max_iter(cfg, where="training"):
    """ValueError unless ``train.max_iter`` is a positive number of iterations; None is a length not counted yet
    (``train.epochs``: :func:`ltdet2.engine.epochs.resolve_epoch_schedule` sets it once the training set is
    registered)."""
    max_iter = cfg.train.get("max_iter", None)
    if isinstance(max_iter, int) and not isinstance(max_iter, bool) and max_iter >= 1:
        return
    epochs = cfg.train.get("epochs", None)
    if max_iter is None and epochs is not None:
        raise ValueError(
            f"{where}: train.max_iter=None: its length, train.epochs={epochs}, was not counted "
            f"(ltdet2.engine.epochs.resolve_epoch_schedule, which the phase runner calls once the training set is "
            f"registered)"
        )
    raise ValueError(
        f"{where}: train.max_iter={max_iter!r}: a phase trains at least 1 iteration (to give its length in epochs "
        f"of its training set instead, set train.max_iter=None and train.epochs)"
    )


def check_total_batch_size(cfg, world_size, where="training"):
    """ValueError unless ``dataloader.train.total_batch_size`` (when the loader has one) is a positive multiple of the
    number of training processes, among which Detectron2's loader divides it (each loads total / processes images)."""
    try:
        total = OmegaConf.select(cfg, "dataloader.train.total_batch_size", default=None)
    except Exception:  # an interpolation that does not resolve here: left to the loader
        return
    if not isinstance(total, int) or isinstance(total, bool):
        return
    if total < 1:
        raise ValueError(f"{where}: dataloader.train.total_batch_size={total}: a batch holds at least 1 image")
    if total % world_size:
        raise ValueError(
            f"{where}: dataloader.train.total_batch_size={total} does not divide among the {world_size} training "
            f"processes (--num-gpus x --num-machines, or Slurm's nodes x tasks per node), each of which loads "
            f"total / processes images. Set it to a multiple of {world_size}, or train with a number of processes "
            f"that divides {total}"
        )


def check_resume_point(checkpoint, start_iter, max_iter):
    """ValueError when the checkpoint a run resumes from lies beyond the end of its schedule."""
    if start_iter > max_iter:
        raise ValueError(
            f"cannot resume {checkpoint}: it was saved after iteration {start_iter - 1}, beyond the end of this "
            f"schedule (train.max_iter={max_iter}). Resume with train.max_iter={start_iter} or more (the schedule "
            f"it was trained with), or train in another output folder"
        )


def training_finished(trainer):
    """In a hook's ``after_train``: whether the training loop reached ``max_iter`` (False after an error or a stop
    request). Detectron2's loop leaves ``trainer.iter == max_iter`` after the last iteration; a run resumed at the end
    of its schedule (``start_iter == max_iter``) takes no step and leaves ``max_iter + 1`` (``max_iter`` when a hook's
    ``before_train`` failed)."""
    if trainer.start_iter >= trainer.max_iter:
        return trainer.iter > trainer.max_iter
    return trainer.iter >= trainer.max_iter


def save_final_at_the_end(checkpointer, max_iter):
    """Saves ``model_final`` at the last iteration for a run resumed at the end of its schedule, which takes no step:
    Detectron2's periodic checkpointer writes it after the step of iteration ``max_iter - 1`` only, so a run killed
    while saving it (its last periodic checkpoint is of that iteration) would otherwise never have one. A collective.
    Nothing is saved when the run resumed from ``model_final`` itself."""
    if os.path.basename(checkpointer.resumed_from) == FINAL_CHECKPOINT:
        return
    logger.info(f"Resumed at the end of the schedule from {checkpointer.resumed_from}: saving it as {FINAL_CHECKPOINT}")
    checkpointer.save_final(max_iter)


class SaveFinalAtTheEnd(HookBase):
    """After training that finished, for a run resumed at the end of its schedule: :func:`save_final_at_the_end`. The
    last of the standard hooks, so the phase's hooks' ``after_train`` find ``model_final`` saved."""

    def after_train(self):
        trainer = self.trainer
        if trainer.resumed_from and trainer.start_iter == trainer.max_iter and training_finished(trainer):
            save_final_at_the_end(trainer.checkpointer, trainer.max_iter)


def do_train(cfg, *, resume=False):
    """Trains one phase to ``train.max_iter`` in ``train.output_dir``; returns the model.

    With ``resume`` and a checkpoint in the output folder, training continues from it with the
    optimizer, scheduler, iteration and every model buffer (memories, indicators) restored.
    The phase's ``train.hooks`` run as the module docstring says.
    """
    check_max_iter(cfg, f"training in {cfg.train.output_dir}")
    check_total_batch_size(cfg, comm.get_world_size(), f"training in {cfg.train.output_dir}")
    seed_phase(cfg)
    model = build_model(cfg)
    logger.info(f"Model:\n{model}")
    phase_hooks = build_phase_hooks(cfg)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    cfg.optimizer.params.model = None  # the config outlives the phase; don't keep the model alive
    resume_data = cfg.train.get("resume_data", "replay")
    if resume_data not in RESUME_DATA_MODES:
        raise ValueError(f"train.resume_data must be one of {RESUME_DATA_MODES}, got {resume_data!r}")
    train_loader = ReplayableLoader(instantiate(cfg.dataloader.train), seed=cfg.train.get("seed", -1))

    model = create_ddp_model(model, cfg)
    trainer = (AMPTrainerWithNamedLosses if cfg.train.amp.enabled else Trainer)(model, train_loader, optimizer)
    checkpointer = AtomicCheckpointer(
        model,
        cfg.train.output_dir,
        initial_transforms=initial_checkpoint_transforms(phase_hooks),
        reinitialize=cfg.train.get("init_reinitialize", None),
        trainer=trainer,
    )
    # what the phase's hooks read (the module docstring's contract)
    trainer.cfg, trainer.checkpointer = cfg, checkpointer
    trainer.resumed_from = trainer.resumed_checkpoint = None
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer),  # on every rank: each rank saves its state
            StopOnRequest(checkpointer, cfg.train.checkpointer.period) if stop_requests_armed() else None,
            # periodic evaluation only; the phase runner evaluates the final model itself
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model), eval_after_train=False),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if comm.is_main_process()
            else None,
            SaveFinalAtTheEnd(),
            *[entry for entry in phase_hooks if isinstance(entry, HookBase)],
        ]
    )

    extra = checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    trainer.resumed_from = checkpointer.resumed_from
    trainer.resumed_checkpoint = extra if checkpointer.resumed_from else None
    if checkpointer.resumed_from:
        # the checkpoint stores the iteration that just finished (and the memories' state)
        start_iter = trainer.iter + 1
        check_resume_point(checkpointer.resumed_from, start_iter, cfg.train.max_iter)
        if resume_data == "replay" and start_iter > 0:
            logger.info(
                f"Replaying the data stream of iterations 0..{start_iter - 1} (no training) so that the resumed run "
                f"sees the batches of an uninterrupted one (train.resume_data=restart skips this)"
            )
            train_loader.skip = start_iter
        if extra.get("rank_state"):
            restore_rng_state(extra["rank_state"]["rng"])
    else:
        start_iter = 0
    trainer.train(start_iter, cfg.train.max_iter)
    comm.synchronize()
    return model
