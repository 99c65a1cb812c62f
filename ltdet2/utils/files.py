"""Which version of a file produced something (a checkpoint, a dataset json, a score table)."""

import os

__all__ = ["file_identity"]


def file_identity(path):
    """JSON-able identity of a local file's version: absolute path, size and modification time; None for URLs
    (``scheme://...``) or missing files. Records (phase_done.json, derived datasets, score tables) store it to
    tell whether their input changed since."""
    if not path or "://" in str(path) or not os.path.isfile(path):
        return None
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime": stat.st_mtime}
