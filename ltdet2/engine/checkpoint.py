"""Checkpoints that survive a kill: atomic saves, ``max_to_keep`` across a resume, and a resume that
falls back to the newest intact checkpoint when the last one is damaged.

Detectron2's :class:`DetectionCheckpointer` writes ``model_XXXXXXX.pth`` and ``last_checkpoint`` in
place (a kill during a save leaves a truncated file that ``--resume`` then fails to read), and its
``PeriodicCheckpointer`` only counts the checkpoints of the current run towards ``max_to_keep``.
"""

import logging
import os
import re

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import hooks

logger = logging.getLogger("detectron2")

LAST_CHECKPOINT = "last_checkpoint"
_PERIODIC_NAME = re.compile(r"^model_(\d+)\.pth$")
_FINAL_NAME = "model_final.pth"


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


class AtomicCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` whose files appear whole or not at all (written to a hidden
    temporary file in the same folder, then renamed), and whose ``--resume`` skips damaged files."""

    _temporary_prefix = ".tmp-"

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

    def resume_or_load(self, path, *, resume=True):
        if not (resume and self.has_checkpoint()):
            return super().resume_or_load(path, resume=resume)
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
            return loaded
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
    """Detectron2's hook, but ``max_to_keep`` also counts the checkpoints an interrupted run left
    (those of iterations before the one training starts at): a resume keeps the newest ``max_to_keep``."""

    def before_train(self):
        super().before_train()
        if self.max_to_keep is None:
            return
        start_iter = self.trainer.start_iter
        earlier = [
            path
            for path in checkpoints_in(self.checkpointer.save_dir)
            if (m := _PERIODIC_NAME.match(os.path.basename(path))) and int(m.group(1)) < start_iter
        ]
        earlier = earlier[::-1]  # oldest first, as the hook keeps them
        for path in earlier[: -self.max_to_keep] if self.max_to_keep > 0 else earlier:
            logger.info(f"train.checkpointer.max_to_keep={self.max_to_keep}: removing {path}")
            os.remove(path)
        self.recent_checkpoints = earlier[-self.max_to_keep :] if self.max_to_keep > 0 else []
