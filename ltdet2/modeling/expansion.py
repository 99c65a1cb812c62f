"""Network expansion between class-incremental phases (LST, Sec. 3.2): weight surgery that grows the class rows
of a checkpoint's box predictor (and of a class-specific mask predictor) from K_old to K_new classes.

Detectron2 keeps background as the classifier's last row (index K), so the new rows go between the old foreground
rows and the background row; the class-specific box regressor (``[4K, D]``) and mask predictor (``[K, ...]``) have
no background row and grow at the end. Old rows are copied bit-exactly, so before training the expanded model
scores the old classes exactly as the checkpoint did (for a cosine classifier: same cosines, same scale).
"""

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import OmegaConf

__all__ = [
    "CLASS_ROW_KEYS",
    "ClassRows",
    "ClassExpansion",
    "expand_class_rows",
    "checkpoint_num_classes",
    "class_rows_unlike",
    "describe_class_rows",
]


@dataclass(frozen=True)
class ClassRows:
    """How a parameter holds one row block per class.

    Attributes:
        rows_per_class: rows of the first dimension per class (4 for the box regressor).
        background: the tensor ends with one background row (the classifier's, Detectron2's index K).
        init: how new rows start: ``"classifier"`` / ``"regressor"`` / ``"mask"`` (normal, the expansion's std
            of that name), ``"zero"`` or ``"one"``.
    """

    rows_per_class: int
    background: bool
    init: str

    def rows(self, num_classes: int) -> int:
        return self.rows_per_class * num_classes + int(self.background)


# parameter-name suffixes (any prefix: "roi_heads.", "module.", ...) -> their class rows
CLASS_ROW_KEYS = {
    "box_predictor.cls_score.weight": ClassRows(1, True, "classifier"),  # linear [K+1, D] or CosineClassifier
    "box_predictor.cls_score.bias": ClassRows(1, True, "zero"),  # linear cls_score
    "box_predictor.cls_score.norm": ClassRows(1, True, "one"),  # CosineClassifier(learnable_norm=True)
    "box_predictor.bbox_pred.weight": ClassRows(4, False, "regressor"),  # [4K, D], or [4, D] class-agnostic
    "box_predictor.bbox_pred.bias": ClassRows(4, False, "zero"),
    "mask_head.predictor.weight": ClassRows(1, False, "mask"),  # [K, conv_dim, 1, 1], or [1, ...] class-agnostic
    "mask_head.predictor.bias": ClassRows(1, False, "zero"),
}
CLASSIFIER_KEY = "box_predictor.cls_score.weight"


def _class_rows(key: str) -> ClassRows | None:
    for suffix, spec in CLASS_ROW_KEYS.items():
        if key == suffix or key.endswith("." + suffix):
            return spec
    return None


def checkpoint_num_classes(state_dict: Mapping[str, object]) -> int | None:
    """K, the foreground classes of a state dict's box classifier (rows of ``...box_predictor.cls_score.weight``
    minus the background row); None when it has no such key (or several with different counts)."""
    counts = {int(value.shape[0]) - 1 for key, value in state_dict.items() if key.endswith(CLASSIFIER_KEY)}
    return counts.pop() if len(counts) == 1 else None


def class_rows_unlike(state_dict: Mapping[str, object], num_classes: int) -> list:
    """(key, shape, rows expected) of the class-row entries (:data:`CLASS_ROW_KEYS`) of ``state_dict`` that do not hold
    ``num_classes`` classes (a class-agnostic regressor or mask predictor is not one of them)."""
    unlike = []
    for key, value in state_dict.items():
        spec = _class_rows(key)
        if spec is None:
            continue
        rows = int(value.shape[0])
        if rows != spec.rows(num_classes) and (spec.background or rows != spec.rows(1)):
            unlike.append((key, tuple(value.shape), spec.rows(num_classes)))
    return unlike


def describe_class_rows(state_dict: Mapping[str, object], limit: int = 4) -> str:
    """``key (shape): K classes`` of (at most ``limit``) class-row entries of ``state_dict``, for error messages."""
    described = []
    for key, value in state_dict.items():
        spec = _class_rows(key)
        if spec is not None:
            found = (int(value.shape[0]) - int(spec.background)) / spec.rows_per_class
            described.append(f"{key} {tuple(value.shape)}: {found:g} classes")
    return "; ".join(described[:limit]) + (" ..." if len(described) > limit else "")


def expand_class_rows(
    state_dict: Mapping[str, object],
    *,
    old_num_classes: int,
    new_num_classes: int,
    generator: torch.Generator | None = None,
    target_shapes: Mapping[str, tuple] | None = None,
    classifier_std: float = 0.01,
    regressor_std: float = 0.001,
    mask_std: float = 0.001,
    where: str = "expand_class_rows",
) -> dict:
    """A copy of ``state_dict`` whose class rows (:data:`CLASS_ROW_KEYS`) grow from ``old_num_classes`` (K_old) to
    ``new_num_classes`` (K_new); every other entry is the same object.

    - classifier ``cls_score.weight`` ``[K_old+1, D] -> [K_new+1, D]``: rows ``[:K_old]`` copied, new rows
      ``[K_old:K_new]`` ~ N(0, ``classifier_std``) (official: 0.01), the background row copied to the last row;
      a linear classifier's bias: new entries 0; a :class:`~ltdet2.modeling.CosineClassifier`'s per-class
      ``norm``: new entries 1 (its init); its ``scale`` is not a class row and is copied as it is;
    - class-specific ``bbox_pred`` ``[4K_old, D] -> [4K_new, D]``: new rows ~ N(0, ``regressor_std``) (official:
      0.001), bias 0; a class-agnostic one (``[4, D]``) stays;
    - class-specific mask predictor ``[K_old, ...] -> [K_new, ...]``: new rows ~ N(0, ``mask_std``) (Detectron2's
      init), bias 0; a class-agnostic one stays. The official code has no class-specific mask layer to expand.

    New rows are drawn with ``generator`` in the order of the state dict's keys (seeded: reproducible).

    Args:
        target_shapes: the expanded model's parameter shapes by key (optional): a class-row key whose checkpoint
            shape already equals the target's is kept, one whose target shape has the class-agnostic size is
            kept (needed to tell a class-agnostic regressor from a class-specific one of K_old = 1), and every
            expanded shape is checked against it.
        where: names the caller in errors (e.g. the phase and its checkpoint).

    Raises:
        ValueError: when a class-row tensor has a row count matching neither K_old nor (a class-agnostic size);
            the message names the key, its rows and both class counts.
    """
    old_num_classes, new_num_classes = int(old_num_classes), int(new_num_classes)
    if not 0 < old_num_classes <= new_num_classes:
        raise ValueError(
            f"{where}: cannot expand from {old_num_classes} to {new_num_classes} classes (need 0 < old <= new)"
        )
    stds = {"classifier": classifier_std, "regressor": regressor_std, "mask": mask_std}
    expanded = dict(state_dict)
    for key, value in state_dict.items():
        spec = _class_rows(key)
        if spec is None:
            continue
        value = torch.as_tensor(value) if isinstance(value, np.ndarray) else value
        rows, target = int(value.shape[0]), None
        if target_shapes is not None:
            target = target_shapes.get(key, target_shapes.get(key.removeprefix("module.")))
            if target is not None and tuple(target) == tuple(value.shape):
                continue  # already the model's (a class-agnostic layer, or nothing to expand)
        agnostic_rows = spec.rows(1)
        if not spec.background and rows == agnostic_rows and old_num_classes != 1:
            continue  # class-agnostic
        if rows != spec.rows(old_num_classes):
            found = (rows - int(spec.background)) / spec.rows_per_class
            raise ValueError(
                f"{where}: {key} has {rows} rows ({found:g} classes), but the expansion goes from {old_num_classes} "
                f"to {new_num_classes} classes: the checkpoint must hold the previous phase's {old_num_classes} "
                f"classes (or already the phase's {new_num_classes})"
            )
        num_new = spec.rows_per_class * (new_num_classes - old_num_classes)
        new_rows = torch.empty((num_new, *value.shape[1:]), dtype=value.dtype)
        if spec.init in stds:
            new_rows.normal_(0.0, stds[spec.init], generator=generator)
        else:
            new_rows.fill_(1.0 if spec.init == "one" else 0.0)
        new_rows = new_rows.to(value.device)
        old_rows = spec.rows_per_class * old_num_classes
        result = torch.cat([value[:old_rows], new_rows, value[old_rows:]])  # background (if any) stays last
        if target is not None and tuple(target) != tuple(result.shape):
            raise ValueError(
                f"{where}: {key} expanded from {old_num_classes} to {new_num_classes} classes has shape "
                f"{tuple(result.shape)}, but the model's is {tuple(target)}"
            )
        expanded[key] = result
    return expanded


class ClassExpansion:
    """The network expansion of a phase's initial checkpoint: an entry of the phase's ``train.hooks``, e.g.
    ``L(ClassExpansion)(old_num_classes=K_old, seed="${...seed}")`` (the phase's ``train.seed``, as ``configs/lst.py``
    writes it). It is an initial-checkpoint transform (:meth:`transform_initial_checkpoint`, the engine's contract:
    :mod:`ltdet2.engine.train_loop`), applied by :class:`~ltdet2.engine.checkpoint.AtomicCheckpointer` when it loads
    ``train.init_checkpoint`` (not when it resumes the phase's own checkpoint).

    The checkpoint must hold ``old_num_classes`` classes (the previous phase's; it is expanded to the model's
    count) or already the model's count (loaded as it is); any other count is a ValueError naming both.

    Args:
        old_num_classes: K_old, the previous phase's classes.
        seed: seeds the new rows (``torch.Generator().manual_seed(seed)``); None or < 0: unseeded.
        classifier_std, regressor_std, mask_std: see :func:`expand_class_rows`.
    """

    def __init__(
        self,
        *,
        old_num_classes: int,
        seed: int | None = 0,
        classifier_std: float = 0.01,
        regressor_std: float = 0.001,
        mask_std: float = 0.001,
    ):
        self.old_num_classes = int(old_num_classes)
        self.seed = seed
        self.stds = dict(classifier_std=classifier_std, regressor_std=regressor_std, mask_std=mask_std)

    def __call__(self, state_dict: Mapping[str, object], model_state: Mapping[str, torch.Tensor], where: str):
        """``state_dict`` expanded to the model whose state dict is ``model_state`` (or as it is when it already
        has the model's classes)."""
        new_num_classes = checkpoint_num_classes(model_state)
        if new_num_classes is None:
            raise ValueError(
                f"{where}: ClassExpansion (train.hooks) needs a model with a box classifier (box_predictor.cls_score)"
            )
        if self.check(state_dict, new_num_classes, where) == new_num_classes:
            return state_dict
        generator = torch.Generator()
        if self.seed is not None and self.seed >= 0:
            generator.manual_seed(int(self.seed))
        else:
            generator.seed()
        shapes = {key: tuple(value.shape) for key, value in model_state.items()}
        return expand_class_rows(
            state_dict,
            old_num_classes=self.old_num_classes,
            new_num_classes=new_num_classes,
            generator=generator,
            target_shapes=shapes,
            where=where,
            **self.stds,
        )

    def transform_initial_checkpoint(self, state_dict, model_state, where):
        """The engine's initial-checkpoint transform (:mod:`ltdet2.engine.train_loop`): :meth:`__call__`."""
        return self(state_dict, model_state, where=where)

    def check(self, state_dict: Mapping[str, object], new_num_classes: int, where: str) -> int:
        """The class count of ``state_dict``'s classifier, which must be ``old_num_classes`` or ``new_num_classes``;
        a ValueError naming its class rows and their shapes otherwise. The phase runner calls it before training."""
        found = checkpoint_num_classes(state_dict)
        if found not in (self.old_num_classes, new_num_classes):
            raise ValueError(
                f"{where}: the checkpoint's classifier has {found} classes; ClassExpansion (train.hooks) expects the "
                f"previous phase's {self.old_num_classes} classes (expanded to this phase's {new_num_classes}) "
                f"or {new_num_classes}. Its class rows: {describe_class_rows(state_dict) or 'none'}"
            )
        return found

    def check_initial_checkpoint(self, state_dict: Mapping[str, object], cfg, where: str) -> None:
        """The phase runner's check before training (an initial-checkpoint transform's optional method,
        :func:`ltdet2.engine.train_loop.initial_checkpoint_checks`): :meth:`check` against the phase's
        ``model.roi_heads.num_classes`` (nothing to check when that is not a plain integer)."""
        try:
            new_num_classes = OmegaConf.select(cfg, "model.roi_heads.num_classes", default=None)
        except Exception:  # an interpolation that does not resolve here: no class count to check against
            return
        if isinstance(new_num_classes, int) and not isinstance(new_num_classes, bool):
            self.check(state_dict, new_num_classes, where)

    def __repr__(self):
        return f"ClassExpansion(old_num_classes={self.old_num_classes}, seed={self.seed}, {self.stds})"
