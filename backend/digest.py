"""sha256 of files, computed once per file version (models and checkpoints are 30-150 MB).

One helper for the whole project: model identity (backend.model_info), push-if-changed to
the phone (device.adb) and checkpoint provenance (conversion) all hash through it, so a
file is read once per (path, size, mtime) however many places ask.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path


def file_sha256(path: str | os.PathLike) -> str:
    """Lowercase hex sha256 of the file at `path`; raises OSError when it cannot be read.

    Cached by (resolved path, size, mtime in ns): a rewritten file is hashed again.
    """
    resolved = Path(path).resolve()
    st = resolved.stat()
    return _digest(str(resolved), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
