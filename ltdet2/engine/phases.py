"""Multi-phase training: pretrain -> fine-tune -> incremental phases, each a LazyConfig (the project's config:
:mod:`ltdet2.engine.project_config`), run in order.

The runner trains phase k starting from phase k-1's final checkpoint (given as ``train.init_checkpoint``;
``train.init_from_phase`` names another earlier phase instead: :mod:`ltdet2.engine.phase_graph`), skips phases that
already finished (warning when a finished phase's config has changed since), resumes an interrupted one with
``--resume`` (without it, or ``--restart``, a phase holding an earlier run's checkpoints is refused; a folder whose
``last_checkpoint`` is missing resumes from its newest checkpoint, logged: :mod:`ltdet2.engine.checkpoint`), and ends
with one table of every phase's results. Before a phase trains, what would otherwise fail late or silently is checked
(:mod:`ltdet2.engine.phase_checks`): its datasets' files, the class counts of its teacher's and (LST) expanded
checkpoint, the total batch against the number of processes, ``train.checkpointer.period`` (>= 1); the temporary
files of interrupted writes in its folder are removed. Then it builds the phase's derived datasets
(``train.derived_datasets``, :mod:`ltdet2.engine.derived`) and gives a teacher-student model the frozen final model
of ``train.teacher_from_phase`` (:func:`~ltdet2.engine.phase_graph.chain_teachers`). A config without ``phases`` is
one phase trained in ``train.output_dir`` itself, exactly as Detectron2's own script does (a one-phase project is such
a plain config).

A phase's final evaluation runs at the end of its training (:func:`~ltdet2.engine.train_loop.final_evaluation`), so
that its metrics are in the phase's metrics.json and TensorBoard events at the last iteration; ``--eval-only`` appends
its metrics to the phase's :data:`EVAL_ONLY_METRICS_FILE` and has the evaluator write its files to
``<phase folder>/inference_eval_only/<checkpoint stem>/`` (:func:`eval_only_output_dir`), leaving the training's
``inference/`` (read by the phase's record and the leaderboard) as it was. Every phase that trains or is evaluated
ends with one line naming where its outputs are (:func:`outputs_line`), and a run of several phases with one more
(:func:`run_outputs_line`), after the table of all phases.

With several processes, rank 0 takes the decisions (skip a phase, train it, resume it from which
checkpoint, record it as done) and every rank follows them, so ranks whose folders are not in sync
cannot disagree; every rank returns rank 0's results.

:func:`load_config` and :func:`run_phases` are the entry points (``ltdet2.engine.phases.load_config``, as scripts
import it).
"""

import json
import logging
import math
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

import torch
from omegaconf import DictConfig

from detectron2.config import LazyConfig, instantiate
from detectron2.evaluation.evaluator import inference_context
from detectron2.utils import comm

from ..modeling.meta_arch.frozen_teacher import FrozenTeacherMixin
from ..utils.files import file_identity
from ..utils.json_io import read_json, write_json_atomic
from .checkpoint import AtomicCheckpointer, remove_interrupted_writes
from .derived import prepare_derived_datasets, register_derived_datasets
from .epochs import resolve_epoch_schedule
from .phase_checks import (
    check_class_counts,
    check_dataset_files,
    check_earlier_run,
    check_lvis_evaluator_dataset,
    check_phase_checkpoints,
    check_training_mapper,
    require_final_checkpoint,
    require_init_checkpoint,
    require_loadable_final,
    warn_if_config_changed,
)
from .phase_graph import (
    chain_checkpoints,
    chain_teachers,
    derived_dataset_builders,
    input_phase,
    teacher_phase,
    teacher_phase_name,
)
from .project_config import load_config
from .ranks import on_main_process, raise_if_any_rank_failed
from .results import log_phase_table
from .stop_requests import TrainingInterrupted, stop_requested_on_any_rank, stop_requests_armed
from .train_loop import (
    FINAL_CHECKPOINT,
    build_model,
    check_checkpoint_period,
    check_dataset_names,
    check_max_iter,
    check_total_batch_size,
    create_ddp_model,
    do_test,
    do_train,
    evaluation_scalars,
    evaluator_output_dir,
    final_evaluation,
    non_finite_parameters,
)

logger = logging.getLogger("detectron2")

__all__ = [
    "DONE_FILE",
    "Phase",
    "load_config",
    "resolve_phases",
    "select_phases",
    "single_phase",
    "run_phases",
    "run_phase",
    "evaluate_phase",
    "checkpoint_identity",
    "empty_evaluation",
    "non_finite_parameters",
    "EVAL_ONLY_METRICS_FILE",
    "EVAL_ONLY_INFERENCE_DIR",
    "eval_only_output_dir",
    "write_eval_only_record",
    "outputs_line",
    "run_outputs_line",
]

DONE_FILE = "phase_done.json"
# the datasets an evaluation only reads: the test set and the evaluator's
EVALUATED_DATASET_KEYS = ("dataloader.test.dataset.names", "dataloader.evaluator.dataset_name")


@dataclass
class Phase:
    name: str  # "" for a config without phases
    cfg: DictConfig
    output_dir: str

    @property
    def final_checkpoint(self):
        return os.path.join(self.output_dir, FINAL_CHECKPOINT)

    @property
    def where(self):
        """How messages name the phase: ``phase 'NAME'``, or ``training in FOLDER`` for a config without phases."""
        return f"phase '{self.name}'" if self.name else f"training in {self.output_dir}"

    @property
    def done_file(self):
        return os.path.join(self.output_dir, DONE_FILE)

    def has_final(self):
        return os.path.isfile(self.final_checkpoint)

    def is_done(self):
        return os.path.isfile(self.done_file) and self.has_final()

    def load_done(self):
        return read_json(self.done_file, what=f"phase '{self.name}' record")


def checkpoint_identity(path):
    """Path, size and modification time of a local checkpoint (None for URLs or missing files)."""
    return file_identity(path)


def resolve_phases(cfg):
    """The ordered list of :class:`Phase` of a loaded config."""
    root = cfg.train.output_dir
    if not cfg.get("phases", None):
        return [Phase("", cfg, root)]
    phases = []
    for name, phase_cfg in cfg.phases.items():
        phase_cfg.train.output_dir = os.path.join(root, name)
        phases.append(Phase(name, phase_cfg, phase_cfg.train.output_dir))
    return phases


def select_phases(phases, only=None):
    if only is None:
        return phases
    names = [p.name for p in phases]
    if only not in names:
        raise ValueError(f"--phase {only!r}: this config's phases are {names}")
    return [p for p in phases if p.name == only]


def single_phase(phases, name, *, config_file, naming):
    """Phase ``name`` of ``phases``, or the only phase when ``name`` is None; a config of several phases must name
    one (``naming`` says how, in the error, e.g. "with --phase")."""
    if name is None and len(phases) > 1:
        raise ValueError(f"{config_file} has phases {[p.name for p in phases]}: name one {naming}")
    return phases[0] if name is None else select_phases(phases, name)[0]


def run_phase(phase, *, resume=False):
    """Trains and evaluates one phase; records its results so a later run can skip it.

    A phase is recorded as done only when its final weights are finite and its evaluation found
    something (see :func:`empty_evaluation`; ``train.allow_empty_eval=True`` accepts an empty one).
    The record also holds ``train_seconds`` and ``eval_seconds``: wall seconds of this run's training
    (from its resume point, when resumed) and of its evaluation (0 for a phase without an evaluator)."""
    where = phase.where
    logger.info(
        f"===== phase '{phase.name}': training in {phase.output_dir} ====="
        if phase.name
        else f"===== training in {phase.output_dir} ====="
    )
    if comm.is_main_process():
        os.makedirs(phase.output_dir, exist_ok=True)
        LazyConfig.save(phase.cfg, os.path.join(phase.output_dir, "config.yaml"))
    train_start = time.perf_counter()
    try:
        # the final evaluation runs at the end of training, so that its metrics reach metrics.json and TensorBoard
        with final_evaluation() as evaluation:
            model = do_train(phase.cfg, resume=resume)
    except FloatingPointError as e:
        raise FloatingPointError(f"{where} diverged (not marked done): {e}") from e
    on_main_process(lambda: require_loadable_final(phase))
    non_finite = non_finite_parameters(model)
    raise_if_any_rank_failed(
        FloatingPointError(
            f"{where} diverged (not marked done): its final weights hold NaN or infinite values ({non_finite[:5]}"
            f"{' ...' if len(non_finite) > 5 else ''}). {RETRAIN_DIVERGED}"
        )
        if non_finite
        else None
    )
    eval_start = time.perf_counter()
    if evaluation.ran:
        results, eval_seconds = evaluation.results, evaluation.seconds
    else:  # a training function that does not evaluate at its end (e.g. a replaced do_train)
        results = do_test(phase.cfg, model)
        eval_seconds = time.perf_counter() - eval_start
    seconds = {"train_seconds": eval_start - train_start - evaluation.seconds, "eval_seconds": eval_seconds}

    def record():  # on rank 0, which holds the evaluator's results; every rank returns them
        empty = empty_evaluation(results) if "evaluator" in phase.cfg.dataloader else []
        if empty and not phase.cfg.train.get("allow_empty_eval", False):
            non_finite = non_finite_outputs(model, phase.cfg)
            if non_finite:
                raise FloatingPointError(
                    f"{where} diverged (not marked done): the evaluation of {phase.final_checkpoint} found nothing "
                    f"({'; '.join(empty)}) because the model's outputs are NaN or infinite (first in "
                    f"{', '.join(non_finite[:3])}, on the first test batch). {RETRAIN_DIVERGED}"
                )
            name = f"phases.{phase.name}.train" if phase.name else "train"
            raise RuntimeError(
                f"{where}: the evaluation of {phase.final_checkpoint} found nothing ({'; '.join(empty)}): the "
                f"model made no detection (too short a training?). Not marked done; to accept it, run again with "
                f"--resume {name}.allow_empty_eval=True"
            )
        if empty:
            logger.warning(f"{where}: empty evaluation ({'; '.join(empty)}), accepted (train.allow_empty_eval)")
        write_json_atomic(
            phase.done_file,
            {
                "final_checkpoint": phase.final_checkpoint,
                "input_checkpoint": checkpoint_identity(phase.cfg.train.init_checkpoint),
                **_teacher_record(phase),
                **seconds,
                "results": _plain(results),
            },
            indent=2,
        )
        log_phase_table([(phase.name or "final", results)])
        logger.info(outputs_line(phase))
        return results

    return on_main_process(record)


RETRAIN_DIVERGED = (
    "Train it again from its beginning (--restart) with a lower optimizer.lr or a longer warm-up (lr_multiplier)"
)


def non_finite_outputs(model, cfg):
    """Names of the modules of ``model`` whose outputs hold NaN or infinite values on the first batch of
    ``dataloader.test``, in the order they finished ([] when none, or when that batch cannot be run). Detectron2's
    inference drops non-finite boxes and scores without a word: this tells a diverged model from one that merely
    detects nothing. Runs the model of this process alone (not its DDP wrapper)."""
    model = getattr(model, "module", model)
    found = []

    def check(name):
        def hook(module, inputs, output):
            if name not in found and _holds_non_finite(output):
                found.append(name)

        return hook

    handles = [module.register_forward_hook(check(name)) for name, module in model.named_modules() if name]
    try:
        batch = next(iter(instantiate(cfg.dataloader.test)))
        with inference_context(model), torch.no_grad():
            model(batch)
    except Exception as e:  # a check after the fact: its failure must not hide the evaluation's message
        logger.warning(f"could not check the model's outputs for NaN or infinite values: {type(e).__name__}: {e}")
        return []
    finally:
        for handle in handles:
            handle.remove()
    return found


def _holds_non_finite(output):
    if isinstance(output, torch.Tensor):
        return output.is_floating_point() and not bool(torch.isfinite(output).all())
    if isinstance(output, (list, tuple)):
        return any(_holds_non_finite(o) for o in output)
    if isinstance(output, dict):
        return any(_holds_non_finite(o) for o in output.values())
    return False


def _teacher_record(phase):
    """{"teacher_checkpoint": identity} for a phase with a teacher (``train.teacher_from_phase``), else {}."""
    if teacher_phase_name(phase.cfg.train) is None:
        return {}
    return {"teacher_checkpoint": checkpoint_identity(phase.cfg.model.get("teacher_weights", None))}


def empty_evaluation(results):
    """Why evaluator ``results`` ({task: {metric: value}}) are empty: no task, or a task whose
    metrics are all NaN (what an evaluator returns when the model made no prediction). [] if not."""
    if not results:
        return ["the evaluator returned no results"]
    return [
        f"every {task} metric is NaN"
        for task, metrics in results.items()
        if isinstance(metrics, dict)
        and metrics
        and all(isinstance(v, float) and math.isnan(v) for v in metrics.values())
    ]


def evaluate_phase(phase, checkpoint=None):
    """Evaluates a phase's final checkpoint (or ``checkpoint``: a path or a Detectron2 URL); appends the metrics to
    the phase's :data:`EVAL_ONLY_METRICS_FILE` (:func:`write_eval_only_record`), has the evaluator write its files to
    :func:`eval_only_output_dir` (the training's ``inference/`` is left as it is) and ends with the line naming its
    outputs (:func:`outputs_line`)."""
    checkpoint = checkpoint or phase.final_checkpoint

    def check():
        if "://" not in checkpoint and not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"phase '{phase.name}': no checkpoint to evaluate at {checkpoint}")

    on_main_process(check)
    check_dataset_names(phase.cfg, phase.where, EVALUATED_DATASET_KEYS)
    model = create_ddp_model(build_model(phase.cfg), phase.cfg)
    loaded = AtomicCheckpointer(model, required_parameters=evaluated_parameters(model)).load(checkpoint)
    folder = eval_only_output_dir(phase.cfg, checkpoint)  # not the training's inference/: its record reads it
    results = do_test(phase.cfg, model, **({"output_dir": folder} if folder else {}))

    def record():  # the evaluator's results are rank 0's
        write_eval_only_record(phase, checkpoint, (loaded or {}).get("iteration", None), results)
        logger.info(outputs_line(phase, evaluated=checkpoint))
        return results

    return on_main_process(record)


EVAL_ONLY_METRICS_FILE = "eval_only_metrics.json"
EVAL_ONLY_INFERENCE_DIR = "inference_eval_only"


def eval_only_output_dir(cfg, checkpoint):
    """Where an evaluation only (``--eval-only``) of ``checkpoint`` has the phase's evaluator write its files:
    ``<phase folder>/inference_eval_only/<checkpoint's file name without extension>/`` (e.g.
    ``inference_eval_only/model_final/``), so that the training's ``inference/`` (its per-class AP, read by the phase's
    record and the leaderboard: :func:`ltdet2.engine.results.phase_record`) is not overwritten. None when the
    evaluator writes no files of its own (no evaluator, or one that takes no ``output_dir``) or when the config names
    its own folder for them (``dataloader.evaluator.output_dir``, kept)."""
    try:
        training = evaluator_output_dir(cfg)
    except Exception:  # an evaluator config that does not resolve here: the evaluator's own folder
        return None
    default = os.path.join(cfg.train.output_dir, "inference")
    if training is None or os.path.normpath(training) != os.path.normpath(default):
        return None
    stem = os.path.splitext(os.path.basename(str(checkpoint).rstrip("/")))[0]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".") or "checkpoint"
    return os.path.join(cfg.train.output_dir, EVAL_ONLY_INFERENCE_DIR, stem)


def write_eval_only_record(phase, checkpoint, iteration, results):
    """Appends one line to ``<phase folder>/eval_only_metrics.json`` (JSON lines, one record per ``--eval-only`` run,
    strict JSON): ``checkpoint``, its ``iteration`` (None when it records none), ``time`` (local, ISO 8601) and the
    evaluator's metrics flattened as in metrics.json (``"bbox/AP"``; a non-finite value is null). A training run's
    metrics.json is not written by an evaluation only. Returns the file's path."""
    finite, non_finite = evaluation_scalars(results)
    record = {
        "checkpoint": checkpoint,
        "iteration": iteration,
        "time": datetime.now().isoformat(timespec="seconds"),
        **finite,
        **dict.fromkeys(non_finite),
    }
    os.makedirs(phase.output_dir, exist_ok=True)
    path = os.path.join(phase.output_dir, EVAL_ONLY_METRICS_FILE)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True, allow_nan=False) + "\n")
    return path


def evaluation_files(cfg, *, evaluated=None):
    """(folder, [file names]) of what the phase's evaluator wrote (its ``output_dir``: ``<phase folder>/inference``
    unless the config names another; for an evaluation only of checkpoint ``evaluated``, :func:`eval_only_output_dir`),
    or None for a phase without an evaluator, or whose evaluator wrote nothing there."""
    try:
        folder = eval_only_output_dir(cfg, evaluated) if evaluated is not None else None
        folder = folder or evaluator_output_dir(cfg)
    except Exception:  # an evaluator config that does not resolve here: the line names no evaluation files
        return None
    if folder is None or not os.path.isdir(folder):
        return None
    names = sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n)) and ".tmp" not in n)
    return (folder, names) if names else None


def outputs_line(phase, *, evaluated=None):
    """The line that ends a phase's run, naming where its outputs are: the folder, the final checkpoint, metrics.json
    (training and final evaluation metrics), the evaluator's results files and the phase's record; after an
    evaluation only (``evaluated``: the checkpoint evaluated), :data:`EVAL_ONLY_METRICS_FILE` and the evaluator's
    files of that evaluation (:func:`eval_only_output_dir`). Only what exists is named."""
    folder = phase.output_dir

    def existing(label, name):
        path = os.path.join(folder, name)
        return [f"{label} {path}"] if os.path.isfile(path) else []

    evaluation = evaluation_files(phase.cfg, evaluated=evaluated)
    evaluated_files = [f"evaluation results {evaluation[0]} ({', '.join(evaluation[1])})"] if evaluation else []
    if evaluated is not None:
        what = f"Evaluation of {evaluated}" + (f" (phase '{phase.name}')" if phase.name else "")
        parts = existing("metrics", EVAL_ONLY_METRICS_FILE) + evaluated_files
    else:
        what = f"Phase '{phase.name}'" if phase.name else "Training"
        parts = [
            *existing("final checkpoint", FINAL_CHECKPOINT),
            *existing("metrics", "metrics.json"),
            *evaluated_files,
            *existing("record", DONE_FILE),
        ]
    return f"{what} done; outputs in {folder}: {'; '.join(parts) or 'none'}"


def run_outputs_line(cfg, reported, *, eval_only=False):
    """The line that ends a run of several phases (``reported``: the phases in its results, in order): the run's
    folder and each phase's final checkpoint (or, ``eval_only``, its :data:`EVAL_ONLY_METRICS_FILE`)."""
    name = EVAL_ONLY_METRICS_FILE if eval_only else FINAL_CHECKPOINT
    listed = ", ".join(f"{p.name} {os.path.join(p.output_dir, name)}" for p in reported)
    # an evaluation only of several phases evaluates their final checkpoints (a checkpoint given needs one phase)
    evaluated = any(evaluation_files(p.cfg, evaluated=p.final_checkpoint if eval_only else None) for p in reported)
    results = f"its evaluation results ({EVAL_ONLY_INFERENCE_DIR}/)" if eval_only else "its evaluation results"
    inside = [*([] if eval_only else ["metrics.json"]), *([results] if evaluated else [])]
    inside += [] if eval_only else [DONE_FILE]
    listing = ", ".join(inside[:-1]) + (" and " if len(inside) > 1 else "") + (inside[-1] if inside else "")
    also = f" (each phase's folder also holds {listing})" if inside else ""
    return f"Run done; outputs in {cfg.train.output_dir}: {listed}{also}"


def evaluated_parameters(model):
    """Names of the parameters an evaluation uses, which the evaluated checkpoint must hold: all but a
    teacher-student model's distillation terms (training only; LST's weight generator term is left out of its
    ``model_final``)."""
    model = getattr(model, "module", model)
    training_only = "distillers." if isinstance(model, FrozenTeacherMixin) else None
    return [name for name, _ in model.named_parameters() if training_only is None or not name.startswith(training_only)]


def run_phases(cfg, *, resume=False, restart=False, only=None, eval_only=False, eval_checkpoint=None):
    """Runs the config's phases in order; returns {name: results}.

    A phase that has not finished but whose folder holds checkpoints of an earlier run continues from them with
    ``resume``, trains again from its beginning with ``restart`` (they are removed first), and is refused otherwise
    (:func:`~ltdet2.engine.phase_checks.check_earlier_run`). With ``eval_only`` each selected phase's final checkpoint
    is evaluated instead (phases not trained yet are skipped with a warning), or ``eval_checkpoint`` for a single
    selected phase.
    """
    if resume and restart:
        raise ValueError(
            "--resume and --restart: choose one (--resume continues the phases that have not finished from their "
            "checkpoints, --restart trains them again from their beginning)"
        )
    phases = resolve_phases(cfg)
    chain_checkpoints(phases)
    chain_teachers(phases)
    all_results = OrderedDict()
    selected = select_phases(phases, only)
    if eval_only and eval_checkpoint and len(selected) > 1:
        raise ValueError(f"a checkpoint to evaluate ({eval_checkpoint}) needs one phase: add --phase NAME")
    if not eval_only:  # a length in iterations is checked before any phase trains; one in epochs by do_train
        finished = on_main_process(lambda: {p.name for p in selected if p.name and p.is_done()})
        for phase in selected:
            if phase.cfg.train.get("epochs", None) is None and "max_iter" in phase.cfg.train:
                check_max_iter(phase.cfg, phase.where)
            if phase.name not in finished:  # a finished phase may have trained with another number of processes
                check_checkpoint_period(phase.cfg, phase.where)
                check_total_batch_size(phase.cfg, comm.get_world_size(), phase.where)
                # a COCO json given to the LVIS evaluator would fail at the end of training: before any phase trains
                on_main_process(lambda p=phase: check_lvis_evaluator_dataset(p))
    for phase in selected:
        # a phase's derived datasets are registered whenever it runs (registration reads no file), built only
        # before it trains: evaluation uses the test set, which is not derived
        builders = derived_dataset_builders(phase.cfg)
        if eval_only:
            register_derived_datasets(phase, phases, builders)
            if on_main_process(lambda p=phase: eval_checkpoint is None and len(selected) > 1 and not p.has_final()):
                logger.warning(f"phase '{phase.name}' has no {FINAL_CHECKPOINT} yet: not evaluated")
                continue
            # the test set only: a derived training set is registered, but may not be built
            on_main_process(lambda p=phase: check_lvis_evaluator_dataset(p))
            on_main_process(lambda p=phase: check_dataset_files(p, ("dataloader.test.dataset.names",)))
            on_main_process(lambda p=phase: check_class_counts(p, ("dataloader.test.dataset.names",)))
            all_results[phase.name] = evaluate_phase(phase, eval_checkpoint)
            continue
        # decided on rank 0 (ranks whose folders are not in sync must not disagree): skip or train
        done = on_main_process(lambda p=phase: _finished_phase_record(p, phases))
        if done is not None:
            register_derived_datasets(phase, phases, builders)
            all_results[phase.name] = done["results"]
            continue
        if stop_requests_armed() and stop_requested_on_any_rank():  # a stop requested during the last phase's end
            raise TrainingInterrupted(
                f"training stopped on request before {phase.where} started; run again with --resume to continue",
                phase=phase.name,
            )
        on_main_process(lambda p=phase: check_dataset_files(p))
        on_main_process(lambda p=phase: check_phase_checkpoints(p, resume=resume))
        on_main_process(lambda p=phase: check_earlier_run(p, resume=resume, restart=restart))
        on_main_process(lambda p=phase: remove_interrupted_writes(p.output_dir, p.where))
        prepare_derived_datasets(phase, phases, builders)
        resolve_epoch_schedule(phase.cfg, phase.where)
        on_main_process(lambda p=phase: check_class_counts(p))
        on_main_process(lambda p=phase: check_training_mapper(p))
        teacher = teacher_phase(phases, phases.index(phase))
        if teacher is not None:
            logger.info(
                f"phase '{phase.name}': teacher = frozen final model of phase '{teacher.name}' "
                f"({teacher.final_checkpoint})"
            )
        all_results[phase.name] = run_phase(phase, resume=resume)
    if eval_only and not all_results:
        raise FileNotFoundError(
            f"--eval-only: nothing to evaluate, no phase has a {FINAL_CHECKPOINT} yet "
            f"({[p.final_checkpoint for p in selected]}); train them first, or evaluate a "
            f"checkpoint with --phase NAME train.init_checkpoint=PATH"
        )
    if comm.is_main_process() and len(all_results) > 1:
        log_phase_table(list(all_results.items()), title="all phases")
        reported = [p for p in selected if p.name in all_results]
        logger.info(run_outputs_line(cfg, reported, eval_only=eval_only))
    return all_results


def _finished_phase_record(phase, phases):
    """The done record of ``phase`` when it already finished (it is skipped), else None (it trains; its
    input checkpoint must then exist)."""
    if phase.name and phase.is_done():
        logger.info(f"phase '{phase.name}' already finished ({phase.done_file}): skipping it")
        done = phase.load_done()
        retrain = f"to train it again, delete {phase.done_file} and run with --restart"
        if done.get("input_checkpoint") != checkpoint_identity(phase.cfg.train.init_checkpoint):
            logger.warning(
                f"phase '{phase.name}' was trained from another version of "
                f"{phase.cfg.train.init_checkpoint} than the one there now; {retrain}"
            )
        teacher = _teacher_record(phase)
        if teacher and done.get("teacher_checkpoint") != teacher["teacher_checkpoint"]:
            logger.warning(
                f"phase '{phase.name}' was distilled from another version of its teacher "
                f"{phase.cfg.model.teacher_weights} than the one there now; {retrain}"
            )
        warn_if_config_changed(phase)
        return done
    index = phases.index(phase)
    require_init_checkpoint(phase, input_phase(phases, index))
    teacher = teacher_phase(phases, index)
    if teacher is not None:
        require_final_checkpoint(
            teacher,
            f"phase '{phase.name}' distils from the frozen final model of phase '{teacher.name}' "
            f"(train.teacher_from_phase),",
        )
    return None


def _plain(results):
    return json.loads(json.dumps(results, default=float))
