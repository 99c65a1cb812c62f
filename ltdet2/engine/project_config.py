"""A project's config: its phases' namespaces (:func:`make_phase`), and loading it with command-line overrides
(:func:`load_config`), its structure checked.

A project config holds two keys at its root: ``phases``, an ordered mapping from phase name to a
config namespace with the usual ``model``, ``dataloader``, ``optimizer``, ``lr_multiplier`` and
``train`` keys, and ``train``, the run's own: ``train.output_dir`` (phase ``NAME`` trains in
``<train.output_dir>/NAME``) and what Detectron2's ``default_setup`` reads (``seed``,
``cudnn_benchmark``). Nothing else of the root ``train`` reaches a phase: each phase has its own
complete ``train``. An override ``key=value`` applies to the root and to every phase,
``phases.NAME.key=value`` to one phase (after the others, so it wins). A config without ``phases`` is one phase
trained in ``train.output_dir`` itself (a one-phase project is such a plain config); Detectron2's script refuses a
project with phases: its root has no ``model``.
"""

import copy
import difflib
import os
import re
from dataclasses import dataclass

from omegaconf import DictConfig, ListConfig, OmegaConf

from detectron2.config import LazyConfig

__all__ = [
    "PHASE_KEYS",
    "PROJECT_ROOT_KEYS",
    "make_phase",
    "Override",
    "has_key",
    "load_config",
    "yacs_config_problem",
]

PHASE_KEYS = ("model", "dataloader", "optimizer", "lr_multiplier", "train")
PROJECT_ROOT_KEYS = ("train", "phases")


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


# a YAML file's top-level keys (a line starting with a key and a colon)
_TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:", re.MULTILINE)


def yacs_config_problem(config_file):
    """The one-line message for a YAML (yacs) config given where a LazyConfig is loaded (Detectron2's ``CfgNode``
    files: top-level keys in upper case, ``MODEL:``, ``SOLVER:``, or a ``_BASE_:``), or None: a ``.py`` file, a
    LazyConfig's ``config.yaml`` dump (lower-case top-level keys: ``model``, ``train``, ...), a file that does not
    exist (left to the loader)."""
    if os.path.splitext(str(config_file))[1].lower() not in (".yaml", ".yml") or not os.path.isfile(config_file):
        return None
    try:
        with open(config_file, encoding="utf-8") as f:
            keys = list(dict.fromkeys(_TOP_LEVEL_KEY.findall(f.read())))
    except (OSError, UnicodeDecodeError):
        return None
    if not keys or not ("_BASE_" in keys or all(key.upper() == key for key in keys)):
        return None
    listed = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
    return (
        f"{config_file} is a YAML (yacs) config (top-level keys {listed}), not a LazyConfig: "
        f"scripts/lazyconfig_train_net.py trains LazyConfigs (a .py file, or the config.yaml a LazyConfig run saved); "
        f"train it with scripts/train_net.py --config-file {config_file}"
    )


def load_config(config_file, overrides=()):
    """Loads a (project) config and applies overrides; general ones apply to every phase too.

    An override must name an existing key (``+key=value`` adds one): a general override changes the
    root ``train`` and every phase that hold the key, ``phases.NAME.key=value`` one phase (after the
    general ones, so it wins). Mistyped keys and phase names are refused with the closest names. A YAML (yacs)
    config is refused, naming the script that trains it (:func:`yacs_config_problem`); a LazyConfig's config.yaml
    dump loads."""
    problem = yacs_config_problem(config_file)
    if problem:
        raise ValueError(problem)
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
