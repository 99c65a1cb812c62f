"""Derived datasets of a phase: the runner's preparation step and the context its builders read.

A phase lists builders in ``train.derived_datasets`` (LazyConfigs; absent or empty: none), e.g. step-wise's
``ltdet2.data.ExemplarSetBuilder``. A builder is any object with

- ``name``: the derived dataset's registered name;
- ``input_phases() -> list[str]``: earlier phases whose final checkpoints it needs (may be empty);
- ``prepare(context)``: on the main process only, builds its files under ``context.output_dir`` (skipped when
  already built from the same inputs: the builder's business);
- ``register(context)``: on every process, after ``prepare``: registers ``name``;
- optionally ``score_requests() -> list of dict(phase=, dataset=, score=)``: the score tables its ``prepare``
  will ask for. With several processes the runner computes them first on every rank (the images sharded
  over the ranks); without it, ``prepare`` scores on the main process alone while the others wait.

Before a phase trains, the runner (:func:`prepare_derived_datasets`) checks every builder's input phases (an
earlier phase whose final checkpoint exists), prepares the builders on the main process (an error there is
raised on every rank) and registers them on every process. A phase that is skipped (finished) or only evaluated
registers its builders' datasets without preparing them (:func:`register_derived_datasets`: registration reads only
the end of each derived json, its build record), so that model pieces naming the training dataset can be built; a
json found missing or damaged then is rebuilt from the builder's inputs, or the error names it and what is missing.
"""

import logging
import os

import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from ..data.derived import DerivedDatasetUnavailable
from ..utils.files import content_identity, file_identity
from .checkpoint import AtomicCheckpointer
from .exemplar_scoring import (
    SCORE_MODES,
    ScoreTableDamaged,
    ScoreTableMismatch,
    load_score_table,
    save_score_table,
    score_annotations,
)
from .model_input import evaluation_input
from .phase_checks import require_final_checkpoint
from .phase_graph import derived_dataset_builders, derived_input_phases, earlier_phases
from .ranks import on_main_process, raise_if_any_rank_failed
from .train_loop import build_model

__all__ = [
    "DerivedDatasetContext",
    "derived_dataset_builders",
    "prepare_derived_datasets",
    "register_derived_datasets",
]

logger = logging.getLogger("detectron2")


class DerivedDatasetContext:
    """What a derived-dataset builder of phase ``phase_name`` reads: its folder, its seed, and score tables of
    earlier phases' final models.

    Args:
        phase_name: the phase whose datasets are built.
        output_dir: that phase's folder (builders write there; score tables are cached there).
        seed: the phase's ``train.seed``.
        phases: {name: phase} of the phases whose final models may score (the earlier ones); a phase has
            ``name``, ``cfg`` (its config namespace) and ``final_checkpoint``.
        scoring_batch_size: images per forward pass of the scorer (per process).
    """

    def __init__(self, *, phase_name, output_dir, seed, phases, scoring_batch_size=4):
        self.phase_name = phase_name
        self.output_dir = output_dir
        self.seed = seed
        self.phases = dict(phases)
        self.scoring_batch_size = scoring_batch_size
        self.collective = False  # True while every rank calls annotation_scores (the runner's score requests)

    def _phase(self, phase):
        if phase not in self.phases:
            raise ValueError(
                f"phase '{self.phase_name}': scores of phase {phase!r} asked for, but it is not an earlier phase "
                f"(earlier phases: {list(self.phases)})"
            )
        return self.phases[phase]

    def table_path(self, phase, *, dataset, score="max_foreground"):
        """Where the table of ``phase``'s scores of ``dataset`` is cached (in this phase's folder)."""
        return os.path.join(self.output_dir, f"annotation_scores.{phase}.{dataset}.{score}.npz")

    def table_identity(self, phase, *, dataset, score="max_foreground"):
        """JSON-able identity of the table of ``phase``'s final model's ``score`` of every annotation of
        ``dataset``: the phase, its checkpoint's content (size and digest, :func:`~ltdet2.utils.files.content_identity`:
        a run folder moved elsewhere keeps its tables, a checkpoint rewritten does not), the dataset and its json
        (path, size, mtime), the score mode and the test-time input (augmentations, image format) the model scored
        with."""
        if score not in SCORE_MODES:
            raise ValueError(f"phase '{self.phase_name}': score must be one of {SCORE_MODES}, got {score!r}")
        source = self._phase(phase)
        augmentations, image_format = evaluation_input(source.cfg)
        return {
            "phase": phase,
            "checkpoint": content_identity(source.final_checkpoint),
            "dataset": dataset,
            "dataset_json": _dataset_json_identity(dataset),
            "score": score,
            "input": {"augmentations": [repr(a) for a in augmentations], "image_format": image_format},
        }

    def annotation_scores(self, phase, *, dataset, score="max_foreground"):
        """The table (dict of 1-D numpy arrays ``annotation_id``, ``image_id``, ``category_id`` (json ids),
        ``score``; one entry per annotation of ``dataset``) of phase ``phase``'s final model
        (:func:`~ltdet2.engine.exemplar_scoring.score_annotations`, with that phase's test-time resize).

        Cached in this phase's folder and reused when the same checkpoint (content) and dataset json produced it;
        scored again, with a warning naming what changed, otherwise, or naming the file when it is damaged (cut
        short, not a table: a cache, written again). Without a table in this phase's folder, the same table cached
        by an earlier phase (e.g. step-wise's head expert, for the transfer phase: both sets are drawn from the
        pretrained model's scores) is reused, and copied here, when its identity matches."""
        path = self.table_path(phase, dataset=dataset, score=score)
        identity = self.table_identity(phase, dataset=dataset, score=score)
        former = dict(identity, checkpoint=file_identity(self._phase(phase).final_checkpoint))

        def cached():
            try:
                table = self._load_table(path, identity, former=former, upgrade=True)
            except FileNotFoundError:
                return from_earlier_phase()
            except ScoreTableDamaged as e:
                logger.warning(f"phase '{self.phase_name}': {e}: scoring again (the file is a cache)")
                return None
            except ScoreTableMismatch as e:
                logger.warning(f"phase '{self.phase_name}': {e}: scoring again")
                return None
            logger.info(f"phase '{self.phase_name}': reusing the scores of phase '{phase}' in {path}")
            return table

        def from_earlier_phase():
            for other in self.phases.values():
                folder = getattr(other, "output_dir", None)
                other_path = os.path.join(folder, os.path.basename(path)) if folder else None
                if other_path is None or os.path.abspath(other_path) == os.path.abspath(path):
                    continue
                try:
                    table = self._load_table(other_path, identity, former=former, upgrade=False)
                except (FileNotFoundError, ValueError):  # none, another model's or dataset's, or damaged
                    continue
                save_score_table(path, table, identity)
                logger.info(
                    f"phase '{self.phase_name}': reusing the scores of phase '{phase}' that phase '{other.name}' "
                    f"computed ({other_path}); copied to {path}"
                )
                return table
            return None

        if not self.collective:
            table = cached()
            if table is None:
                table = self._score(phase, dataset, score, distributed=False)
                save_score_table(path, table, identity)
                logger.info(f"phase '{self.phase_name}': wrote the scores of phase '{phase}' to {path}")
            return table
        if on_main_process(lambda: cached() is not None):
            return None  # the main process's prepare() reads it
        table = self._score(phase, dataset, score, distributed=True)
        if comm.is_main_process():
            save_score_table(path, table, identity)
            logger.info(f"phase '{self.phase_name}': wrote the scores of phase '{phase}' to {path}")
        comm.synchronize()
        return table

    @staticmethod
    def _load_table(path, identity, *, former, upgrade):
        """:func:`load_score_table` of ``path`` expecting ``identity``. A table cached before tables were keyed by
        their checkpoint's content (``former``: the identity with the checkpoint's path, size and mtime) is taken
        while that file is unchanged; with ``upgrade`` it is stored again with ``identity``."""
        try:
            return load_score_table(path, expect=identity)
        except ScoreTableMismatch as mismatch:
            try:
                table = load_score_table(path, expect=former)
            except ScoreTableMismatch:
                raise mismatch from None
        if upgrade:
            save_score_table(path, table, identity)
            logger.info(f"{path}: stored again keyed by its checkpoint's content (was: its path, size and mtime)")
        return table

    def _score(self, phase, dataset, score, *, distributed):
        source = self._phase(phase)
        if not os.path.isfile(source.final_checkpoint):
            raise FileNotFoundError(
                f"phase '{self.phase_name}' scores annotations with phase '{phase}''s final model "
                f"{source.final_checkpoint}, which does not exist: train phase '{phase}' first"
            )
        logger.info(f"phase '{self.phase_name}': scoring {dataset} with the final model of phase '{phase}'")
        model = build_model(source.cfg)
        AtomicCheckpointer(model).load(source.final_checkpoint)
        augmentations, image_format = evaluation_input(source.cfg)
        try:
            return score_annotations(
                model,
                dataset,
                mapper_augmentations=augmentations,
                score=score,
                image_format=image_format,
                batch_size=self.scoring_batch_size,
                distributed=distributed,
            )
        finally:
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _dataset_json_identity(dataset):
    """Identity of a registered dataset's json (None when it has none). A dataset whose files are made on first
    use (LT-Shapes) is loaded first, so that the identity is that of the file scoring reads."""
    json_file = MetadataCatalog.get(dataset).get("json_file", None)
    if json_file is not None and not os.path.isfile(json_file) and dataset in DatasetCatalog:
        DatasetCatalog.get(dataset)
    return file_identity(json_file)


# --- the runner's step ---------------------------------------------------------------------------------------


def check_builder_inputs(phase, phases, builders):
    """Every name in a builder's ``input_phases()`` is a phase before ``phase`` whose final checkpoint exists
    (:func:`~ltdet2.engine.phase_graph.derived_input_phases`)."""
    for builder, source in derived_input_phases(phases, phase, builders):
        require_final_checkpoint(
            source,
            f"phase '{phase.name}': derived dataset '{builder.name}' needs phase '{source.name}''s final checkpoint",
        )


def make_context(phase, phases):
    earlier = earlier_phases(phases, phase)
    return DerivedDatasetContext(
        phase_name=phase.name, output_dir=phase.output_dir, seed=phase.cfg.train.get("seed", 0), phases=earlier
    )


def prepare_derived_datasets(phase, phases, builders):
    """Before ``phase`` trains (a collective: every rank calls it): checks the builders' input phases, computes
    the score tables they request on every rank, prepares them on the main process, registers them on every
    process. Returns the context."""
    if not builders:
        return None
    context = make_context(phase, phases)
    on_main_process(lambda: check_builder_inputs(phase, phases, builders))
    _prepare(phase, builders, context)
    for builder in builders:
        _register_on_every_rank(builder, context)
    return context


def _prepare(phase, builders, context):
    """Computes the builders' score requests on every rank (several processes), then prepares the builders on the
    main process (a collective)."""
    if comm.get_world_size() > 1:
        context.collective = True
        try:
            for builder in builders:
                for request in getattr(builder, "score_requests", lambda: [])():
                    context.annotation_scores(
                        request["phase"], dataset=request["dataset"], score=request.get("score", "max_foreground")
                    )
        finally:
            context.collective = False

    def prepare():
        os.makedirs(phase.output_dir, exist_ok=True)
        for builder in builders:
            logger.info(f"phase '{phase.name}': preparing derived dataset '{builder.name}'")
            builder.prepare(context)

    on_main_process(prepare)  # a barrier: an error on the main process is raised on every rank


def _register_on_every_rank(builder, context, *, main_done=False):
    """``builder.register`` on every process (the main one too unless ``main_done``); an error on one is raised on
    every rank."""
    error = None
    if not (main_done and comm.is_main_process()):
        try:
            builder.register(context)
        except Exception as e:
            error = e
    raise_if_any_rank_failed(error)


def register_derived_datasets(phase, phases, builders, context=None):
    """Registers the builders' datasets on every process (a collective), for a phase that is skipped (finished) or
    only evaluated: nothing is built when nothing is wrong, and registration reads no more than the end of each
    derived json (its build record, :func:`ltdet2.data.derived.read_build_record`: a cheap check that the file is
    whole).

    A json that is missing or damaged (:class:`~ltdet2.data.derived.DerivedDatasetUnavailable`) is rebuilt from its
    inputs, with a warning naming it: the builder's source datasets and input phases' final checkpoints (its score
    tables are reused when cached). When its inputs are not all there, a phase with a final checkpoint raises a
    FileNotFoundError naming the file and the missing input; a phase not trained yet is left without the dataset,
    with a warning (it is built before the phase trains)."""
    if not builders:
        return
    context = context or make_context(phase, phases)
    for builder in builders:
        problem = on_main_process(lambda b=builder: _register_or_problem(b, context))
        if problem is not None and not _rebuild(phase, phases, builder, context, *problem):
            continue
        _register_on_every_rank(builder, context, main_done=problem is None)


def _register_or_problem(builder, context):
    """Registers ``builder``'s datasets; (what is wrong, the file) when a json is missing or damaged, else None."""
    try:
        builder.register(context)
    except DerivedDatasetUnavailable as e:
        return e.reason, e.path
    return None


def _rebuild(phase, phases, builder, context, reason, path):
    """Builds again ``builder``'s datasets, of which the json ``path`` is missing or damaged (``reason``); True when
    rebuilt, False when left unbuilt (a phase not trained yet, its inputs missing: warned). Raises for a trained
    phase whose set cannot be rebuilt, naming the file and what is missing."""
    where = phase.where
    trained = on_main_process(phase.has_final)
    state = "has finished" if on_main_process(phase.is_done) else "has a final checkpoint"
    try:
        on_main_process(lambda: check_builder_inputs(phase, phases, [builder]))
    except FileNotFoundError as e:
        if not trained:
            logger.warning(
                f"{where} (not trained yet): derived dataset '{builder.name}' is not registered: {reason}, and it "
                f"cannot be built yet: {e}"
            )
            return False
        raise FileNotFoundError(
            f"{where} {state}, but its derived dataset '{builder.name}' cannot be registered: {reason}. It cannot be "
            f"rebuilt: {e}. Make that input available again (the set is then rebuilt from it), or restore {path}"
        ) from e
    logger.warning(
        f"{where}: derived dataset '{builder.name}': {reason}: rebuilding it from its inputs (those there now: if "
        f"they changed since the phase trained, the set differs from the one it trained on)"
    )
    try:
        _prepare(phase, [builder], context)
    except Exception as e:
        if not trained:
            logger.warning(f"{where} (not trained yet): derived dataset '{builder.name}' is not registered: {e}")
            return False
        raise RuntimeError(
            f"{where} {state}, but its derived dataset '{builder.name}' cannot be registered: {reason}, and "
            f"rebuilding it failed ({type(e).__name__}: {e}). Make its inputs available again, or restore {path}"
        ) from e
    return True
