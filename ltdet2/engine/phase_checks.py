"""The checks of a phase before it trains, and when it ends: what would otherwise fail late or silently.

Before a phase trains (:func:`ltdet2.engine.phases.run_phases`): the files of the datasets it reads
(:func:`check_dataset_files`), the checkpoints it will load (:func:`check_phase_checkpoints`: its teacher's and, LST,
its expanded initial checkpoint), the checkpoints of an earlier run in its folder (:func:`check_earlier_run`), the
final checkpoints of the earlier phases it needs (:func:`require_final_checkpoint`), the class counts of its model
against its datasets' (:func:`check_class_counts`), its mapper for datasets with ignored annotations
(:func:`check_training_mapper`) and, before any phase trains, its LVIS evaluator's dataset, which must not be a
COCO-format json (:func:`check_lvis_evaluator_dataset`). A misspelt dataset name is refused, with the closest
registered names, before the model is built (:func:`ltdet2.engine.train_loop.check_dataset_names`). A finished phase
whose config has changed since it trained is warned about (:func:`warn_if_config_changed`); a phase is done only
once its final checkpoint loads (:func:`require_loadable_final`).

Each takes a phase (``name``, ``cfg``, ``output_dir``, ``where``, ...: :class:`ltdet2.engine.phases.Phase`) and runs on
the main process (the runner calls it through :func:`ltdet2.engine.ranks.on_main_process`).
"""

import logging
import os
import tempfile

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog, MetadataCatalog

from .. import data  # data.ValidityDatasetMapper, read when a mapper is checked
from ..data.datasets import is_lvis_format_dataset
from ..evaluation.lvis_evaluation import coco_format_advice, json_lacks_lvis_fields
from ..modeling.expansion import class_rows_unlike
from ..utils.lazy_config import lazy_target
from .checkpoint import (
    CheckpointMismatchError,
    checkpoint_model_state,
    remove_run_checkpoints,
    run_checkpoints,
)
from .phase_graph import teacher_phase_name
from .train_loop import initial_checkpoint_checks

logger = logging.getLogger("detectron2")

__all__ = [
    "CLASS_COUNT_KEYS",
    "DATASET_KEYS",
    "check_training_mapper",
    "check_class_counts",
    "check_dataset_files",
    "check_lvis_evaluator_dataset",
    "check_phase_checkpoints",
    "check_earlier_run",
    "warn_if_config_changed",
    "changed_config_keys",
    "format_config_changes",
    "read_config_yaml",
    "require_loadable_final",
    "require_final_checkpoint",
    "require_init_checkpoint",
]


def check_training_mapper(phase):
    """A training dataset with ignored annotations (metadata ``num_ignored_annotations`` > 0, a derived dataset
    built with ``unselected="ignore"``) needs a mapper that passes their validity on to the model
    (:class:`ltdet2.data.ValidityDatasetMapper` or a subclass): refused with a ValueError otherwise."""
    names = OmegaConf.select(phase.cfg, "dataloader.train.dataset.names", default=None)
    names = [names] if isinstance(names, str) else list(names or [])
    ignoring = {n: MetadataCatalog.get(n).get("num_ignored_annotations", 0) for n in names}
    ignoring = {n: count for n, count in ignoring.items() if count}
    if not ignoring:
        return
    target = lazy_target(OmegaConf.select(phase.cfg, "dataloader.train.mapper", default=None))
    if not (isinstance(target, type) and issubclass(target, data.ValidityDatasetMapper)):
        where = f"phase '{phase.name}'" if phase.name else phase.output_dir
        datasets = ", ".join(f"{n!r} ({c} ignored annotations)" for n, c in ignoring.items())
        raise ValueError(
            f"{where}: the training dataset {datasets} "
            f"has ignored annotations, but dataloader.train.mapper is {getattr(target, '__name__', target)!r}, which "
            f"would train on them as positives: use ltdet2.data.ValidityDatasetMapper (same arguments as DatasetMapper)"
        )


# the class counts of the model that must equal its datasets' (key, class-agnostic count allowed or None)
CLASS_COUNT_KEYS = (
    ("model.roi_heads.num_classes", None),
    ("model.roi_heads.box_predictor.num_classes", None),
    ("model.roi_heads.mask_head.num_classes", 1),  # 1: a class-agnostic mask head
    ("model.num_classes", None),  # one-stage detectors (RetinaNet, FCOS)
)

DATASET_KEYS = ("dataloader.train.dataset.names", "dataloader.test.dataset.names")


def check_class_counts(phase, dataset_keys=DATASET_KEYS):
    """The model's class counts (:data:`CLASS_COUNT_KEYS`, those the phase has) equal the number of classes (metadata
    ``thing_classes``) of every registered dataset named at ``dataset_keys`` (default: the training and test
    datasets); a ValueError naming the keys otherwise. Datasets without ``thing_classes`` are not checked. Call it
    once the phase's datasets are built (derived ones: :func:`~ltdet2.engine.derived.prepare_derived_datasets`)."""
    counts = [(key, value, agnostic) for key, agnostic in CLASS_COUNT_KEYS if (value := _class_count(phase.cfg, key))]
    if not counts:
        return
    where = phase.where
    for dataset_key in dataset_keys:
        for name, classes in _dataset_class_counts(phase.cfg, dataset_key):
            for key, value, agnostic in counts:
                if value != classes and value != agnostic:
                    raise ValueError(
                        f"{where}: {key}={value} but dataset {name!r} ({dataset_key}) has {classes} classes "
                        f"(its metadata's thing_classes): set {key}={classes}, or use the dataset the model is for"
                    )


def _class_count(cfg, key):
    """The integer at ``key`` (interpolations resolved), or None."""
    try:
        value = OmegaConf.select(cfg, key, default=None)
    except Exception:  # an interpolation that does not resolve here: not a class count to check
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dataset_class_counts(cfg, key):
    """(name, number of thing_classes) of each registered dataset named at ``key``."""
    names = OmegaConf.select(cfg, key, default=None)
    names = [names] if isinstance(names, str) else list(names or [])
    registered = set(DatasetCatalog.list())
    for name in names:
        if name not in registered:
            continue
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is not None:
            yield name, len(classes)


def check_lvis_evaluator_dataset(phase):
    """An LVIS evaluator (``dataloader.evaluator``: Detectron2's ``LVISEvaluator`` or a subclass, e.g.
    :class:`ltdet2.evaluation.LTLVISEvaluator`) given a dataset whose json is COCO-format (no LVIS field, e.g. one
    registered by Detectron2's ``register_coco_instances``) would fail at the end of training: a ValueError before,
    saying to register the file with :func:`ltdet2.data.register_lvis_format_dataset` (which evaluates a COCO file as
    exhaustively annotated). Datasets registered by ltdet2, unregistered names
    (:func:`~ltdet2.engine.train_loop.check_dataset_names`) and missing files (:func:`check_dataset_files`) are left to
    those."""
    from detectron2.evaluation import LVISEvaluator

    try:
        evaluator = OmegaConf.select(phase.cfg, "dataloader.evaluator", default=None)
        target = lazy_target(evaluator)
        name = OmegaConf.select(phase.cfg, "dataloader.evaluator.dataset_name", default=None)
    except Exception:  # a target or an interpolation that does not resolve here: left to the evaluator
        return
    if not (isinstance(target, type) and issubclass(target, LVISEvaluator)) or not isinstance(name, str):
        return
    if name not in DatasetCatalog or is_lvis_format_dataset(name):
        return
    json_file = MetadataCatalog.get(name).get("json_file", None)
    if not isinstance(json_file, str) or "://" in json_file or not os.path.isfile(os.path.expanduser(json_file)):
        return
    if json_lacks_lvis_fields(os.path.expanduser(json_file)):
        raise ValueError(
            coco_format_advice(
                f"{phase.where}: dataloader.evaluator ({target.__name__}) evaluates dataset {name!r}, whose json_file "
                f"{json_file}"
            )
        )


def check_dataset_files(phase, dataset_keys=None):
    """FileNotFoundError for a dataset the phase reads whose ``json_file`` or ``image_root`` (metadata) does not exist,
    naming the path, the dataset and ``$DETECTRON2_DATASETS``, under which Detectron2 registers its built-in datasets
    (``lvis_*``, ``coco_*``). Checked: the registered datasets named at ``dataset_keys``, or (None) anywhere in the
    phase's config (model pieces and derived-dataset builders name datasets too). Datasets registered by ltdet2
    (:func:`ltdet2.data.register_lvis_format_dataset`, LT-Shapes: made on first use, derived sets) say so themselves."""
    registered = set(DatasetCatalog.list())
    names = _named_datasets(phase.cfg, dataset_keys, registered)
    for name in names:
        if is_lvis_format_dataset(name):
            continue
        metadata = MetadataCatalog.get(name)
        for key, exists in (("json_file", os.path.isfile), ("image_root", os.path.isdir)):
            path = metadata.get(key, None)
            if isinstance(path, str) and path and "://" not in path and not exists(os.path.expanduser(path)):
                raise FileNotFoundError(_missing_dataset_file_message(phase, name, key, path))


def _named_datasets(cfg, dataset_keys, registered):
    """The registered dataset names at ``dataset_keys`` of ``cfg`` (None: every string in it that is one), in order."""
    if dataset_keys is None:
        try:
            strings = list(_strings_in(OmegaConf.to_container(cfg, resolve=False)))
        except Exception:  # a config that does not convert: the datasets it loads
            return _named_datasets(cfg, DATASET_KEYS, registered)
    else:
        strings = []
        for key in dataset_keys:
            try:
                value = OmegaConf.select(cfg, key, default=None)
            except Exception:
                continue
            strings += [value] if isinstance(value, str) else list(value or [])
    return list(dict.fromkeys(s for s in strings if isinstance(s, str) and s in registered))


def _strings_in(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for child in node.values():
            yield from _strings_in(child)
    elif isinstance(node, (list, tuple)):
        for child in node:
            yield from _strings_in(child)


def _missing_dataset_file_message(phase, name, key, path):
    variable = os.environ.get("DETECTRON2_DATASETS")
    absolute = os.path.abspath(os.path.expanduser(path))
    shown = path if absolute == path else f"{path} (from {os.getcwd()}: {absolute})"
    if variable is None:
        root = (
            "$DETECTRON2_DATASETS is not set, so they are looked for under ./datasets, relative to the folder the run "
            "starts in"
        )
    else:
        root = f"$DETECTRON2_DATASETS is {variable!r} now"
    return (
        f"{phase.where}: dataset {name!r} reads its {key} {shown}, which does not exist. Detectron2 registers "
        f"its built-in datasets (lvis_v1_train, lvis_v0.5_val, coco_2017_train, ...) under $DETECTRON2_DATASETS, "
        f"read when detectron2.data is imported; {root}. Set DETECTRON2_DATASETS to the folder that holds lvis/ and "
        f"coco/ before the run starts (or register {name!r} with the files' paths)"
    )


def check_phase_checkpoints(phase, *, resume=False):
    """Before a phase trains: the checkpoints it will load hold the class counts its config expects, where that can be
    told from the config (a ValueError naming the entries and their shapes otherwise), rather than at the first
    training step: its teacher's (``model.teacher_weights`` for ``model.teacher``, a teacher-student model with
    distillers) and its initial checkpoint, through the checks its ``train.hooks`` transforms offer
    (:func:`~ltdet2.engine.train_loop.initial_checkpoint_checks`, e.g. LST's network expansion), unless it resumes its
    own."""
    _check_teacher_checkpoint(phase)
    checks = initial_checkpoint_checks(phase.cfg)
    # a resume loads the phase's own checkpoint (with or without last_checkpoint: AtomicCheckpointer.resume_or_load)
    if checks and not (resume and run_checkpoints(phase.output_dir)):
        _check_initial_checkpoint(phase, checks)


def _class_row_check(model_cfg):
    """(the key of a model config's class count, the check of a checkpoint's class rows against it): the model
    class's own ``checkpoint_class_rows_unlike(state_dict, num_classes)`` with ``num_classes`` (e.g.
    :class:`~ltdet2.modeling.meta_arch.DeformableDETR`), else Detectron2's R-CNN layout
    (:func:`~ltdet2.modeling.expansion.class_rows_unlike`, ``roi_heads.num_classes``)."""
    try:
        target = lazy_target(model_cfg)
    except Exception:  # a dotted name that does not locate here: left to the build
        target = None
    check = getattr(target, "checkpoint_class_rows_unlike", None)
    return ("num_classes", check) if callable(check) else ("roi_heads.num_classes", class_rows_unlike)


def _check_teacher_checkpoint(phase):
    model = phase.cfg.model
    path, teacher = model.get("teacher_weights", None), model.get("teacher", None)
    if not path or not model.get("distillers", None) or not isinstance(teacher, DictConfig):
        return
    count_key, rows_unlike = _class_row_check(teacher)
    expected = _class_count(teacher, count_key)
    state = checkpoint_model_state(path) if expected is not None else None
    if not state:
        return
    unlike = rows_unlike(state, expected)
    if unlike:
        source = teacher_phase_name(phase.cfg.train)
        listed = "; ".join(
            f"{key}: {shape} in the checkpoint, {rows} rows for {expected} classes" for key, shape, rows in unlike[:4]
        )
        hint = (
            f"The runner built model.teacher from phase '{source}''s model config and gives it that phase's final "
            f"checkpoint: was phase '{source}' trained with another class count than its config has now?"
            if source
            else "Give model.teacher the class count of the model the checkpoint was saved from"
        )
        raise CheckpointMismatchError(
            f"{phase.where}: its teacher's checkpoint {path} (model.teacher_weights) does not fit "
            f"model.teacher, which has {expected} classes (model.teacher.{count_key}): {listed}"
            f"{' ...' if len(unlike) > 4 else ''}. {hint}"
        )


def _check_initial_checkpoint(phase, checks):
    path = phase.cfg.train.get("init_checkpoint", None)
    state = checkpoint_model_state(path) if path else None
    if state:
        for check in checks:
            check(state, phase.cfg, where=f"{phase.where}: train.init_checkpoint {path}")


def check_earlier_run(phase, *, resume=False, restart=False):
    """A phase about to train whose folder holds checkpoints of an earlier run (:func:`~ltdet2.engine.checkpoint.
    run_checkpoints`, e.g. a run that was killed) continues from them with ``resume``; with ``restart`` they are
    removed (logged) and it trains from its beginning; otherwise it is refused with a RuntimeError saying both, rather
    than training again from iteration 0 over them."""
    found = run_checkpoints(phase.output_dir)
    if not found or resume:
        return
    where, names = phase.where, [os.path.basename(path) for path in found]
    listed = ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")
    if not restart:
        raise RuntimeError(
            f"{where}: {phase.output_dir} holds checkpoints of an earlier run ({listed}), which training without "
            f"--resume would start again from iteration 0 and overwrite. Run again with --resume to continue from "
            f"the newest one (finished phases are skipped), or with --restart to train the phases that have not "
            f"finished from their beginning (their checkpoints are removed first; or delete {phase.output_dir})"
        )
    remove_run_checkpoints(phase.output_dir)
    logger.warning(f"{where}: --restart: removed the checkpoints of an earlier run ({listed}); trains from iteration 0")


CHANGES_SHOWN = 8

# keys of a phase's config that the runner fills, or that do not change what the phase builds
RUN_SPECIFIC_KEYS = ("train.output_dir", "train.init_checkpoint", "model.teacher_weights", "train.device")


def warn_if_config_changed(phase):
    """Warns when a finished (skipped) phase's config differs from the one it was trained with (its ``config.yaml``),
    naming the keys: its outputs were built from the old values. Never raises (nothing is said when that file is
    missing or cannot be read)."""
    try:
        changes = changed_config_keys(phase)
    except Exception as e:
        logger.info(f"phase '{phase.name}': its config could not be compared with the one it was trained with: {e}")
        return
    if not changes:
        return
    logger.warning(
        f"phase '{phase.name}' already finished, and its config has changed since it trained "
        f"({os.path.join(phase.output_dir, 'config.yaml')}): {format_config_changes(changes)}. It is skipped: its "
        f"outputs (its checkpoints, results and the datasets it built) are those of the old values. To train it with "
        f"the new ones, delete {phase.done_file} and run with --restart"
    )


def format_config_changes(changes):
    """``changed_config_keys``' list as one line: "key: old -> new; ..." (the first :data:`CHANGES_SHOWN`)."""
    listed = "; ".join(f"{key}: {_short(old)} -> {_short(new)}" for key, old, new in changes[:CHANGES_SHOWN])
    more = f" and {len(changes) - CHANGES_SHOWN} more" if len(changes) > CHANGES_SHOWN else ""
    return listed + more


def changed_config_keys(phase):
    """[(dotted key, value it was trained with, value now)] of a finished phase (``<phase folder>/config.yaml``, written
    by :func:`~ltdet2.engine.phases.run_phase`), leaving out :data:`RUN_SPECIFIC_KEYS`, a length counted in epochs,
    and keys added to the config since with an unset value (None, False, empty); None when that file does not exist or
    cannot be read."""
    saved_path = os.path.join(phase.output_dir, "config.yaml")
    if not os.path.isfile(saved_path):
        return None
    try:
        saved = read_config_yaml(saved_path)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    with tempfile.TemporaryDirectory() as folder:  # the current config, as run_phase saves it
        current_path = os.path.join(folder, "config.yaml")
        LazyConfig.save(phase.cfg, current_path)
        if not os.path.isfile(current_path):
            return None
        current = read_config_yaml(current_path)
    if not isinstance(saved, dict) or not isinstance(current, dict):
        return None
    ignored = list(RUN_SPECIFIC_KEYS)
    if phase.cfg.train.get("epochs", None) is not None:
        ignored.append("train.max_iter")  # counted from the training set when the phase trains (None until then)
    old, new = dict(_leaves(saved)), dict(_leaves(current))
    missing = object()
    return [
        (key, old.get(key, missing), new.get(key, missing))
        for key in sorted(old.keys() | new.keys())
        if old.get(key, missing) != new.get(key, missing)
        and not any(key == k or key.startswith(k + ".") for k in ignored)
        and not (key not in old and _unset(new[key]))  # a key added since, unset: as before it existed
    ]


def read_config_yaml(path):
    """A config.yaml as plain data, without running anything: objects LazyConfig.save wrote with a python tag (e.g.
    Detectron2's ShapeSpec) are read as their fields, under the key "!python"."""

    class Loader(yaml.SafeLoader):
        pass

    def tagged(loader, suffix, node):
        if isinstance(node, yaml.MappingNode):
            return {"!python": suffix, **loader.construct_mapping(node, deep=True)}
        if isinstance(node, yaml.SequenceNode):
            return {"!python": suffix, "items": loader.construct_sequence(node, deep=True)}
        return {"!python": suffix, "value": loader.construct_scalar(node)}

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", tagged)
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=Loader)  # a SafeLoader: constructs no object


def _leaves(node, prefix=""):
    """(dotted key, value) of every leaf of nested dicts and lists; an empty container is a leaf."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
    if not children or not node:
        yield prefix.rstrip("."), node
        return
    for name, child in children:
        yield from _leaves(child, f"{prefix}{name}.")


def _unset(value):
    return value is None or value is False or (isinstance(value, (list, dict)) and not value)


def _short(value, limit=60):
    text = "(absent)" if not isinstance(value, (str, int, float, bool, list, dict, type(None))) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_loadable_final(phase):
    """RuntimeError unless the phase's final checkpoint exists and loads: a phase is done only then."""
    where = phase.where
    path = phase.final_checkpoint
    if not os.path.isfile(path):
        raise RuntimeError(
            f"{where}: training ended without {path}; not marked done. Run again with --resume to write it"
        )
    try:
        torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:
        raise RuntimeError(
            f"{where}: {path} cannot be read ({type(e).__name__}: {e}); not marked done. Remove it and run again "
            f"with --resume to write it from the newest intact checkpoint"
        ) from e


def require_final_checkpoint(source, needed_by):
    """FileNotFoundError unless phase ``source`` (None: nothing needed) has its final checkpoint; ``needed_by``
    says who needs it, e.g. "phase 'b' starts from phase 'a''s final checkpoint"."""
    if source is not None and not os.path.isfile(source.final_checkpoint):
        raise FileNotFoundError(
            f"{needed_by} {source.final_checkpoint}, which does not exist: train phase '{source.name}' first "
            f"(--phase {source.name}), or run all phases"
        )


def require_init_checkpoint(phase, previous):
    if previous is not None:
        require_final_checkpoint(
            previous, f"phase '{phase.name}' starts from phase '{previous.name}''s final checkpoint"
        )
