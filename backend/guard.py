"""An ASGI middleware that refuses hostile HTTP requests before the web app sees them.

It sits outermost, in front of Gradio, and checks every HTTP request:
- Host: only the names the server answers to (IP literals, localhost, and names the user
  allowed); any other name is what a DNS-rebinding page sends, so it is refused (421).
- Origin: a request from another origin is refused (403), so no foreign page can upload or
  run the model with the user's browser, and CORS headers only ever name the page's own origin.
- Body size: every route has a cap (413), counted on the bytes that arrive (a missing or
  false Content-Length does not help); uploads have their own larger cap and a file count.
- Body time: a body that stalls between chunks, or takes longer than a whole deadline, ends
  the request (408), so a half-sent request cannot hold memory and a connection forever.
- Disk: an upload must fit in the private temp folder's quota, counting the uploads still
  arriving (507); partial files of aborted uploads are removed.
- Blocked routes (monitoring, dev reload) answer 404.

Plain ASGI with no web framework imports; never imports gradio. Refusals are short
plain-text messages written for a person.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

log = logging.getLogger("metric3d.guard")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PARTIAL_UPLOAD_PREFIX = "tmp"  # tempfile.NamedTemporaryFile's prefix, which Gradio's upload parser uses


@dataclass(frozen=True)
class GuardPolicy:
    """Limits for every request. Sizes in bytes, times in seconds.

    allowed_names: host names (lower case, no port) accepted besides IP literals and
    "localhost"; None accepts any Host (a --share tunnel arrives under its own name).
    """

    allowed_names: frozenset[str] | None
    max_body_bytes: int
    max_upload_bytes: int
    max_upload_files: int
    body_idle_s: float
    body_deadline_s: float
    upload_deadline_s: float
    upload_path_suffix: str = "/upload"
    blocked_prefixes: tuple[str, ...] = ()


def host_allowed(host_header: str | None, allowed_names: frozenset[str] | None) -> bool:
    """Whether a Host header ("name[:port]", "[v6]:port") is one this server answers to."""
    if allowed_names is None:
        return True
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):
        name = host[1:].split("]", 1)[0]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost" or name in allowed_names:
        return True
    try:
        ipaddress.ip_address(name)
        return True  # an address literal cannot be rebound to another machine by DNS
    except ValueError:
        return False


def same_origin(origin: str | None, host_header: str | None) -> bool:
    """True when there is no Origin (not a browser cross-site call) or it is this page's own."""
    if origin is None:
        return True
    scheme, sep, rest = origin.strip().lower().partition("://")
    return bool(sep) and scheme in ("http", "https") and rest == (host_header or "").strip().lower()


class DiskQuota:
    """Bytes allowed in a folder (uploads, results, Gradio's cache), with uploads in flight reserved.

    `usage()` walks the folder (a few hundred files: ~1 ms); `reserve(n)` admits an upload only
    if what is on disk plus every reservation plus `n` fits in `max_bytes`.
    """

    def __init__(self, root: Path, max_bytes: int, upload_dir: Path | None = None, stale_after_s: float = 600.0):
        self.root, self.max_bytes = Path(root), max_bytes
        self.upload_dir = Path(upload_dir) if upload_dir is not None else None
        self.stale_after_s = stale_after_s
        self._reserved = 0
        self._uploads_in_flight = 0
        self._lock = threading.Lock()

    def usage(self) -> int:
        total = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_size
                except OSError:
                    pass  # removed meanwhile by the expiry sweep
        return total

    def reserve(self, n: int) -> bool:
        with self._lock:
            if self.usage() + self._reserved + n > self.max_bytes:
                return False
            self._reserved += n
            self._uploads_in_flight += 1
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self._reserved -= n
            self._uploads_in_flight -= 1
            idle = self._uploads_in_flight == 0
        self.remove_partial_uploads(all_orphans=idle)

    def remove_partial_uploads(self, all_orphans: bool) -> int:
        """Delete temp files that aborted uploads left at the top of the upload folder.

        With no upload in flight every such file is an orphan; otherwise only those older
        than `stale_after_s` (no upload may take that long) are. Returns how many went.
        """
        if self.upload_dir is None:
            return 0
        removed, now = 0, time.time()
        try:
            entries = list(os.scandir(self.upload_dir))
        except OSError:
            return 0
        for entry in entries:
            try:
                if (entry.name.startswith(PARTIAL_UPLOAD_PREFIX) and entry.is_file(follow_symlinks=False)
                        and (all_orphans or now - entry.stat(follow_symlinks=False).st_mtime > self.stale_after_s)):
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                pass
        return removed


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class RequestGuard:
    """ASGI middleware applying a GuardPolicy (and a DiskQuota to uploads) to every HTTP request."""

    def __init__(self, app: ASGIApp, policy: GuardPolicy, quota: DiskQuota | None = None):
        self.app, self.policy, self.quota = app, policy, quota
        self.refused = 0  # how many requests were refused, for tests and the log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            self._check_route_and_headers(scope, headers)
        except _Refused as refusal:
            await self._refuse(scope, send, refusal)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        await self._guarded_http(scope, headers, receive, send)

    def _check_route_and_headers(self, scope: Scope, headers: dict[str, str]) -> None:
        path = scope.get("path", "")
        if any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.policy.blocked_prefixes):
            raise _Refused(404, "Not found.")
        host = headers.get("host")
        if not host_allowed(host, self.policy.allowed_names):
            raise _Refused(421, f"This server does not answer to the name {host!r}. If you meant to reach it "
                                "under that name, start it with --allowed-host NAME.")
        if not same_origin(headers.get("origin"), host):
            raise _Refused(403, "Requests from other web sites are refused; open the demo's own page instead.")

    async def _guarded_http(self, scope: Scope, headers: dict[str, str], receive: Receive, send: Send) -> None:
        policy = self.policy
        upload = scope.get("method") == "POST" and scope.get("path", "").endswith(policy.upload_path_suffix)
        limit = policy.max_upload_bytes if upload else policy.max_body_bytes
        deadline_s = policy.upload_deadline_s if upload else policy.body_deadline_s
        declared = headers.get("content-length")
        try:
            declared_n = int(declared) if declared is not None else None
        except ValueError:
            declared_n = -1
        if declared_n is not None and (declared_n < 0 or declared_n > limit):
            await self._refuse(scope, send, _Refused(413, _too_large(upload, limit)))
            return
        reserved = 0
        if upload and self.quota is not None:
            reserved = declared_n if declared_n is not None else limit
            if not self.quota.reserve(reserved):
                await self._refuse(scope, send, _Refused(
                    507, "The server's space for uploads is full right now; please try again in a few minutes."))
                return
        body = _BodyMeter(receive, limit, policy.body_idle_s, time.monotonic() + deadline_s,
                          _boundary(headers.get("content-type", "")) if upload else None, policy.max_upload_files)
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                if body.problem is not None:
                    return  # the app answers a body we cut off; our refusal goes out instead
                started = True
            elif not started and body.problem is not None:
                return
            await send(message)

        try:
            await self.app(scope, body.receive, tracked_send)
        except Exception:
            if body.problem is None and not body.client_gone:
                raise
            # the app failed on a body we cut off, or whose client went away mid-way (Starlette's
            # ClientDisconnect): nothing to report; our refusal, if any, explains it to the client
        finally:
            if upload and self.quota is not None:
                self.quota.release(reserved)
        if body.problem is not None and not started:
            await self._refuse(scope, send, body.problem)

    async def _refuse(self, scope: Scope, send: Send, refusal: _Refused) -> None:
        self.refused += 1
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        data = (refusal.message + "\n").encode()
        await send({"type": "http.response.start", "status": refusal.status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(data)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": data})


def _too_large(upload: bool, limit: int) -> str:
    what = "An upload" if upload else "A request body"
    return f"{what} may be at most {limit / 2**20:.1f} MiB; this one is larger."


def _boundary(content_type: str) -> bytes | None:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "boundary" and value:
            return value.strip('"').encode("latin-1")
    return None


class _BodyMeter:
    """Wraps `receive`: counts body bytes and multipart parts, and enforces the body's timing.

    On a violation it records `problem` and hands the app an http.disconnect, so the app
    stops reading; the guard then answers with the refusal instead of the app's reply.
    """

    def __init__(self, receive: Receive, limit: int, idle_s: float, deadline: float, boundary: bytes | None,
                 max_parts: int):
        self._receive, self._limit, self._idle_s, self._deadline = receive, limit, idle_s, deadline
        self._delimiter = b"--" + boundary if boundary else None
        self._max_parts, self._parts, self._tail = max_parts, 0, b""
        self._count, self._done = 0, False
        self.problem: _Refused | None = None
        self.client_gone = False

    async def receive(self) -> Message:
        if self._done or self.problem is not None:
            if self.problem is not None:
                return {"type": "http.disconnect"}
            return await self._receive()
        wait = min(self._idle_s, self._deadline - time.monotonic())
        try:
            if wait <= 0:
                raise asyncio.TimeoutError
            message = await asyncio.wait_for(self._receive(), wait)
        except asyncio.TimeoutError:
            self.problem = _Refused(408, "The request body arrived too slowly and was cut off; please send it again.")
            return {"type": "http.disconnect"}
        if message["type"] != "http.request":
            self.client_gone = message["type"] == "http.disconnect"
            return message
        chunk = message.get("body", b"")
        self._count += len(chunk)
        if self._count > self._limit:
            self.problem = _Refused(413, _too_large(self._delimiter is not None, self._limit))
            return {"type": "http.disconnect"}
        if self._delimiter is not None:
            window = self._tail + chunk
            self._parts += window.count(self._delimiter)
            self._tail = window[-(len(self._delimiter) - 1):] if len(self._delimiter) > 1 else b""
            if self._parts - 1 > self._max_parts:  # the closing delimiter also counts once
                self.problem = _Refused(413, f"One upload may carry at most {self._max_parts} files.")
                return {"type": "http.disconnect"}
        if not message.get("more_body", False):
            self._done = True
        return message
