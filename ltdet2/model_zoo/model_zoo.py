"""The config files shipped with ltdet2, by name (see :mod:`ltdet2.model_zoo`)."""

import difflib
import glob
import os

from detectron2.config import LazyConfig

# The repository's projects/ and configs/ as shipped with the package: in a checkout (and an editable install), the
# symlinks configs/projects -> <repo>/projects and configs/configs -> <repo>/configs; in a wheel, copies of the files
# (pyproject.toml's package-data). Either way a project's relative imports (``from ..configs.loce import ...``)
# resolve, as LazyConfig resolves them from the file's path.
_CONFIG_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
_FOLDERS = ("projects", "configs")
_EXTENSIONS = (".py", ".yaml", ".yml")


def _shipped_files():
    """Paths of the shipped config files relative to the config root, "/"-separated and sorted."""
    found = []
    for folder in _FOLDERS:
        for path in glob.glob(os.path.join(_CONFIG_ROOT, folder, "**", "*"), recursive=True):
            if path.endswith(_EXTENSIONS) and os.path.isfile(path):
                found.append(os.path.relpath(path, _CONFIG_ROOT).replace(os.sep, "/"))
    return sorted(found)


def list_configs():
    """
    The names :func:`get_config_file` accepts (:func:`get_config`: the ``.py`` ones), e.g. ``["baseline.py", ...,
    "configs/models/mask_rcnn_r50_fpn.py", ...]``: the projects by their bare names, then the other config files by
    their paths from the repository root.
    """
    files = _shipped_files()
    projects = [f[len("projects/") :] for f in files if f.startswith("projects/") and f.count("/") == 1]
    return projects + [f for f in files if not f.startswith("projects/") or f.count("/") > 1]


def _relative_path(config_path):
    """``config_path`` as a "/"-separated path from the config root (bare names: files of projects/), or None when
    it leads outside the shipped folders."""
    path = str(config_path).replace("\\", "/")
    if path.split("/", 1)[0] not in _FOLDERS:
        path = f"projects/{path}"
    path = os.path.normpath(path).replace(os.sep, "/")
    return path if path.split("/", 1)[0] in _FOLDERS else None


def get_config_file(config_path):
    """
    Returns the path to a config file shipped with ltdet2.

    Args:
        config_path (str): a project's name, e.g. ``"loce.py"`` (a file of the repository's ``projects/``), or a
            path from the repository root, e.g. ``"projects/lst.py"`` or ``"configs/models/mask_rcnn_r50_fpn.py"``.

    Returns:
        str: the path to the file inside the installed package (its relative imports resolve from there).

    Raises:
        FileNotFoundError: no such config; the message lists the closest names and every available one.
    """
    path = _relative_path(config_path)
    if path is not None and path.endswith(_EXTENSIONS):
        cfg_file = os.path.join(_CONFIG_ROOT, *path.split("/"))
        if os.path.isfile(cfg_file):
            return cfg_file
    available = list_configs()
    spellings = available + [f"projects/{name}" for name in available if "/" not in name]
    close = difflib.get_close_matches(str(config_path), spellings, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise FileNotFoundError(
        f"{config_path!r} is not a config shipped with ltdet2 (bare names are files of projects/).{hint} Available: "
        f"{', '.join(available)}"
    )


def get_config(config_path, trained=False):
    """
    Returns the config of a project (or of a config piece) shipped with ltdet2, loaded from any working directory.

    Args:
        config_path (str): see :func:`get_config_file`, e.g. ``"loce.py"``.
        trained (bool): ltdet2 hosts no trained checkpoints, so True raises :class:`NotImplementedError`.

    Returns:
        omegaconf.DictConfig: what :meth:`LazyConfig.load` returns, e.g. ``train`` and ``phases`` for a
        multi-phase project, ``model`` for ``"configs/models/mask_rcnn_r50_fpn.py"``.
    """
    cfg_file = get_config_file(config_path)
    if trained:
        raise NotImplementedError(
            f"get_config({config_path!r}, trained=True): ltdet2 hosts no trained checkpoints; load the config with "
            "trained=False and set train.init_checkpoint (a phase's, in a project) to weights you trained"
        )
    if not cfg_file.endswith(".py"):
        raise ValueError(
            f"get_config({config_path!r}) loads LazyConfig (.py) files; get_config_file gives the path of this one"
        )
    return LazyConfig.load(cfg_file)
