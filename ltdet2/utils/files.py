"""Which version of a file produced something (a checkpoint, a dataset json, a score table)."""

import hashlib
import os
import threading

__all__ = ["file_identity", "content_identity"]


def file_identity(path):
    """JSON-able identity of a local file's version: absolute path, size and modification time; None for URLs
    (``scheme://...``) or missing files. Records (phase_done.json, derived datasets, score tables) store it to
    tell whether their input changed since."""
    if not path or "://" in str(path) or not os.path.isfile(path):
        return None
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime": stat.st_mtime}


_DIGESTS: dict = {}
_DIGESTS_LOCK = threading.Lock()
_DIGESTS_MAX = 64
_CHUNK = 1 << 22


def content_identity(path):
    """JSON-able identity of a local file's content, wherever it lies: its size and the SHA-1 of its bytes; None
    for URLs (``scheme://...``) or missing files. Unlike :func:`file_identity` it holds no path and no time: a copy
    or a move of the file (a run folder moved elsewhere) keeps it, a rewrite with other bytes changes it (even with
    the same size and modification time). The digest reads the whole file once per version of it (path, size,
    modification and change times, inode) in a process, for a cache that saves far more (e.g. a score table's
    model checkpoint)."""
    if not path or "://" in str(path) or not os.path.isfile(path):
        return None
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    with _DIGESTS_LOCK:
        digest = _DIGESTS.get(key)
    if digest is None:
        sha1 = hashlib.sha1(usedforsecurity=False)
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                sha1.update(chunk)
        digest = sha1.hexdigest()
        with _DIGESTS_LOCK:
            if len(_DIGESTS) >= _DIGESTS_MAX:
                _DIGESTS.pop(next(iter(_DIGESTS)))
            _DIGESTS[key] = digest
    return {"size": stat.st_size, "sha1": digest}
