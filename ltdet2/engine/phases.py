"""Multi-phase training: pretrain -> fine-tune -> incremental phases, each a LazyConfig.

A project config holds two keys at its root: ``phases``, an ordered mapping from phase name to a
config namespace with the usual ``model``, ``dataloader``, ``optimizer``, ``lr_multiplier`` and
``train`` keys, and ``train``, the run's own: ``train.output_dir`` (phase ``NAME`` trains in
``<train.output_dir>/NAME``) and what Detectron2's ``default_setup`` reads (``seed``,
``cudnn_benchmark``). Nothing else of the root ``train`` reaches a phase: each phase has its own
complete ``train``. An override ``key=value`` applies to the root and to every phase,
``phases.NAME.key=value`` to one phase (after the others, so it wins).

The runner trains phase k starting from phase k-1's final checkpoint (given as
``train.init_checkpoint``; ``train.init_from_phase`` names another earlier phase instead), skips
phases that already finished (warning when a finished phase's config has changed since), resumes an
interrupted one with ``--resume`` (without it, or ``--restart``, a phase holding an earlier run's checkpoints is
refused), and ends with one table of every phase's results. Before a phase trains, what would otherwise fail late
or silently is checked: its datasets' files, the class counts of its teacher's and (LST) expanded checkpoint, the
total batch against the number of processes; the temporary files of interrupted writes in its folder are removed.
Then it builds the phase's derived datasets (``train.derived_datasets``, :mod:`ltdet2.engine.derived`) and gives a
teacher-student model the frozen final model of ``train.teacher_from_phase`` (:func:`chain_teachers`). A config
without ``phases`` is one phase trained in ``train.output_dir`` itself, exactly as Detectron2's own script does
(a one-phase project is such a plain config).
Detectron2's script refuses a project with phases: its root has no ``model``.

With several processes, rank 0 takes the decisions (skip a phase, train it, resume it from which
checkpoint, record it as done) and every rank follows them, so ranks whose folders are not in sync
cannot disagree; every rank returns rank 0's results.
"""

import copy
import difflib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from tabulate import tabulate

from detectron2.config import LazyConfig
from detectron2.utils import comm

from ..utils.files import file_identity
from ..utils.json_io import read_json, write_json_atomic
from .checkpoint import (
    LAST_CHECKPOINT,
    AtomicCheckpointer,
    CheckpointMismatchError,
    checkpoint_model_state,
    remove_interrupted_writes,
    remove_run_checkpoints,
    run_checkpoints,
)
from .epochs import resolve_epoch_schedule
from .launch import on_main_process, raise_if_any_rank_failed
from .train_loop import (
    FINAL_CHECKPOINT,
    build_class_expansion,
    build_model,
    check_max_iter,
    check_total_batch_size,
    create_ddp_model,
    do_test,
    do_train,
)

logger = logging.getLogger("detectron2")

PHASE_KEYS = ("model", "dataloader", "optimizer", "lr_multiplier", "train")
PROJECT_ROOT_KEYS = ("train", "phases")
DONE_FILE = "phase_done.json"
SUMMARY_METRICS = ("AP", "AP50", "APr", "APc", "APf")


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


def make_phase(base=None, **keys):
    """A phase namespace for a project's ``phases`` mapping: a deep copy of ``base`` (a phase or a
    config module's namespace) with ``keys`` replacing its entries. Edit the copy freely."""
    phase = {}
    if base is not None:
        for key in PHASE_KEYS:
            if key in base:
                phase[key] = copy.deepcopy(base[key])
    for key, value in keys.items():
        phase[key] = copy.deepcopy(value)
    return phase


@dataclass
class Override:
    """One ``key=value`` of the command line. ``+key=value`` adds a key that does not exist yet,
    ``++key=value`` sets it whether it exists or not (Hydra's markers); a plain one changes an existing key."""

    text: str
    key: str
    value: str
    marker: str  # "", "+" or "++"

    @classmethod
    def parse(cls, text):
        if text.startswith("-"):
            raise ValueError(f"{text!r} is a flag, not a key=value override: write flags before the overrides")
        if "=" not in text or text.startswith("~"):
            raise ValueError(
                f"override {text!r} is not key=value (+key=value adds a new key; deleting keys with ~ is not supported)"
            )
        key, value = text.split("=", 1)
        marker = "++" if key.startswith("++") else "+" if key.startswith("+") else ""
        return cls(text, key[len(marker) :], value, marker)

    def assignment(self, key=None):
        """The ``key=value`` LazyConfig.apply_overrides reads (Detectron2 ignores Hydra's markers)."""
        return f"{key or self.key}={self.value}"


def has_key(cfg, key):
    """Whether the dotted ``key`` exists in ``cfg`` (its value may be None or ``???``)."""
    parent_key, _, last = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    if isinstance(parent, DictConfig):
        return last in parent.keys()
    if isinstance(parent, ListConfig):
        return last.isdigit() and int(last) < len(parent)
    return False


def _dotted_keys(node, prefix=""):
    """Every dotted key below a plain container (``OmegaConf.to_container(resolve=False)``)."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for name, child in children:
        yield f"{prefix}{name}"
        yield from _dotted_keys(child, f"{prefix}{name}.")


def _unknown_key_error(override, namespaces, where):
    """ValueError for an override naming no existing key, with the closest existing keys."""
    known = sorted(
        {
            key
            for namespace in namespaces
            for key in _dotted_keys(OmegaConf.to_container(namespace, resolve=False))
            if not key.startswith("phases.")
        }
    )  # a project root's own: its train
    close = difflib.get_close_matches(override.key, known, n=3, cutoff=0.8)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return ValueError(
        f"override {override.text!r}: {where} has no key {override.key!r}{hint} "
        f"(to add a new key, write +{override.key}={override.value})"
    )


def _apply_override(override, targets, where):
    """Applies ``override`` to the namespaces of ``targets`` ({label: namespace}) that hold its key
    (a plain override, which must name an existing key in at least one) or to all (``+`` / ``++``)."""
    holding = [label for label, namespace in targets.items() if has_key(namespace, override.key)]
    if override.marker == "" and not holding:
        raise _unknown_key_error(override, targets.values(), where)
    if override.marker == "+" and holding:
        raise ValueError(
            f"override {override.text!r}: {override.key!r} already exists in {where} ({holding}): "
            f"drop the '+' to change it (or write ++ to set it everywhere)"
        )
    for label in holding if override.marker == "" else targets:
        LazyConfig.apply_overrides(targets[label], [override.assignment()])


def _apply_phase_override(cfg, override, config_file):
    """Applies ``phases.NAME.key=value`` to phase NAME, which must be one of the project's phases."""
    _, name, key = (override.key.split(".", 2) + ["", ""])[:3]
    names = list(cfg.phases)
    if name not in cfg.phases:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f"; did you mean 'phases.{close[0]}'?" if close else ""
        raise ValueError(f"override {override.text!r}: {config_file} has no phase {name!r}{hint} (its phases: {names})")
    if not key:
        raise ValueError(
            f"override {override.text!r}: override a phase's keys (phases.{name}.KEY=value), not the whole phase"
        )
    phase_override = Override(override.text, key, override.value, override.marker)
    _apply_override(phase_override, {name: cfg.phases[name]}, f"phase {name!r} of {config_file}")


def load_config(config_file, overrides=()):
    """Loads a (project) config and applies overrides; general ones apply to every phase too.

    An override must name an existing key (``+key=value`` adds one): a general override changes the
    root ``train`` and every phase that hold the key, ``phases.NAME.key=value`` one phase (after the
    general ones, so it wins). Mistyped keys and phase names are refused with the closest names."""
    cfg = LazyConfig.load(config_file)
    parsed = [Override.parse(o) for o in overrides]
    phase_specific = [o for o in parsed if o.key.startswith("phases.")]
    general = [o for o in parsed if not o.key.startswith("phases.")]
    if "phases" in cfg:
        _check_project_root(cfg, config_file)
        for name in cfg.phases:
            _check_phase(cfg.phases[name], name, config_file)
    elif phase_specific:
        raise ValueError(
            f"{config_file} has no phases (it is one phase in train.output_dir): "
            f"{[o.text for o in phase_specific]} name a phase; drop the 'phases.NAME.' prefix"
        )
    for override in general:
        if "phases" not in cfg:
            _apply_override(override, {"": cfg}, config_file)
            continue
        targets = {name: cfg.phases[name] for name in cfg.phases}
        if override.key.split(".", 1)[0] == "train":  # the root holds the run's train, nothing else
            targets = {"(root)": cfg, **targets}
        _apply_override(override, targets, f"{config_file} (root 'train' and phases {list(cfg.phases)})")
    # last, so that a phase's own override wins over a general one
    for override in phase_specific:
        _apply_phase_override(cfg, override, config_file)
    namespaces = cfg.phases.items() if "phases" in cfg else [("", cfg)]
    for name, namespace in namespaces:
        if "model" in namespace:
            _check_class_counts(namespace.model, config_file, name)
            _check_dataset_names(namespace, config_file, name)
    return cfg


def _check_project_root(cfg, config_file):
    """A project's root holds ``train`` (the run's: output_dir, seed) and a non-empty ``phases``, nothing
    else: no phase's pieces there for Detectron2's own script to train instead."""
    extra = [key for key in cfg if key not in PROJECT_ROOT_KEYS]
    if extra:
        raise ValueError(
            f"{config_file}: a project with phases holds only 'train' and 'phases' at its root, but it also has "
            f"{extra}. Build the phases with ltdet2.engine.make_phase, then `del` the other module-level config "
            f"objects (a one-phase project is a plain config without 'phases')"
        )
    if "train" not in cfg or not cfg.phases:
        raise ValueError(
            f"{config_file}: a project needs a root 'train' (train.output_dir: phase NAME trains in "
            f"<train.output_dir>/NAME) and at least one phase; it has {sorted(cfg)}"
        )


def _check_phase(phase_cfg, name, config_file):
    missing = [key for key in PHASE_KEYS if key not in phase_cfg]
    if missing:
        raise ValueError(f"{config_file}: phase '{name}' lacks {missing}; each phase needs {list(PHASE_KEYS)}")


def _check_class_counts(model_cfg, config_file, phase_name):
    """Every integer ``num_classes`` under ``model.roi_heads`` (method pieces copy the class count when
    they are added) equals ``model.roi_heads.num_classes``."""
    roi_heads = model_cfg.get("roi_heads", None)
    if not isinstance(roi_heads, DictConfig) or not isinstance(roi_heads.get("num_classes", None), int):
        return
    expected = roi_heads.num_classes
    where = f"{config_file}" + (f", phase '{phase_name}'" if phase_name else "")
    for path, value in _entries_named(OmegaConf.to_container(roi_heads, resolve=False), "num_classes"):
        if isinstance(value, int) and value != expected:
            raise ValueError(
                f"{where}: model.roi_heads{path}.num_classes is {value} but model.roi_heads.num_classes is "
                f"{expected}. Method pieces (configs/loce.py, configs/rio.py) copy the class count when they "
                f"are added: set model.roi_heads.num_classes before adding them, or override both"
            )


def _check_dataset_names(namespace, config_file, phase_name):
    """Every ``dataset_name`` under ``model`` (replay targets, dataset-guided indicators: method pieces copy
    the training dataset's name when they are added) names ``dataloader.train.dataset.names``."""
    try:
        expected = OmegaConf.to_container(namespace.dataloader.train.dataset, resolve=False).get("names")
    except (AttributeError, KeyError, ValueError):
        return
    if not isinstance(expected, (str, list)):
        return
    where = f"{config_file}" + (f", phase '{phase_name}'" if phase_name else "")
    for path, value in _entries_named(OmegaConf.to_container(namespace.model, resolve=False), "dataset_name"):
        if isinstance(value, (str, list)) and value != expected:
            raise ValueError(
                f"{where}: model{path}.dataset_name is {value!r} but dataloader.train.dataset.names is "
                f"{expected!r}. Method pieces (configs/loce.py, configs/rio.py) copy the training dataset's name "
                f"when they are added: override both"
            )


def _entries_named(node, key, path=""):
    """(path, value) of every entry called ``key`` in nested dicts and lists below ``node``."""
    if isinstance(node, dict):
        for name, child in node.items():
            if name == key and path:
                yield path, child
            yield from _entries_named(child, key, f"{path}.{name}")
    elif isinstance(node, (list, tuple)):
        for index, child in enumerate(node):
            yield from _entries_named(child, key, f"{path}.{index}")


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


def input_phase(phases, index):
    """The phase whose final checkpoint phase ``index`` starts from: ``train.init_from_phase`` if
    set (an earlier phase, e.g. several fine-tunes of one pretrain), else the previous phase.
    ``init_from_phase=""`` makes the phase independent: it keeps its own ``train.init_checkpoint``
    (e.g. several runs from scratch in one project). Returns None when there is no input phase."""
    if index == 0:
        return None
    phase = phases[index]
    source = phase.cfg.train.get("init_from_phase", None)
    if source is None:
        return phases[index - 1]
    if source == "":
        return None
    return _earlier_phase(phases, index, "init_from_phase")


def _earlier_phase(phases, index, key):
    """The phase named by phase ``index``'s ``train.<key>``, which must be an earlier phase."""
    phase, source = phases[index], phases[index].cfg.train.get(key)
    earlier = {p.name: p for p in phases[:index]}
    if source not in earlier:
        raise ValueError(
            f"phase '{phase.name}': train.{key}={source!r} is not an earlier phase (earlier phases: {list(earlier)})"
        )
    return earlier[source]


def chain_checkpoints(phases):
    """Phase k > 0 starts from its input phase's final checkpoint (see :func:`input_phase`)."""
    for index, phase in enumerate(phases[1:], start=1):
        source = input_phase(phases, index)
        if source is not None:
            phase.cfg.train.init_checkpoint = source.final_checkpoint


def teacher_phase(phases, index):
    """The earlier phase named by phase ``index``'s ``train.teacher_from_phase`` (None: no teacher)."""
    if not phases[index].cfg.train.get("teacher_from_phase", None):
        return None
    return _earlier_phase(phases, index, "teacher_from_phase")


def chain_teachers(phases):
    """A phase with ``train.teacher_from_phase = NAME`` gets NAME's final checkpoint as ``model.teacher_weights``
    and, when its ``model.teacher`` is None, a copy of NAME's ``model`` config as ``model.teacher`` (the
    teacher-student model, :class:`ltdet2.modeling.TeacherStudentRCNN`, builds and freezes it)."""
    for index, phase in enumerate(phases):
        source = teacher_phase(phases, index)
        if source is None:
            continue
        phase.cfg.model.teacher_weights = source.final_checkpoint
        if phase.cfg.model.get("teacher", None) is None:
            phase.cfg.model.teacher = teacher_model_config(source.cfg.model)


def teacher_model_config(model_cfg):
    """A copy of an earlier phase's model config to build its frozen model from: a teacher-student model's own
    teacher and distillation terms are left out (a teacher is the phase's student alone, as its checkpoint)."""
    from detectron2.config.instantiate import locate
    from detectron2.modeling import GeneralizedRCNN

    from ltdet2.modeling import TeacherStudentRCNN

    teacher = copy.deepcopy(model_cfg)
    target = teacher.get("_target_", None)
    target = locate(target) if isinstance(target, str) else target
    if isinstance(target, type) and issubclass(target, TeacherStudentRCNN):
        for key in ("teacher", "teacher_weights", "distillers"):
            teacher.pop(key, None)
        teacher._target_ = GeneralizedRCNN
    return teacher


def check_training_mapper(phase):
    """A training dataset with ignored annotations (metadata ``num_ignored_annotations`` > 0, a derived dataset
    built with ``unselected="ignore"``) needs a mapper that passes their validity on to the model
    (:class:`ltdet2.data.ValidityDatasetMapper` or a subclass): refused with a ValueError otherwise."""
    from detectron2.config.instantiate import locate
    from detectron2.data import MetadataCatalog

    names = OmegaConf.select(phase.cfg, "dataloader.train.dataset.names", default=None)
    names = [names] if isinstance(names, str) else list(names or [])
    ignoring = {n: MetadataCatalog.get(n).get("num_ignored_annotations", 0) for n in names}
    ignoring = {n: count for n, count in ignoring.items() if count}
    if not ignoring:
        return
    from ltdet2.data import ValidityDatasetMapper  # written by the data side; needed only here

    target = OmegaConf.select(phase.cfg, "dataloader.train.mapper._target_", default=None)
    target = locate(target) if isinstance(target, str) else target
    if not (isinstance(target, type) and issubclass(target, ValidityDatasetMapper)):
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
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = OmegaConf.select(cfg, key, default=None)
    names = [names] if isinstance(names, str) else list(names or [])
    registered = set(DatasetCatalog.list())
    for name in names:
        if name not in registered:
            continue
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is not None:
            yield name, len(classes)


def check_dataset_files(phase, dataset_keys=None):
    """FileNotFoundError for a dataset the phase reads whose ``json_file`` or ``image_root`` (metadata) does not exist,
    naming the path, the dataset and ``$DETECTRON2_DATASETS``, under which Detectron2 registers its built-in datasets
    (``lvis_*``, ``coco_*``). Checked: the registered datasets named at ``dataset_keys``, or (None) anywhere in the
    phase's config (model pieces and derived-dataset builders name datasets too). Datasets registered by ltdet2
    (:func:`ltdet2.data.register_lvis_format_dataset`, LT-Shapes: made on first use, derived sets) say so themselves."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ltdet2.data.datasets import is_lvis_format_dataset

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
    distillers) and, with ``train.expand_classes`` (LST), its initial checkpoint unless it resumes its own."""
    _check_teacher_checkpoint(phase)
    last = os.path.join(phase.output_dir, LAST_CHECKPOINT)
    if phase.cfg.train.get("expand_classes", None) and not (resume and os.path.isfile(last)):
        _check_expansion_checkpoint(phase)


def _check_teacher_checkpoint(phase):
    from ltdet2.modeling.expansion import class_rows_unlike

    model = phase.cfg.model
    path, teacher = model.get("teacher_weights", None), model.get("teacher", None)
    if not path or not model.get("distillers", None) or not isinstance(teacher, DictConfig):
        return
    expected = _class_count(teacher, "roi_heads.num_classes")
    state = checkpoint_model_state(path) if expected is not None else None
    if not state:
        return
    unlike = class_rows_unlike(state, expected)
    if unlike:
        source = phase.cfg.train.get("teacher_from_phase", None)
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
            f"model.teacher, which has {expected} classes (model.teacher.roi_heads.num_classes): {listed}"
            f"{' ...' if len(unlike) > 4 else ''}. {hint}"
        )


def _check_expansion_checkpoint(phase):
    path = phase.cfg.train.get("init_checkpoint", None)
    new_num_classes = _class_count(phase.cfg, "model.roi_heads.num_classes")
    state = checkpoint_model_state(path) if new_num_classes is not None else None
    if state:
        build_class_expansion(phase.cfg).check(
            state, new_num_classes, where=f"{phase.where}: train.init_checkpoint {path}"
        )


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
    listed = "; ".join(f"{key}: {_short(old)} -> {_short(new)}" for key, old, new in changes[:CHANGES_SHOWN])
    more = f" and {len(changes) - CHANGES_SHOWN} more" if len(changes) > CHANGES_SHOWN else ""
    logger.warning(
        f"phase '{phase.name}' already finished, and its config has changed since it trained "
        f"({os.path.join(phase.output_dir, 'config.yaml')}): {listed}{more}. It is skipped: its outputs (its "
        f"checkpoints, results and the datasets it built) are those of the old values. To train it with the new "
        f"ones, delete {phase.done_file} and run with --restart"
    )


def changed_config_keys(phase):
    """[(dotted key, value it was trained with, value now)] of a finished phase (``<phase folder>/config.yaml``, written
    by :func:`run_phase`), leaving out :data:`RUN_SPECIFIC_KEYS`, a length counted in epochs, and keys added to the
    config since with an unset value (None, False, empty); None when that file does not exist or cannot be read."""
    import yaml

    saved_path = os.path.join(phase.output_dir, "config.yaml")
    if not os.path.isfile(saved_path):
        return None
    try:
        saved = _read_config_yaml(saved_path)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    with tempfile.TemporaryDirectory() as folder:  # the current config, as run_phase saves it
        current_path = os.path.join(folder, "config.yaml")
        LazyConfig.save(phase.cfg, current_path)
        if not os.path.isfile(current_path):
            return None
        current = _read_config_yaml(current_path)
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


def _read_config_yaml(path):
    """A config.yaml as plain data, without running anything: objects LazyConfig.save wrote with a python tag (e.g.
    Detectron2's ShapeSpec) are read as their fields, under the key "!python"."""
    import yaml

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


def _require_init_checkpoint(phase, previous):
    if previous is not None:
        require_final_checkpoint(
            previous, f"phase '{phase.name}' starts from phase '{previous.name}''s final checkpoint"
        )


def train_command(train_script, config_file, *, seed, output_dir, overrides=(), phase=None):
    """The command line (a list) that trains ``config_file`` with ``train_script`` (scripts/lazyconfig_train_net.py)
    in its own process: resumed, ``train.seed`` and ``train.output_dir`` set, then ``overrides``; with ``phase``,
    only that phase (``--phase``). Used by the scripts that run a project for several seeds or entries."""
    command = [sys.executable, train_script, "--config-file", config_file, "--resume"]
    command += ["--phase", phase] if phase else []
    return command + [f"train.seed={seed}", f"train.output_dir={output_dir}", *overrides]


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
    results = do_test(phase.cfg, model)
    seconds = {"train_seconds": eval_start - train_start, "eval_seconds": time.perf_counter() - eval_start}

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
    from detectron2.config import instantiate
    from detectron2.evaluation.evaluator import inference_context

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
    if not phase.cfg.train.get("teacher_from_phase", None):
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


def non_finite_parameters(model):
    """Names of the parameters and buffers of ``model`` holding NaN or infinite values."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    floating = [(name, t) for name, t in tensors if t.is_floating_point()]
    if not floating:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in floating]).tolist()
    return [name for (name, _), ok in zip(floating, finite) if not ok]


def evaluate_phase(phase, checkpoint=None):
    """Evaluates a phase's final checkpoint (or ``checkpoint``: a path or a Detectron2 URL)."""
    checkpoint = checkpoint or phase.final_checkpoint

    def check():
        if "://" not in checkpoint and not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"phase '{phase.name}': no checkpoint to evaluate at {checkpoint}")

    on_main_process(check)
    model = create_ddp_model(build_model(phase.cfg), phase.cfg)
    AtomicCheckpointer(model, required_parameters=evaluated_parameters(model)).load(checkpoint)
    results = do_test(phase.cfg, model)
    return on_main_process(lambda: results)  # the evaluator's results are rank 0's


def evaluated_parameters(model):
    """Names of the parameters an evaluation uses, which the evaluated checkpoint must hold: all but a
    teacher-student model's distillation terms (training only; LST's weight generator term is left out of its
    ``model_final``)."""
    from ltdet2.modeling import TeacherStudentRCNN

    model = getattr(model, "module", model)
    training_only = "distillers." if isinstance(model, TeacherStudentRCNN) else None
    return [name for name, _ in model.named_parameters() if training_only is None or not name.startswith(training_only)]


def run_phases(cfg, *, resume=False, restart=False, only=None, eval_only=False, eval_checkpoint=None):
    """Runs the config's phases in order; returns {name: results}.

    A phase that has not finished but whose folder holds checkpoints of an earlier run continues from them with
    ``resume``, trains again from its beginning with ``restart`` (they are removed first), and is refused otherwise
    (:func:`check_earlier_run`). With ``eval_only`` each selected phase's final checkpoint is evaluated instead
    (phases not trained yet are skipped with a warning), or ``eval_checkpoint`` for a single selected phase.
    """
    from .derived import derived_dataset_builders, prepare_derived_datasets, register_derived_datasets

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
                check_total_batch_size(phase.cfg, comm.get_world_size(), phase.where)
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
    _require_init_checkpoint(phase, input_phase(phases, index))
    teacher = teacher_phase(phases, index)
    if teacher is not None:
        require_final_checkpoint(
            teacher,
            f"phase '{phase.name}' distils from the frozen final model of phase '{teacher.name}' "
            f"(train.teacher_from_phase),",
        )
    return None


def format_phase_table(rows):
    """One row per (phase, task) with AP, AP50, APr, APc, APf (percent)."""
    table = []
    for name, results in rows:
        for task, metrics in (results or {}).items():
            table.append([name, task] + [metrics.get(key, float("nan")) for key in SUMMARY_METRICS])
    return tabulate(table, headers=["phase", "task", *SUMMARY_METRICS], floatfmt=".2f", tablefmt="pipe")


def log_phase_table(rows, title=None):
    text = format_phase_table(rows)
    logger.info(("Results of " + title + ":\n" if title else "Results:\n") + text)


def _plain(results):
    return json.loads(json.dumps(results, default=float))
