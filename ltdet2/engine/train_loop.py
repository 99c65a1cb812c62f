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
* a periodic evaluation leaves the RNG states as it found them, and one that a stop or a kill cut short (the
  checkpoint of its iteration is saved before it) runs when the run resumes (:class:`EvalHook`), so a learning
  curve keeps every point;
* a resume at the end of the schedule (a run killed while it saved ``model_final``: its last periodic checkpoint
  is of the last iteration) takes no step and writes ``model_final`` from that checkpoint; a resume from a
  checkpoint beyond ``train.max_iter`` is refused, as is a schedule without iterations (``train.max_iter`` < 1);
* ``--resume`` in a folder whose ``last_checkpoint`` is missing (deleted, or a copy of the folder without it) but
  that holds checkpoints resumes from the newest of them (``model_final``, else the highest iteration of
  ``model_XXXXXXX.pth``), logging which; one that cannot be read is an error naming it (not a start from iteration
  0 over them);
* ``train.checkpointer.period`` must be >= 1 (:func:`check_checkpoint_period`, a ValueError naming the phase before
  it trains, where Detectron2's checkpointer fails with a ZeroDivisionError at the first step); a period above
  ``train.max_iter`` saves ``model_final`` only.

**What a run writes** (Detectron2's writers: ``metrics.json``, TensorBoard events, progress lines). The training
scalars are written every ``train.log_period`` iterations and at the last one (one metrics.json record per iteration
written). Within
:func:`final_evaluation` (the phase runner trains every phase so), the final evaluation (:class:`FinalEvaluation`:
``dataloader.test`` with ``dataloader.evaluator``) runs at the end of a training that reached ``train.max_iter``, after
every hook's ``after_train`` (the phase's hooks may still change the model), and its metrics go to the
``EventStorage`` at the last iteration, ``max_iter - 1``, flattened as Detectron2's ``EvalHook`` names them
(``bbox/AP``, ``bbox/APr``, ..., ``segm/AP`` with masks): metrics.json and TensorBoard hold them in that iteration's
record (the writers write the last iteration after the evaluation; its progress line is printed at its step), so
metrics.json keeps one record per logged iteration, ``0 .. max_iter - 1``. A non-finite metric (NaN: a class group
without ground truth, or an evaluation without a detection) is left out of them (named in the log; metrics.json stays
strict JSON); the evaluator's results (the phase's ``phase_done.json``) keep it. The periodic evaluation
(``train.eval_period``) puts its metrics at its iteration the same way. A run resumed at the end of its schedule takes
no step: its final evaluation's metrics are appended as one more record of iteration ``max_iter - 1`` (Detectron2
appends to metrics.json on every run; a reader takes an iteration's last record). A run that stopped early (an error,
a stop request) is not evaluated. An evaluation only (``--eval-only``: :func:`ltdet2.engine.phases.evaluate_phase`)
does not write metrics.json: it appends one record (the checkpoint, its iteration, the time, the metrics; a non-finite
one null) to ``eval_only_metrics.json`` in the phase's folder, and its evaluator writes its files (per-class AP,
predictions) to ``<phase folder>/inference_eval_only/<checkpoint's file name without extension>/``
(:func:`ltdet2.engine.phases.eval_only_output_dir`), not to the training's ``inference/``, which the phase's record
and the leaderboard read. Every run ends with one line naming where its outputs
are (:func:`ltdet2.engine.phases.outputs_line`).

A divergence (a non-finite loss, or Detectron2's check of non-finite boxes or scores in the model) stops training with
:class:`TrainingDiverged`, naming the iteration and each loss term's last value.

**Phase hooks** (``train.hooks``: a list of LazyCall nodes, default empty). A method's extra steps are declared by the
phase, not written here (e.g. :mod:`ltdet2.hooks`: LOCE's memory warm-up, LST's phase-end write of generated rows and
its network expansion). :func:`do_train` instantiates every entry (:func:`build_phase_hooks`) after building the
model, before the optimizer and the data loader; each must be one or both of:

* a Detectron2 :class:`~detectron2.engine.HookBase`: registered after the standard hooks (iteration timer, LR
  scheduler, periodic checkpointer, stop on request, periodic evaluation, writers, and the save of ``model_final`` of a
  run resumed at the end of its schedule), in list order, before the final evaluation (the last hook, when there is
  one: above) and before the checkpoint is loaded, so a hook with a
  ``state_dict`` is saved and resumed with the trainer (Detectron2's hook state; the periodic checkpointer saves in its
  ``after_step``, before the phase's hooks' ``after_step``: state changed there is saved with the next checkpoint,
  state changed in ``before_step`` with this iteration's). Its ``before_train`` runs after the
  checkpoint is loaded and the RNG restored, before the first iteration (the standard hooks' draw no random number);
  its ``after_train`` after ``model_final`` was saved and before the final evaluation, also after an error or a stop
  request: :func:`training_finished` tells whether the loop reached ``train.max_iter`` (the writers write the last
  iteration's metrics.json record after it when the final evaluation follows, before it otherwise);
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
import contextvars
import functools
import inspect
import json
import logging
import math
import os
import time

import numpy as np
import torch
from omegaconf import ListConfig, OmegaConf

from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, HookBase, SimpleTrainer, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model as _create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import CommonMetricPrinter

from ..utils.json_io import read_json, write_json_atomic
from ..utils.lazy_config import lazy_target
from .checkpoint import AtomicCheckpointer, PeriodicCheckpointer, capture_rng_state, restore_rng_state
from .freezing import check_frozen_terms, freeze_all_but
from .precision import autocast_training_modules, training_precision
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


def evaluator_output_dir(cfg):
    """Where the phase's evaluator writes its results: its ``output_dir``, by default (when it takes one)
    ``<train.output_dir>/inference``, as Detectron2's train_net; None without an evaluator or for one that takes
    no ``output_dir``."""
    evaluator_cfg = cfg.dataloader.get("evaluator", None)
    if evaluator_cfg is None:
        return None
    if evaluator_cfg.get("output_dir", None) is not None:
        return evaluator_cfg.output_dir
    return os.path.join(cfg.train.output_dir, "inference") if _accepts_output_dir(evaluator_cfg) else None


def build_evaluator(cfg, output_dir=None):
    """The phase's evaluator (None without one); ``output_dir``: where it writes instead of
    :func:`evaluator_output_dir` (an evaluation only's folder), for an evaluator that takes one."""
    if "evaluator" not in cfg.dataloader:
        return None
    evaluator_cfg = cfg.dataloader.evaluator
    if output_dir is not None and _accepts_output_dir(evaluator_cfg):
        saved = evaluator_cfg.get("output_dir", None)
        evaluator_cfg.output_dir = output_dir
        try:
            return instantiate(evaluator_cfg)
        finally:
            evaluator_cfg.output_dir = saved
    # like Detectron2's train_net: results and per-class AP go to <phase output>/inference
    if evaluator_cfg.get("output_dir") is None and _accepts_output_dir(evaluator_cfg):
        evaluator_cfg.output_dir = evaluator_output_dir(cfg)
    return instantiate(evaluator_cfg)


def _accepts_output_dir(lazy_cfg):
    try:
        return "output_dir" in inspect.signature(lazy_target(lazy_cfg)).parameters
    except (TypeError, ValueError):
        return False


def do_test(cfg, model, *, output_dir=None):
    """Evaluates ``model`` on ``dataloader.test``; returns the evaluator's results (or {}). ``output_dir``: where the
    evaluator writes its files instead of its own folder (:func:`build_evaluator`)."""
    evaluator = build_evaluator(cfg, output_dir)
    if evaluator is None:
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator)
    if comm.is_main_process():
        print_csv_format(results)
    return results


def evaluation_scalars(results):
    """``({name: float}, [name, ...])``: the finite and the non-finite metrics of evaluator ``results`` (a nested dict:
    ``{"bbox": {"AP": ...}}``), flattened as Detectron2's ``EvalHook`` names them (``"bbox/AP"``: its
    ``flatten_results_dict``). A value that is not a number is a ValueError naming it (as Detectron2's)."""
    finite, non_finite = {}, []
    for name, value in flatten_results_dict(results or {}).items():
        try:
            value = float(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"an evaluation metric must be a number: {name}={value!r}") from e
        if math.isfinite(value):
            finite[name] = value
        else:
            non_finite.append(name)
    return finite, non_finite


def put_evaluation_metrics(storage, results, iteration):
    """Puts the finite metrics of evaluator ``results`` (:func:`evaluation_scalars`) in Detectron2's ``storage`` at
    ``iteration`` (not smoothed), for its writers (metrics.json, TensorBoard). A non-finite value (NaN: AP of a class
    group without ground truth, or of an evaluation without a detection) is left out, so that metrics.json stays
    strict JSON; the evaluator's results (and the phase's record) keep it. Returns the names left out."""
    finite, non_finite = evaluation_scalars(results)
    if finite:
        storage.put_scalars(**finite, smoothing_hint=False, cur_iter=iteration)
    return non_finite


PERIODIC_EVALUATIONS_FILE = "periodic_evaluations.json"


class EvalHook(hooks.EvalHook):
    """Detectron2's ``EvalHook`` (the periodic evaluation, ``train.eval_period``), its metrics put in the storage as
    :func:`put_evaluation_metrics` puts them (non-finite ones left out), made exact across a resume:

    * an evaluation leaves the RNG states as it found them (the test loader draws its seed from torch's global
      generator), so the training after it is the same whether or not the run was resumed from the checkpoint of the
      evaluation's iteration (saved before the evaluation, with the RNG states of then);
    * ``output_dir``: each finished evaluation's finite metrics are recorded, by iteration, in its
      :data:`PERIODIC_EVALUATIONS_FILE` (main process). A run resumed right after an evaluation's iteration (the
      checkpoint of that iteration saved, the run killed or stopped on request before the evaluation finished)
      evaluates it first, with the checkpoint's weights, as the evaluation would have; when the file has that
      evaluation but metrics.json lacks its metrics (killed before the writers wrote them), they are put back from
      the file. So a learning curve keeps every point whenever the run was stopped. A run from iteration 0 removes
      the file first (an earlier run's, e.g. before ``--restart``); a run started before the file existed (before
      2026-12-07) evaluates again on such a resume, since it has no record of what finished.
    """

    def __init__(self, eval_period, eval_function, *, output_dir=None):
        super().__init__(eval_period, eval_function, eval_after_train=False)
        self.output_dir = output_dir

    def _do_eval(self):
        self._evaluate(self.trainer.storage.iter)

    def _evaluate(self, iteration):
        rng_state = capture_rng_state()
        try:
            results = self._func()
        finally:
            restore_rng_state(rng_state)
        if results:
            if not isinstance(results, dict):
                raise TypeError(f"the evaluation function must return a dict, got {type(results).__name__}")
            put_evaluation_metrics(self.trainer.storage, results, iteration)
            if self.output_dir is not None and comm.is_main_process():
                recorded = self._recorded()
                recorded[str(iteration)] = evaluation_scalars(results)[0]
                write_json_atomic(os.path.join(self.output_dir, PERIODIC_EVALUATIONS_FILE), recorded, indent=1)
        comm.synchronize()  # evaluation may take different times on the ranks: they start the next step together

    def _recorded(self):
        path = os.path.join(self.output_dir, PERIODIC_EVALUATIONS_FILE)
        return read_json(path, what="periodic evaluations") if os.path.isfile(path) else {}

    def before_train(self):
        iteration = self.trainer.start_iter - 1  # the iteration the run resumed after
        if iteration < 0 and self.output_dir is not None and comm.is_main_process():
            # a run from the start (--restart, or checkpoints deleted by hand): an earlier run's records are not its own
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.output_dir, PERIODIC_EVALUATIONS_FILE))
        due = self._period > 0 and iteration >= 0 and (iteration + 1) % self._period == 0
        if self.output_dir is None or not due or iteration + 1 >= self.trainer.max_iter:
            return
        # decided on the main process (which writes metrics.json), the same on every rank: evaluation is collective
        missing = comm.all_gather(self._missing_metrics(iteration) if comm.is_main_process() else None)[0]
        if missing is None:
            logger.info(
                f"The periodic evaluation after iteration {iteration} did not finish before the run stopped: "
                f"evaluating the resumed checkpoint now"
            )
            self._evaluate(iteration)
        elif missing:
            logger.info(
                f"Putting back the metrics of the periodic evaluation after iteration {iteration}, which the run "
                f"stopped before writing to metrics.json, from {PERIODIC_EVALUATIONS_FILE}"
            )
            self.trainer.storage.put_scalars(**missing, smoothing_hint=False, cur_iter=iteration)

    def _missing_metrics(self, iteration):
        """None when the evaluation after ``iteration`` never finished; else {name: value} of its metrics that
        metrics.json lacks at ``iteration`` (empty: none)."""
        metrics = self._recorded().get(str(iteration))
        if metrics is None:
            return None
        written = {}
        path = os.path.join(self.output_dir, "metrics.json")
        if os.path.isfile(path):
            with open(path) as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by the kill
                        continue
                    if record.get("iteration") == iteration:
                        written.update(record)
        return {name: value for name, value in metrics.items() if name not in written}


class PeriodicWriter(hooks.PeriodicWriter):
    """Detectron2's ``PeriodicWriter`` (its progress printer, metrics.json and TensorBoard writers), except when the
    phase's final evaluation follows (:class:`FinalEvaluation`, ``final_evaluation``): metrics.json and TensorBoard
    are then written for the last iteration after that evaluation, so that its metrics share the iteration's record;
    the progress line of the last iteration is printed at its step, as always."""

    def __init__(self, writers, period=20):
        super().__init__(writers, period=period)
        self.final_evaluation = None  # the FinalEvaluation that writes the last iteration and closes the writers
        self.closed = False

    def _waits(self):
        return self.final_evaluation is not None and not self.closed

    def after_step(self):
        if self._waits() and self.trainer.iter == self.trainer.max_iter - 1:
            for writer in self._writers:
                if isinstance(writer, CommonMetricPrinter):
                    writer.write()
            return
        super().after_step()

    def after_train(self):
        if self._waits() and training_finished(self.trainer):
            return  # FinalEvaluation.after_train writes and closes
        self.write_and_close()

    def write_and_close(self):
        """Writes what the storage holds that was not written yet and closes the writers (once)."""
        if self.closed:
            return
        self.closed = True
        for writer in self._writers:
            # Detectron2's progress printer, writing again an iteration it printed before the iteration timer's first
            # "time" (its first iterations), divides by zero estimating the ETA: that would hide why training stopped
            printed = getattr(writer, "_last_write", None) if isinstance(writer, CommonMetricPrinter) else None
            if printed is None or printed[0] != self.trainer.storage.iter:
                writer.write()
            writer.close()


class FinalEvaluation(HookBase):
    """The phase's final evaluation (:func:`do_test`: ``dataloader.test`` with ``dataloader.evaluator``), at the end
    of a training that reached ``train.max_iter`` (:func:`training_finished`), inside the training loop so that its
    metrics go to Detectron2's ``EventStorage`` at the last iteration (``max_iter - 1``): metrics.json and TensorBoard
    hold ``bbox/AP``, ``bbox/APr``, ... (``segm/...`` with masks) in that iteration's record
    (:func:`put_evaluation_metrics`). Registered after every other hook, the phase's included: their ``after_train``
    may still change the model (LST's written classifier rows) or save ``model_final``. It then writes and closes
    the writers (:class:`PeriodicWriter`), also when training failed or the evaluation raised.

    A model whose parameters or buffers are not finite (on any rank) is not evaluated: the runner reports the
    divergence. After :meth:`after_train`: ``ran`` (evaluated), ``results`` (the evaluator's, rank 0's; ``{}`` without
    an evaluator) and ``seconds``. Every rank runs it (the evaluation is a collective)."""

    def __init__(self):
        self.writers = None  # the PeriodicWriter hook (main process), set by do_train
        self.ran = False
        self.results = None
        self.seconds = 0.0

    def after_train(self):
        try:
            if training_finished(self.trainer):
                self._evaluate()
        finally:
            if self.writers is not None:
                self.writers.write_and_close()

    def _evaluate(self):
        trainer = self.trainer
        model = getattr(trainer.model, "module", trainer.model)
        if any(comm.all_gather(bool(non_finite_parameters(model)))):
            logger.warning(
                f"The final model of the training in {trainer.cfg.train.output_dir} holds NaN or infinite values: "
                f"not evaluated"
            )
            return
        start = time.perf_counter()
        self.results = do_test(trainer.cfg, trainer.model)
        self.seconds = time.perf_counter() - start
        self.ran = True
        left_out = put_evaluation_metrics(trainer.storage, self.results, trainer.max_iter - 1)
        if left_out and comm.is_main_process():
            logger.info(
                f"Final evaluation: {len(left_out)} metric(s) are not finite (NaN: no ground truth in the group, or no "
                f"detection) and are left out of metrics.json and TensorBoard: {', '.join(left_out[:12])}"
                f"{' ...' if len(left_out) > 12 else ''}"
            )


_FINAL_EVALUATION = contextvars.ContextVar("ltdet2_final_evaluation", default=None)


@contextlib.contextmanager
def final_evaluation():
    """Within it, :func:`do_train` ends with the phase's final evaluation (:class:`FinalEvaluation`, the object
    yielded: read its ``ran``, ``results`` and ``seconds`` afterwards). Without it, :func:`do_train` does not
    evaluate after training (the periodic evaluation, ``train.eval_period``, still runs). The phase runner trains
    each phase within it (:func:`ltdet2.engine.phases.run_phase`)."""
    hook = FinalEvaluation()
    token = _FINAL_EVALUATION.set(hook)
    try:
        yield hook
    finally:
        _FINAL_EVALUATION.reset(token)


def non_finite_parameters(model):
    """Names of the parameters and buffers of ``model`` holding NaN or infinite values."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    floating = [(name, t) for name, t in tensors if t.is_floating_point()]
    if not floating:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in floating]).tolist()
    return [name for (name, _), ok in zip(floating, finite) if not ok]


def build_model(cfg):
    """Instantiates ``cfg.model``, freezes what ``train.trainable`` leaves out (refusing a loss or distillation
    term left with no trainable parameter unless ``train.frozen_terms`` names it), moves it to the device."""
    model = instantiate(cfg.model)
    freeze_all_but(model, cfg.train.get("trainable", None))
    check_frozen_terms(model, cfg.train.get("frozen_terms", None) or ())
    model.to(cfg.train.device)
    precision = training_precision(cfg.train.get("amp", None), cfg.train.device)
    if precision is not None and torch.device(cfg.train.device).type == "cpu":
        autocast_training_modules(model, precision)  # CUDA: Detectron2's AMPTrainer (trainer_class)
    return model


def trainer_class(cfg):
    """The phase's trainer: Detectron2's ``AMPTrainer`` (with ``train.amp.precision``) for ``train.amp`` on CUDA;
    otherwise the plain one (on a CPU, :func:`build_model` scoped the autocast to the model's heavy modules)."""
    precision = training_precision(cfg.train.get("amp", None), cfg.train.device)
    if precision is None or torch.device(cfg.train.device).type == "cpu":
        return Trainer
    return functools.partial(AMPTrainerWithNamedLosses, precision=precision)


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


def check_checkpoint_period(cfg, where="training"):
    """ValueError unless ``train.checkpointer.period`` is a whole number of iterations >= 1. Detectron2's periodic
    checkpointer saves ``model_XXXXXXX`` after every ``period`` iterations (and ``model_final`` at the last one,
    whatever the period); a period of 0 makes its ``(iteration + 1) % period`` a ZeroDivisionError at the first
    step, and a negative one saves at every iteration. A period above ``train.max_iter`` saves ``model_final`` only."""
    checkpointer = cfg.train.get("checkpointer", None)
    if checkpointer is None or "period" not in checkpointer:
        return
    try:
        period = checkpointer.period
    except Exception:  # an interpolation that does not resolve here: left to the hook
        return
    if isinstance(period, int) and not isinstance(period, bool) and period >= 1:
        return
    max_iter = cfg.train.get("max_iter", None)
    only_final = f" (e.g. {max_iter + 1})" if isinstance(max_iter, int) and max_iter >= 1 else ""
    raise ValueError(
        f"{where}: train.checkpointer.period={period!r}: the periodic checkpointer saves a checkpoint every period "
        f"iterations, so it must be a whole number >= 1. Set train.checkpointer.period to a period >= 1; to save "
        f"model_final only, set it above train.max_iter{only_final}"
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


# where a phase names the datasets it reads: its training and test sets, and its evaluator's
NAMED_DATASET_KEYS = (
    "dataloader.train.dataset.names",
    "dataloader.test.dataset.names",
    "dataloader.evaluator.dataset_name",
)


def check_dataset_names(cfg, where="training", dataset_keys=NAMED_DATASET_KEYS):
    """A ValueError for a dataset name at ``dataset_keys`` of ``cfg`` (default: the training and test sets and the
    evaluator's) that is not registered in Detectron2's ``DatasetCatalog``, naming the key and the closest registered
    names (a misspelt name: ``difflib``), before the model is built (rather than Detectron2's KeyError listing every
    registered dataset when the loader is built, or the evaluator's at the end of training)."""
    from detectron2.data import DatasetCatalog

    from ..data.datasets import unregistered_dataset_message

    registered = set(DatasetCatalog.list())
    for key in dataset_keys:
        try:
            value = OmegaConf.select(cfg, key, default=None)
        except Exception:  # an interpolation that does not resolve here: left to the loader
            continue
        if isinstance(value, str):
            value = [value]
        names = list(value) if isinstance(value, (list, tuple, ListConfig)) else []
        for name in names:
            if isinstance(name, str) and name not in registered:
                message = unregistered_dataset_message(name)
                message += " " if message.endswith("?") else ". "
                raise ValueError(
                    f"{where}: {key}: {message}Detectron2 registers its built-in datasets (lvis_v1_val, "
                    f"coco_2017_train, ...) and ltdet2 LT-Shapes (lt_shapes_train, lt_shapes_val) on import; register "
                    f"your own with ltdet2.data.register_lvis_format_dataset(name, json_file, image_root) before the "
                    f"run (e.g. in the config file)"
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
    check_checkpoint_period(cfg, f"training in {cfg.train.output_dir}")
    check_total_batch_size(cfg, comm.get_world_size(), f"training in {cfg.train.output_dir}")
    check_dataset_names(cfg, f"training in {cfg.train.output_dir}")
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
    trainer = trainer_class(cfg)(model, train_loader, optimizer)
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
    writers = (
        PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
        if comm.is_main_process()
        else None
    )
    final = _FINAL_EVALUATION.get()  # within final_evaluation(): the runner's final evaluation, after every hook
    if final is not None:
        final.writers = writers
        if writers is not None:
            writers.final_evaluation = final
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer),  # on every rank: each rank saves its state
            StopOnRequest(checkpointer, cfg.train.checkpointer.period) if stop_requests_armed() else None,
            # periodic evaluation only (eval_after_train=False): the final one is FinalEvaluation's
            EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model), output_dir=cfg.train.output_dir),
            writers,
            SaveFinalAtTheEnd(),
            *[entry for entry in phase_hooks if isinstance(entry, HookBase)],
            final,
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
    try:
        trainer.train(start_iter, cfg.train.max_iter)
    finally:
        if writers is not None and not writers.closed and getattr(trainer, "storage", None) is not None:
            # a hook's after_train raised before the final evaluation's: the last iteration's metrics still written
            with trainer.storage:
                writers.write_and_close()
    comm.synchronize()
    return model
