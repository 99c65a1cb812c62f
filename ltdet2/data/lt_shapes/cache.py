"""The dataset cache: one generated folder per (seed, spec), made on first use and reused afterwards."""

import logging
import os

from iopath.common.file_io import file_lock

from . import build
from .spec import LTShapesSpec, spec_hash

__all__ = ["default_root", "get_lt_shapes"]

logger = logging.getLogger(__name__)


def default_root(seed: int = 0, spec: LTShapesSpec | None = None) -> str:
    """``$LTDET2_DATASETS/lt_shapes_seed{seed}`` (default ``~/.cache/ltdet2/datasets``); a
    non-default spec gets a ``_{hash}`` suffix."""
    base = os.path.expanduser(os.environ.get("LTDET2_DATASETS", os.path.join("~", ".cache", "ltdet2", "datasets")))
    name = f"lt_shapes_seed{seed}"
    if spec is not None and spec != LTShapesSpec():
        name += "_" + spec_hash(spec, seed)[:8]
    return os.path.join(base, name)


def get_lt_shapes(root: str | None = None, seed: int = 0, spec: LTShapesSpec | None = None) -> dict:
    """Paths of an LT-Shapes dataset (:func:`build.dataset_paths`), generating it on first use.

    Args:
        root: the dataset folder; default :func:`default_root` (``$LTDET2_DATASETS/lt_shapes_seed{seed}``).
    A folder without a matching ``DONE`` marker (interrupted, other seed/spec) is regenerated.
    Concurrent callers (e.g. several ranks) are serialised by a file lock ``<root>/DONE.lock``.
    """
    spec = spec or LTShapesSpec()
    paths = build.dataset_paths(os.path.expanduser(root or default_root(seed, spec)))
    if build.is_complete(paths["root"], seed, spec):
        return paths
    with file_lock(paths["done"]):
        if not build.is_complete(paths["root"], seed, spec):
            logger.info("LT-Shapes (seed %d) not found complete in %s; generating it", seed, paths["root"])
            build.generate(paths["root"], seed, spec)
    return paths
