"""Reading JSON with errors that name the file, and writing it atomically."""

import json
import os

from iopath.common.file_io import PathManager as _PathManagerFactory

__all__ = ["read_json", "write_json_atomic"]

_local_files = _PathManagerFactory()


def read_json(path, what: str = "JSON"):
    """The parsed content of ``path``; ``what`` names the file's role in error messages.

    Raises:
        FileNotFoundError: ``"<what> file not found: <path>"``.
        ValueError: ``"<what> file <path> is not valid JSON: <parser message>"`` (truncated or
            malformed content, with the line and column of the error; or not UTF-8 text).
    """
    path = os.fspath(path)
    if not _local_files.exists(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with _local_files.open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} file {path} is not valid JSON: {e}") from e


def write_json_atomic(path, obj, **dump_kwargs) -> None:
    """Writes ``obj`` to ``path`` through a temporary file and a rename, so a reader (or a run killed
    mid-write) never sees a half-written file. ``dump_kwargs`` go to :func:`json.dump`."""
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, **dump_kwargs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
