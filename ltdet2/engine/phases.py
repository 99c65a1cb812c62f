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
phases that already finished, resumes an interrupted one with ``--resume``, and ends with one table
of every phase's results. A config without ``phases`` is one phase trained in ``train.output_dir``
itself, exactly as Detectron2's own script does (a one-phase project is such a plain config).
Detectron2's script refuses a project with phases: its root has no ``model``.
"""
import copy
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf
from tabulate import tabulate

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig
from detectron2.engine.defaults import create_ddp_model
from detectron2.utils import comm

from ..utils.json_io import read_json, write_json_atomic
from .train_loop import FINAL_CHECKPOINT, build_model, do_test, do_train

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
    def done_file(self):
        return os.path.join(self.output_dir, DONE_FILE)

    def is_done(self):
        return os.path.isfile(self.done_file) and os.path.isfile(self.final_checkpoint)

    def load_done(self):
        return read_json(self.done_file, what=f"phase '{self.name}' record")


def checkpoint_identity(path):
    """Path, size and modification time of a local checkpoint (None for URLs or missing files)."""
    if not path or "://" in path or not os.path.isfile(path):
        return None
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime": stat.st_mtime}


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


def split_overrides(overrides):
    """Splits ``key=value`` overrides into those naming one phase (``phases.NAME.…``) and the rest."""
    phase_specific = [o for o in overrides if o.startswith("phases.")]
    general = [o for o in overrides if not o.startswith("phases.")]
    return phase_specific, general


def load_config(config_file, overrides=()):
    """Loads a (project) config and applies overrides; general ones apply to every phase too."""
    cfg = LazyConfig.load(config_file)
    phase_specific, general = split_overrides(list(overrides))
    if "phases" in cfg:
        _check_project_root(cfg, config_file)
    elif phase_specific:
        raise ValueError(f"{config_file} has no phases (it is one phase in train.output_dir): "
                         f"{phase_specific} name a phase; drop the 'phases.NAME.' prefix")
    cfg = LazyConfig.apply_overrides(cfg, general)
    for name in cfg.get("phases", None) or {}:
        _check_phase(cfg.phases[name], name, config_file)
        cfg.phases[name] = LazyConfig.apply_overrides(cfg.phases[name], general)
    # last, so that a phase's own override wins over a general one
    cfg = LazyConfig.apply_overrides(cfg, phase_specific)
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
        raise ValueError(f"{config_file}: a project needs a root 'train' (train.output_dir: phase NAME trains in "
                         f"<train.output_dir>/NAME) and at least one phase; it has {sorted(cfg)}")


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
    earlier = {p.name: p for p in phases[:index]}
    if source not in earlier:
        raise ValueError(f"phase '{phase.name}': train.init_from_phase={source!r} is not an earlier phase "
                         f"(earlier phases: {list(earlier)})")
    return earlier[source]


def chain_checkpoints(phases):
    """Phase k > 0 starts from its input phase's final checkpoint (see :func:`input_phase`)."""
    for index, phase in enumerate(phases[1:], start=1):
        source = input_phase(phases, index)
        if source is not None:
            phase.cfg.train.init_checkpoint = source.final_checkpoint


def _require_init_checkpoint(phase, previous):
    if previous is not None and not os.path.isfile(previous.final_checkpoint):
        raise FileNotFoundError(
            f"phase '{phase.name}' starts from phase '{previous.name}''s final checkpoint "
            f"{previous.final_checkpoint}, which does not exist: train phase '{previous.name}' first "
            f"(--phase {previous.name}), or run all phases"
        )


def run_phase(phase, *, resume=False):
    """Trains and evaluates one phase; records its results so a later run can skip it."""
    logger.info(f"===== phase '{phase.name}': training in {phase.output_dir} =====" if phase.name else
                f"===== training in {phase.output_dir} =====")
    if comm.is_main_process():
        os.makedirs(phase.output_dir, exist_ok=True)
        LazyConfig.save(phase.cfg, os.path.join(phase.output_dir, "config.yaml"))
    model = do_train(phase.cfg, resume=resume)
    results = do_test(phase.cfg, model)
    if comm.is_main_process():
        write_json_atomic(phase.done_file, {"final_checkpoint": phase.final_checkpoint,
                                            "input_checkpoint": checkpoint_identity(phase.cfg.train.init_checkpoint),
                                            "results": _plain(results)}, indent=2)
        log_phase_table([(phase.name or "final", results)])
    comm.synchronize()
    return results


def evaluate_phase(phase, checkpoint=None):
    """Evaluates a phase's final checkpoint (or ``checkpoint``: a path or a Detectron2 URL)."""
    checkpoint = checkpoint or phase.final_checkpoint
    if "://" not in checkpoint and not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"phase '{phase.name}': no checkpoint to evaluate at {checkpoint}")
    model = create_ddp_model(build_model(phase.cfg))
    DetectionCheckpointer(model).load(checkpoint)
    return do_test(phase.cfg, model)


def run_phases(cfg, *, resume=False, only=None, eval_only=False, eval_checkpoint=None):
    """Runs the config's phases in order; returns {name: results}.

    With ``eval_only`` each selected phase's final checkpoint is evaluated instead (phases not
    trained yet are skipped with a warning), or ``eval_checkpoint`` for a single selected phase.
    """
    phases = resolve_phases(cfg)
    chain_checkpoints(phases)
    all_results = OrderedDict()
    selected = select_phases(phases, only)
    if eval_only and eval_checkpoint and len(selected) > 1:
        raise ValueError(f"a checkpoint to evaluate ({eval_checkpoint}) needs one phase: add --phase NAME")
    for phase in selected:
        if eval_only:
            if eval_checkpoint is None and len(selected) > 1 and not os.path.isfile(phase.final_checkpoint):
                logger.warning(f"phase '{phase.name}' has no {FINAL_CHECKPOINT} yet: not evaluated")
                continue
            all_results[phase.name] = evaluate_phase(phase, eval_checkpoint)
            continue
        if phase.name and phase.is_done():
            logger.info(f"phase '{phase.name}' already finished ({phase.done_file}): skipping it")
            done = phase.load_done()
            if done.get("input_checkpoint") != checkpoint_identity(phase.cfg.train.init_checkpoint):
                logger.warning(f"phase '{phase.name}' was trained from another version of "
                               f"{phase.cfg.train.init_checkpoint} than the one there now; delete "
                               f"{phase.done_file} to train it again")
            all_results[phase.name] = done["results"]
            continue
        _require_init_checkpoint(phase, input_phase(phases, phases.index(phase)))
        all_results[phase.name] = run_phase(phase, resume=resume)
    if comm.is_main_process() and len(all_results) > 1:
        log_phase_table(list(all_results.items()), title="all phases")
    return all_results


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
