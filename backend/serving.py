"""How the demo is served: request limits, private temp folders, and exposure warnings.

Kept out of app.py so the numbers live in one place (docs/operations.md explains them)
and the pure parts can be tested without starting a server. Never imports gradio.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
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
# Depth requests waiting beyond this are refused at once ("queue is full") instead of waiting
# minutes: at ~0.5-2 s per request, 32 waiting is already a minute of backlog. The cap is per
# pool: the page's cheap calls have their own pools and are never refused because depth
# runs fill this one.
QUEUE_MAX_SIZE = 32
LIGHT_QUEUE_MAX_SIZE = 64
# One browser session (or API client: gradio_client uses one session for all its calls) may
# have this many depth requests queued or running, and this many events of any kind: enough
# for a client that sends a few requests in parallel, a quarter of the depth queue at most.
SESSION_MAX_DEPTH_EVENTS = 8
SESSION_MAX_EVENTS = 16
# Gradio keeps each session's last input values and gr.State (the depth map for measuring,
# ~0.8 MB); it forgets the least recently used sessions beyond this many.
SESSION_CAPACITY = 100

# Request bodies: uploads (one photo per request, plus multipart overhead) and everything
# else (JSON of the API and the page: file references and numbers, never file contents).
MAX_UPLOAD_FILES = 4
MAX_UPLOAD_REQUEST_BYTES = MAX_UPLOAD_BYTES + 1024 * 1024
MAX_BODY_BYTES = 256 * 1024
# A body whose next chunk takes longer than BODY_IDLE_S, or that is not complete within its
# deadline, is cut off (50 MiB in 300 s is ~170 KB/s, slower than any USB or Wi-Fi link).
BODY_IDLE_S = 15.0
BODY_DEADLINE_S = 30.0
UPLOAD_DEADLINE_S = 300.0
# The private temp folder (uploads, results, Gradio's cached copies) may hold this much.
DISK_QUOTA_BYTES = 1024 * 1024 * 1024
# Routes nobody needs from this demo: Gradio's monitoring dashboard (every user's calls and
# timings) and its dev-mode reload stream.
BLOCKED_ROUTES = ("/monitoring", "/gradio_api/monitoring", "/gradio_api/dev/reload")

# Connections (uvicorn): an idle keep-alive connection closes after KEEP_ALIVE_S; request
# headers must be complete within HEADER_TIMEOUT_S of the connection (or of the previous
# response); beyond MAX_IDLE_CONNECTIONS the oldest connections without a request in progress
# are closed at once (twice a second); a request arriving while MAX_CONNECTIONS are open
# gets 503 (uvicorn's limit_concurrency, a safety net far above what the page needs).
KEEP_ALIVE_S = 5
HEADER_TIMEOUT_S = 10.0
MAX_IDLE_CONNECTIONS = 100
MAX_CONNECTIONS = 1000
MAX_HEADER_BYTES = 16 * 1024
LISTEN_BACKLOG = 256
# At most LOG_BURST lines per logger and message per LOG_WINDOW_S; the rest are counted.
LOG_BURST = 20
LOG_WINDOW_S = 10.0

# Result files (ours and Gradio's cached copies) live this long after they were made.
DEFAULT_RESULT_MAX_AGE_S = 3600
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")
_HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
# An absolute path of two or more parts (/home/x/..., C:\\x\\...); only its last part is shown.
_ABS_PATH = re.compile(r"(?<![\w.:/…])(?:/[\w.@+-]+){2,}/?|[A-Za-z]:\\(?:[\w.@+ -]+\\)+[\w.@+ -]*")
MAX_PUBLIC_MESSAGE_CHARS = 600


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


def host_name(value: str) -> str:
    """A --allowed-host value, lower-cased; raises ValueError unless it is a DNS name."""
    name = value.strip().lower().rstrip(".")
    if not _HOST_NAME.match(name) or len(name) > 253:
        raise ValueError(f"{value!r} is not a host name (letters, digits, '-' and '.')")
    return name


def allowed_host_names(bind: str, extra: list[str] | tuple[str, ...] = ()) -> frozenset[str]:
    """Names (besides IP literals and localhost) the server answers to: the bound name, if it is
    one, and those the user allowed. Anything else in a Host header is refused (DNS rebinding)."""
    names = {host_name(n) for n in extra}
    if bind not in LOOPBACK_HOSTS and bind not in _WILDCARD_HOSTS:
        try:
            names.add(host_name(bind))
        except ValueError:
            pass  # an IP literal, accepted anyway
    return frozenset(names)


def public_text(text: str, limit: int | None = MAX_PUBLIC_MESSAGE_CHARS) -> str:
    """A message safe to show to any user: no terminal colour codes, no absolute server paths
    (only their last part is kept), at most `limit` characters (None: no limit)."""
    text = _ANSI.sub("", str(text))
    text = _ABS_PATH.sub(lambda m: "…/" + m.group(0).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1], text)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    return text


def public_data(value: object) -> object:
    """`value` (JSON-ready: dicts, lists, strings, numbers) with public_text applied to every string."""
    if isinstance(value, str):
        return public_text(value, limit=None)
    if isinstance(value, dict):
        return {k: public_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [public_data(v) for v in value]
    return value


class RateLimitedLog(logging.Filter):
    """A handler filter: at most `burst` records per (logger, message template) per `window_s`.

    What is dropped is counted and reported on the next record that passes, so a flood of
    refused or broken connections cannot fill the disk with log lines (measured: ~20,000
    half-sent requests once wrote 32 MB in 18 s).
    """

    def __init__(self, burst: int = LOG_BURST, window_s: float = LOG_WINDOW_S, clock=time.monotonic):
        super().__init__()
        self.burst, self.window_s, self._clock = burst, window_s, clock
        self._windows: dict[tuple[str, str], list] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg)[:200])
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.window_s:
                dropped = window[2] if window is not None else 0
                if len(self._windows) > 1000:
                    self._windows.clear()
                window = self._windows[key] = [now, 0, 0]
                if dropped:
                    record.msg = f"{record.msg} [{dropped} more like this in the previous {self.window_s:g} s]"
            if window[1] >= self.burst:
                window[2] += 1
                return False
            window[1] += 1
            return True
