"""Checkpoints that survive a kill and resume every rank exactly: atomic saves, ``max_to_keep`` across a
resume, a resume that falls back to the newest intact checkpoint when the last one is damaged, and
each rank's own state (RNG, ``local`` memories, BatchNorm statistics) saved and restored as its own.

Detectron2's :class:`DetectionCheckpointer` writes ``model_XXXXXXX.pth`` and ``last_checkpoint`` in
place (a kill during a save leaves a truncated file that ``--resume`` then fails to read), its
``PeriodicCheckpointer`` only counts the checkpoints of the current run towards ``max_to_keep``, and it
saves rank 0's model only: every rank resumes from rank 0's buffers and nobody's RNG.

A ``--resume`` in a folder that holds checkpoints but no ``last_checkpoint`` (deleted, or a copy of the folder without
it) resumes from the newest of them (``model_final``, else the highest iteration in a ``model_XXXXXXX.pth`` name),
logged; if that one cannot be read, it is an error naming it (Detectron2 would start from iteration 0 and overwrite
them).

Layout of a checkpoint ``NAME`` saved by W processes (:meth:`AtomicCheckpointer.save_on_all_ranks`):
``NAME.pth`` (rank 0's model, optimizer, scheduler, iteration, and ``rank_state``: W and rank 0's RNG)
and, for each rank r >= 1, ``rank_state/NAME.rank<r>.pth`` (its RNG and its buffers except those of
``global`` memories, which are the same on every rank). The rank files are written before ``NAME.pth``,
so a checkpoint that exists is complete. Resuming with another number of processes is refused when the
model holds ``local`` memories (one state per process cannot be split or merged); otherwise it warns
that the ranks' RNG and BatchNorm statistics restart from rank 0's. The folder must be shared by all
ranks (as for Detectron2's own resume); the choice of the checkpoint is made on rank 0.

A checkpoint that does not fit the model is refused (:class:`CheckpointMismatchError`, naming the entries) where
Detectron2 logs "Skip loading parameter" and goes on: entries of another shape, whatever is loaded, and, when the
checkpointer is told which (``required_parameters``: an evaluation's), parameters the checkpoint lacks. An initial
checkpoint may lack entries (an ImageNet backbone has no heads).
"""

import glob
import logging
import os
import random
import re

import numpy as np
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import hooks
from detectron2.utils import comm

from ..memory.distributed import local_memory_names, per_rank_state_names
from .ranks import on_main_process, raise_if_any_rank_failed

logger = logging.getLogger("detectron2")

LAST_CHECKPOINT = "last_checkpoint"
RANK_STATE_DIR = "rank_state"
_PERIODIC_NAME = re.compile(r"^model_(\d+)\.pth$")
_FINAL_NAME = "model_final.pth"


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model: entries of another shape, or parameters the loader requires that it
    lacks."""


class DamagedCheckpointError(RuntimeError):
    """A checkpoint file that exists but cannot be read (truncated, not a checkpoint)."""

    def __init__(self, path, cause):
        super().__init__(f"checkpoint {path} cannot be read ({type(cause).__name__}: {cause})")
        self.path = path


def _replace_atomically(temporary, path):
    with open(temporary, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(temporary, path)


def checkpoints_in(folder):
    """The checkpoints Detectron2's periodic checkpointer writes in ``folder``, newest first:
    ``model_final.pth``, then ``model_XXXXXXX.pth`` by decreasing iteration."""
    if not os.path.isdir(folder):
        return []
    periodic = sorted(
        ((int(m.group(1)), name) for name in os.listdir(folder) if (m := _PERIODIC_NAME.match(name))), reverse=True
    )
    names = ([_FINAL_NAME] if os.path.isfile(os.path.join(folder, _FINAL_NAME)) else []) + [n for _, n in periodic]
    return [os.path.join(folder, name) for name in names]


def rank_state_file(checkpoint, rank):
    """Where rank ``rank`` (>= 1) keeps its own state of ``checkpoint`` (``.../NAME.pth``)."""
    folder, name = os.path.split(checkpoint)
    return os.path.join(folder, RANK_STATE_DIR, f"{os.path.splitext(name)[0]}.rank{rank}.pth")


def remove_checkpoint(checkpoint):
    """Removes ``checkpoint`` and the rank files that belong to it."""
    folder, name = os.path.split(checkpoint)
    pattern = os.path.join(glob.escape(os.path.join(folder, RANK_STATE_DIR)), glob.escape(name[: -len(".pth")]))
    for path in [checkpoint, *glob.glob(pattern + ".rank*.pth")]:
        if os.path.exists(path):
            os.remove(path)


def run_checkpoints(folder):
    """What an earlier run of a phase left in ``folder`` to resume from: its checkpoints (:func:`checkpoints_in`) and
    ``last_checkpoint``."""
    last = os.path.join(folder, LAST_CHECKPOINT)
    return checkpoints_in(folder) + ([last] if os.path.isfile(last) else [])


def remove_run_checkpoints(folder):
    """Removes :func:`run_checkpoints` (with their rank files); returns what it removed."""
    found = run_checkpoints(folder)
    for path in found:
        if path.endswith(".pth"):
            remove_checkpoint(path)
        else:
            os.remove(path)
    return found


# files of a write that a kill interrupted: AtomicCheckpointer's ".tmp-NAME" and ltdet2.utils.json_io's (and the score
# tables') "NAME.tmp.<pid>[.ext]"
_INTERRUPTED_WRITE = re.compile(r"^\.tmp-|\.tmp\.\d+(\.\w+)?$")
_WRITTEN_SUBFOLDERS = (RANK_STATE_DIR, "inference")  # where a phase's rank files and evaluation results go


def interrupted_writes(folder):
    """The temporary files of interrupted writes in a phase's ``folder`` and its ``rank_state`` and ``inference``
    folders (not deeper, nothing else)."""
    found = []
    for sub in ("", *_WRITTEN_SUBFOLDERS):
        path = os.path.join(folder, sub)
        if os.path.isdir(path):
            found += [os.path.join(path, n) for n in sorted(os.listdir(path)) if _INTERRUPTED_WRITE.search(n)]
    return [path for path in found if os.path.isfile(path) and not os.path.islink(path)]


def remove_interrupted_writes(folder, where=None):
    """Removes :func:`interrupted_writes` of ``folder`` (logged, naming ``where``); returns them. Call it when nothing
    writes there: before the phase starts, under the run's lock."""
    found = interrupted_writes(folder)
    for path in found:
        os.remove(path)
    if found:
        logger.info(
            f"{where or folder}: removed {len(found)} temporary files left by interrupted writes: "
            f"{[os.path.relpath(p, folder) for p in found]}"
        )
    return found


def checkpoint_model_state(path):
    """The model entries of a local checkpoint file (memory-mapped: cheap to read for their shapes), or None where
    that cannot be told here: a URL, no such file, or a file ``torch.load`` cannot map (e.g. Detectron2's .pkl)."""
    if not isinstance(path, str) or not path or "://" in path or not os.path.isfile(path):
        return None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:
        return None
    state = loaded.get("model", loaded) if isinstance(loaded, dict) else None
    return state if isinstance(state, dict) else None


def capture_rng_state():
    """This process's RNG states: torch (CPU, and the current GPU once CUDA is in use), numpy, random;
    as tensors and plain numbers (what ``torch.load(weights_only=True)`` reads)."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
        "random": random.getstate(),
    }


def restore_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    random.setstate(state["random"])


class AtomicCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` whose files appear whole or not at all (written to a hidden
    temporary file in the same folder, then renamed), whose ``--resume`` skips damaged files, and
    whose :meth:`save_on_all_ranks` / :meth:`resume_or_load` keep each rank's own state (module docstring).

    After :meth:`resume_or_load`, ``resumed_from`` is the checkpoint training resumes from (None: none),
    the same on every rank.

    ``reinitialize`` (regexes matched at the start of parameter names, ``train.init_reinitialize``): entries of the
    initial checkpoint that are dropped before it is loaded, so that those parameters keep the model's fresh
    initialisation (e.g. the class-specific heads of a COCO model that starts an LVIS phase); logged, and a
    pattern that drops nothing is refused. A resume loads everything.

    ``initial_transforms``: callables ``transform(state_dict, model_state, where=...)`` that return the model state
    to load instead of ``state_dict``, applied in order, after ``reinitialize``, to the initial checkpoint that
    :meth:`resume_or_load` loads when it does not resume (``model_state``: the model's state dict; ``where``: names the
    checkpoint and the phase, for errors); e.g. LST's network expansion
    (:class:`~ltdet2.modeling.expansion.ClassExpansion`, in the phase's ``train.hooks``), which grows the class rows
    instead of Detectron2's "shape mismatch, skipped" for the classifier. A resume loads the phase's own (already
    transformed) checkpoint as it is.

    Every load refuses a checkpoint with entries of another shape than the model's (after the two steps above), and,
    with ``required_parameters`` (names of the model's parameters; an evaluation's), one that lacks any of them:
    :class:`CheckpointMismatchError`."""

    _temporary_prefix = ".tmp-"
    resumed_from = None
    _loading_initial = None  # the initial checkpoint being loaded by resume_or_load (transformed), else None
    _loading = None  # the checkpoint being loaded, for the errors

    def __init__(
        self, model, save_dir="", *, initial_transforms=(), reinitialize=(), required_parameters=None, **kwargs
    ):
        super().__init__(model, save_dir, **kwargs)
        self.initial_transforms = list(initial_transforms or ())
        self.reinitialize = [re.compile(pattern) for pattern in reinitialize or ()]
        self.required_parameters = None if required_parameters is None else list(required_parameters)

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        temporary_name = f"{self._temporary_prefix}{name}"
        temporary = os.path.join(self.save_dir, temporary_name + ".pth")
        self._tagging = False  # Detectron2's save tags the temporary file: done below, after the rename
        try:
            super().save(temporary_name, **kwargs)
            path = os.path.join(self.save_dir, f"{name}.pth")
            _replace_atomically(temporary, path)
        finally:
            self._tagging = True
            if os.path.exists(temporary):
                os.remove(temporary)
        self.logger.info(f"Saved checkpoint {path}")
        self.tag_last_checkpoint(os.path.basename(path))

    def save_final(self, max_iter, **kwargs):
        """Saves ``model_final`` as the periodic checkpointer does, at the last iteration ``max_iter - 1``, with
        every rank's state (a collective), after training has ended: the trainer stands past it, so its state is
        saved with that iteration and a resume starts after it. ``kwargs``: further data, e.g. ``model=`` a
        state to save instead of the model's."""
        final_iter = max_iter - 1
        trainer = self.checkpointables.get("trainer")
        state = {"trainer": {**trainer.state_dict(), "iteration": final_iter}} if trainer is not None else {}
        self.save_on_all_ranks(os.path.splitext(_FINAL_NAME)[0], iteration=final_iter, **state, **kwargs)

    def save_on_all_ranks(self, name, **kwargs):
        """Saves checkpoint ``name`` with every rank's own state; a collective: every rank calls it.
        Ranks >= 1 write their rank files first; then rank 0 writes ``name.pth``."""
        world_size, rank = comm.get_world_size(), comm.get_rank()
        own = {"world_size": world_size, "rank": rank, "rng": capture_rng_state()}
        if world_size > 1:
            error = None
            if rank > 0:
                try:
                    self._write_rank_state(name, own)
                except Exception as e:
                    error = e
            raise_if_any_rank_failed(error)
        self.save(name, rank_state=own, **kwargs)

    def _write_rank_state(self, name, own):
        path = rank_state_file(os.path.join(self.save_dir, f"{name}.pth"), own["rank"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        state_dict = self.model.state_dict()
        own = {**own, "buffers": {key: state_dict[key] for key in per_rank_state_names(self.model)}}
        temporary = os.path.join(os.path.dirname(path), self._temporary_prefix + os.path.basename(path))
        try:
            torch.save(own, temporary)
            _replace_atomically(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)

    def tag_last_checkpoint(self, last_filename_basename):
        if not getattr(self, "_tagging", True):
            return
        path = os.path.join(self.save_dir, LAST_CHECKPOINT)
        temporary = os.path.join(self.save_dir, self._temporary_prefix + LAST_CHECKPOINT)
        with open(temporary, "w") as f:
            f.write(last_filename_basename)
        _replace_atomically(temporary, path)

    def _load_file(self, filename):
        try:
            return super()._load_file(filename)
        except Exception as e:  # whatever torch.load / pickle raise for a damaged file
            raise DamagedCheckpointError(filename, e) from e

    def load(self, path, *args, **kwargs):
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = None

    def _load_model(self, checkpoint):
        where = f"train.init_checkpoint {self._loading_initial} of the phase in {self.save_dir or '.'}"
        if self._loading_initial is not None and self.reinitialize:
            checkpoint["model"] = self._drop_reinitialized(checkpoint["model"], where)
        for transform in self.initial_transforms if self._loading_initial is not None else ():
            checkpoint["model"] = transform(checkpoint["model"], self.model.state_dict(), where=where)
        incompatible = super()._load_model(checkpoint)
        self._check_fit(incompatible)
        return incompatible

    def _check_fit(self, incompatible):
        """:class:`CheckpointMismatchError` for entries of another shape (which Detectron2 skips with a warning) or
        missing ``required_parameters``."""
        initial = self._loading_initial is not None
        what = f"train.init_checkpoint {self._loading}" if initial else f"checkpoint {self._loading}"
        shapes = incompatible.incorrect_shapes
        if shapes:
            listed = "; ".join(
                f"{key}: {tuple(saved)} in the checkpoint, {tuple(own)} in the model" for key, saved, own in shapes[:8]
            )
            hint = (
                "Entries the phase re-initialises are listed in train.init_reinitialize (regexes); a transform of the "
                "initial checkpoint in train.hooks adapts it (e.g. ltdet2.modeling.expansion.ClassExpansion, LST's "
                "new classes)"
                if initial
                else "It was saved for another model (another class count: model.roi_heads.num_classes?)"
            )
            raise CheckpointMismatchError(
                f"{what} does not fit the model: {len(shapes)} entries have another shape ({listed}"
                f"{' ...' if len(shapes) > 8 else ''}). {hint}"
            )
        if self.required_parameters is None:
            return
        missing = set(incompatible.missing_keys)
        lacking = [name for name in self.required_parameters if name in missing]
        if lacking:
            raise CheckpointMismatchError(
                f"{what} lacks {len(lacking)} parameters of the model ({', '.join(lacking[:8])}"
                f"{' ...' if len(lacking) > 8 else ''}): it was saved for another model (e.g. a Faster R-CNN "
                f"checkpoint for a Mask R-CNN config)"
            )

    def _drop_reinitialized(self, state, where):
        dropped = {p.pattern: [k for k in state if p.match(k)] for p in self.reinitialize}
        empty = [pattern for pattern, keys in dropped.items() if not keys]
        if empty:
            raise ValueError(
                f"train.init_reinitialize: patterns {empty} match no entry of {where}; they would re-initialise "
                f"nothing (its entries start with {sorted({k.split('.')[0] for k in state})})"
            )
        names = sorted({k for keys in dropped.values() for k in keys})
        logger.info(f"Not loaded from {where} (train.init_reinitialize, freshly initialised): {names}")
        return {k: v for k, v in state.items() if k not in set(names)}

    def resume_or_load(self, path, *, resume=True):
        """Resumes from the newest intact checkpoint of ``save_dir`` when ``resume`` and there is one
        (chosen on rank 0; every rank then loads it and its own rank state), else loads the weights of
        ``path``. Returns the checkpoint's further data; its ``rank_state`` is this rank's own (``rng``),
        or None when the checkpoint holds none for this rank."""
        loaded = {}

        def choose():
            if not resume:
                return None
            if self.has_checkpoint():
                chosen, loaded["rank 0"] = self._load_newest_intact()
            elif checkpoints_in(self.save_dir):  # no last_checkpoint (deleted, or a copy of the folder without it)
                chosen, loaded["rank 0"] = self._load_newest_untagged()
            else:
                return None
            return chosen

        self.resumed_from = on_main_process(choose)
        if self.resumed_from is None:
            self._loading_initial = path
            try:
                return super().resume_or_load(path, resume=False)
            finally:
                self._loading_initial = None
        error, extra = None, loaded.get("rank 0")
        try:
            if extra is None:  # ranks >= 1 load what rank 0 chose
                extra = self.load(self.resumed_from)
            extra["rank_state"] = self._own_rank_state(self.resumed_from, extra.get("rank_state"))
        except Exception as e:
            error = e
        raise_if_any_rank_failed(error)
        return extra

    def _load_newest_intact(self):
        """(path, further data) of the newest checkpoint of ``save_dir`` that loads, the one
        ``last_checkpoint`` names first."""
        tagged = self._tagged_checkpoint()
        candidates = ([tagged] if tagged else []) + [c for c in checkpoints_in(self.save_dir) if c != tagged]
        damaged = []
        for candidate in candidates:
            try:
                loaded = self.load(candidate)
            except DamagedCheckpointError as e:
                self._parsed_url_during_load = None  # Detectron2's load leaves it set when reading fails
                logger.warning(f"{e}: trying an earlier checkpoint")
                damaged.append(candidate)
                continue
            if candidate != tagged:
                what = (
                    f"{LAST_CHECKPOINT} names {tagged}, which"
                    if tagged
                    else (f"{os.path.join(self.save_dir, LAST_CHECKPOINT)} names no checkpoint in the folder and")
                )
                logger.warning(
                    f"{what} cannot be read: resumed from {candidate}, the newest intact checkpoint"
                    + (f" (damaged: {damaged})" if damaged else "")
                )
            return candidate, loaded
        last = os.path.join(self.save_dir, LAST_CHECKPOINT)
        if damaged:
            raise RuntimeError(
                f"cannot resume in {self.save_dir}: no checkpoint there can be read (damaged: "
                f"{damaged}). Remove them and {last} to train this phase from its beginning"
            )
        raise RuntimeError(
            f"cannot resume in {self.save_dir}: {last} names no checkpoint in the folder and there "
            f"is none. Remove {last} to train this phase from its beginning"
        )

    def _load_newest_untagged(self):
        """(path, further data) of the newest checkpoint of ``save_dir`` (:func:`checkpoints_in`: ``model_final``,
        else the highest iteration), for a folder that holds checkpoints but no ``last_checkpoint``: logged. Without
        ``last_checkpoint`` to say which save completed last, a newest file that cannot be read is an error naming it
        (rather than a silent resume from an older one, or a start from iteration 0 over them)."""
        found = checkpoints_in(self.save_dir)
        newest, last = found[0], os.path.join(self.save_dir, LAST_CHECKPOINT)
        names = [os.path.basename(path) for path in found]
        listed = ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")
        try:
            loaded = self.load(newest)
        except DamagedCheckpointError as e:
            self._parsed_url_during_load = None  # Detectron2's load leaves it set when reading fails
            earlier = (
                f"to resume from the one before it ({os.path.basename(found[1])})"
                if len(found) > 1
                else "to train this phase from its beginning"
            )
            raise RuntimeError(
                f"cannot resume in {self.save_dir}: there is no {last}, and the newest of its checkpoints ({listed}), "
                f"{newest}, cannot be read ({type(e.__cause__).__name__}: {e.__cause__}). Remove it {earlier}, or "
                f"write the name of the checkpoint to resume from into {last}"
            ) from e
        logger.warning(
            f"{self.save_dir} holds checkpoints ({listed}) but no {LAST_CHECKPOINT}: resuming from the newest, {newest}"
        )
        return newest, loaded

    def _own_rank_state(self, checkpoint, saved):
        """Restores this rank's buffers from its rank file (ranks >= 1) and returns its saved state."""
        world_size, rank = comm.get_world_size(), comm.get_rank()
        local = local_memory_names(self.model)
        if saved is None:  # saved by Detectron2's save (or before ltdet2 saved rank states)
            if world_size > 1 and local:
                logger.warning(
                    f"{checkpoint} holds no per-rank state: every rank resumes the local memories {local} from rank 0's"
                )
            return None
        if saved["world_size"] != world_size:
            if local:
                raise ValueError(
                    f"cannot resume {checkpoint} with {world_size} processes: it was saved by "
                    f"{saved['world_size']}, and the local memories {local} hold one state per process, which "
                    f"cannot be split or merged. Resume with {saved['world_size']} processes (the same "
                    f"--num-gpus, or --nodes x --gpus-per-node on Slurm)"
                )
            logger.warning(
                f"{checkpoint} was saved by {saved['world_size']} processes and resumes in {world_size}: "
                f"the RNG and BatchNorm statistics of the ranks restart from rank 0's (not an exact resume)"
            )
            return saved if rank == 0 else None
        if rank == 0:
            return saved
        path = rank_state_file(checkpoint, rank)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"rank {rank} cannot find its state of {checkpoint} ({path}): the output folder must be "
                f"shared by all ranks, and the rank files kept with their checkpoint"
            )
        try:
            own = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise DamagedCheckpointError(path, e) from e
        if own.get("rank") != rank or own.get("world_size") != world_size:
            raise ValueError(f"{path} holds rank {own.get('rank')} of {own.get('world_size')}, not rank {rank}")
        incompatible = self.model.load_state_dict(own["buffers"], strict=False)
        if incompatible.unexpected_keys:
            raise KeyError(f"{path} holds buffers the model does not have: {incompatible.unexpected_keys[:5]}")
        logger.info(f"Rank {rank}: restored its own state ({len(own['buffers'])} buffers, RNG) from {path}")
        return own

    def _tagged_checkpoint(self):
        """The checkpoint ``last_checkpoint`` names, or None when it is empty or names no file."""
        try:
            with open(os.path.join(self.save_dir, LAST_CHECKPOINT), errors="replace") as f:
                name = f.read().strip()
        except OSError:
            return None
        path = os.path.join(self.save_dir, name)
        if not name or not os.path.isfile(path):
            logger.warning(
                f"{os.path.join(self.save_dir, LAST_CHECKPOINT)} holds {name[:80]!r}, not the name of a "
                f"checkpoint in the folder"
            )
            return None
        return path


class PeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """Detectron2's hook, but registered on every rank (each save is collective:
    :meth:`AtomicCheckpointer.save_on_all_ranks`; rank 0 alone removes files), and ``max_to_keep`` also
    counts the checkpoints an interrupted run left (those of iterations before the one training starts
    at): a resume keeps the newest ``max_to_keep``. ``keep`` (``train.checkpointer.keep``): iterations whose
    periodic checkpoints are never removed nor counted in ``max_to_keep`` (e.g. the last before a learning-rate step,
    from which a longer schedule with the same start can continue); each must be one the period saves at."""

    def __init__(self, checkpointer, period, *args, keep=(), **kwargs):
        super().__init__(checkpointer, period, *args, **kwargs)
        self.keep = {int(iteration) for iteration in keep}
        off_period = sorted(i for i in self.keep if (i + 1) % period)
        if off_period:
            raise ValueError(
                f"train.checkpointer.keep={sorted(self.keep)}: no checkpoint is saved after iterations {off_period} "
                f"(train.checkpointer.period={period} saves after iterations k * {period} - 1)"
            )

    def before_train(self):
        super().before_train()
        if self.max_to_keep is None or not comm.is_main_process():
            return
        start_iter = self.trainer.start_iter
        earlier = [
            path
            for path in checkpoints_in(self.checkpointer.save_dir)
            if (m := _PERIODIC_NAME.match(os.path.basename(path)))
            and int(m.group(1)) < start_iter
            and int(m.group(1)) not in self.keep
        ]
        earlier = earlier[::-1]  # oldest first, as the hook keeps them
        for path in earlier[: -self.max_to_keep] if self.max_to_keep > 0 else earlier:
            logger.info(f"train.checkpointer.max_to_keep={self.max_to_keep}: removing {path}")
            remove_checkpoint(path)
        self.recent_checkpoints = earlier[-self.max_to_keep :] if self.max_to_keep > 0 else []

    def step(self, iteration, **kwargs):
        iteration = int(iteration)
        state = {"iteration": iteration, **kwargs}
        if (iteration + 1) % self.period == 0:
            name = f"{self.file_prefix}_{iteration:07d}"
            self.checkpointer.save_on_all_ranks(name, **state)
            if self.max_to_keep is not None and comm.is_main_process() and iteration not in self.keep:
                self.recent_checkpoints.append(os.path.join(self.checkpointer.save_dir, f"{name}.pth"))
                if len(self.recent_checkpoints) > self.max_to_keep:
                    remove_checkpoint(self.recent_checkpoints.pop(0))
        if self.max_iter is not None and iteration >= self.max_iter - 1:
            self.checkpointer.save_on_all_ranks(f"{self.file_prefix}_final", **state)
