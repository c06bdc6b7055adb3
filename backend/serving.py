"""How the demo is served: request limits, private temp folders, and exposure warnings.

Kept out of app.py so the numbers live in one place (docs/operations.md explains them)
and the pure parts can be tested without starting a server. Never imports gradio.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from backend.imageio import DEFAULT_MAX_BYTES

# Uploads larger than this are refused by the web server before they reach the decoder
# (the decoder enforces the same number for files that arrive another way).
MAX_UPLOAD_BYTES = DEFAULT_MAX_BYTES

# Depth requests (UI button and /predict) share one pool of this many workers. The host
# engine and the phone runner each run one inference at a time anyway; a second worker
# overlaps one request's decode and post-processing with another's inference, and more
# would only split two CPU cores further.
DEPTH_CONCURRENCY = 2
DEPTH_POOL = "depth"
# Cheap handlers (filling in intrinsics, measuring, status) never wait behind depth runs.
LIGHT_CONCURRENCY = 8
# Requests waiting beyond this are refused at once ("queue is full") instead of waiting
# minutes: at ~0.5-2 s per request, 32 waiting is already a minute of backlog.
QUEUE_MAX_SIZE = 32

# Result files (ours and Gradio's cached copies) live this long after they were made.
DEFAULT_RESULT_MAX_AGE_S = 3600
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def cache_schedule(max_age_s: int) -> tuple[int, int]:
    """Gradio's delete_cache=(how often to sweep, how old a file must be) for a maximum age."""
    if max_age_s < 1:
        raise ValueError(f"the result lifetime must be at least 1 s, got {max_age_s}")
    return max(1, min(600, max_age_s // 4)), max_age_s


def make_private_dir(parent: str | os.PathLike | None = None) -> Path:
    """A fresh per-process folder only this user can read (mode 0700), for uploads and results."""
    path = Path(tempfile.mkdtemp(prefix="metric3d-app-", dir=parent))
    path.chmod(0o700)
    return path


def private_subdir(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def remove_private_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def exposure_warnings(host: str, share: bool) -> list[str]:
    """What a person must know before the demo is reachable by others (printed at start)."""
    warnings = []
    if host not in LOOPBACK_HOSTS:
        warnings.append(
            f"WARNING: listening on {host}, not only on this computer: anyone who can reach this address "
            "on your network can upload photos and run the model on this machine (and on an attached phone).")
    if share:
        warnings.append(
            "WARNING: --share creates a PUBLIC internet link. Anyone with the link can upload photos and run "
            "the model on this machine and on an attached phone, for as long as the app runs. "
            "Stop the app (Ctrl+C) to close the link.")
    return warnings
