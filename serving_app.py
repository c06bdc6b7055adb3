"""Serve the Gradio demo so that hostile local clients cannot exhaust it.

The Gradio-specific glue for backend/serving.py's limits and backend/guard.py's request
guard (app.py calls `serve`):
- The demo is mounted on a FastAPI app (`gr.mount_gradio_app`) that runs under our own
  uvicorn server, so the connection settings are ours: keep-alive timeout, a cap on
  connections (503 beyond it), a header-size cap, a larger listen backlog, and a watchdog
  that closes connections whose request headers do not arrive in time and keeps at most
  MAX_IDLE_CONNECTIONS without a request (uvicorn has no header timeout; ~20,000 half-sent
  requests otherwise use up the file descriptors).
- RequestGuard wraps everything: Host and Origin checks, body caps and deadlines, upload
  file count and disk quota, and 404 for the monitoring and dev-reload routes.
- The queue is fair: per-session limits and per-pool caps instead of one global size, so one
  client cannot fill it and the page's cheap calls are never refused because depth runs wait.
- Every Number and Slider input is checked (backend.fields) before Gradio passes it on.
- Log records go through a rate limit.
`--share` needs Gradio's own launch (its tunnel); then the guard runs inside Gradio's app
(without the Host check, since the tunnel has its own name) and uvicorn's settings are Gradio's.
"""
from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import uvicorn
from fastapi import FastAPI
from gradio import route_utils
from starlette.middleware import Middleware

from backend import serving
from backend.fields import FieldError, number
from backend.guard import DiskQuota, GuardPolicy, RequestGuard

log = logging.getLogger("metric3d.serving")
WATCH_INTERVAL_S = 0.5


@dataclass(frozen=True)
class ServeOptions:
    host: str
    port: int
    share: bool
    allowed_hosts: tuple[str, ...]
    private_dir: Path  # the per-process temp folder (uploads, results, Gradio's cache): the quota covers it
    upload_dir: Path  # where Gradio's upload parser writes (GRADIO_TEMP_DIR)
    disk_quota_bytes: int = serving.DISK_QUOTA_BYTES


def install_log_limit() -> serving.RateLimitedLog:
    """Rate-limit every handler of the root logger (uvicorn and asyncio log through it here)."""
    limit = serving.RateLimitedLog()
    for handler in logging.getLogger().handlers:
        handler.addFilter(limit)
    return limit


def check_number_inputs(demo: gr.Blocks) -> int:
    """Check every Number and Slider payload with backend.fields before Gradio's preprocess.

    Gradio passes strings, lists and 400-digit integers through to the handler (or fails
    inside its own bound check with a message that names no field). Returns how many
    components are checked.
    """
    checked = 0
    for block in demo.blocks.values():
        if isinstance(block, (gr.Number, gr.Slider)):
            _check_payload(block)
            checked += 1
    return checked


def _check_payload(component: gr.Number | gr.Slider) -> None:
    original = component.preprocess
    name = component.label or "A number field"
    optional = isinstance(component, gr.Number)

    def preprocess(payload: Any):
        try:
            value = number(name, payload, minimum=component.minimum, maximum=component.maximum, optional=optional)
        except FieldError as exc:
            raise gr.Error(str(exc), title="Please check the fields", print_exception=False) from None
        return original(value)

    component.preprocess = preprocess  # type: ignore[method-assign]


def make_queue_fair(demo: gr.Blocks) -> None:
    """Admission to the queue per session and per pool instead of Gradio's one global size.

    A session may have SESSION_MAX_EVENTS events queued or running, SESSION_MAX_DEPTH_EVENTS
    of them depth runs; the depth pool holds QUEUE_MAX_SIZE waiting, every other pool
    LIGHT_QUEUE_MAX_SIZE. Refusals are Gradio's "queue_full" answer (HTTP 503) with our text.
    """
    queue = demo._queue
    original = queue.push

    async def push(body, request, username):
        try:
            fn = route_utils.get_fn(demo, None, body)
        except Exception:  # noqa: BLE001 - Gradio's own push reports a bad function index
            return await original(body, request, username)
        depth = fn.concurrency_id == serving.DEPTH_POOL
        pending = [queue.event_ids_to_events.get(i) for i in queue.pending_event_ids_session.get(body.session_hash, ())]
        pending = [e for e in pending if e is not None]
        if len(pending) >= serving.SESSION_MAX_EVENTS or (
                depth and sum(e.concurrency_id == serving.DEPTH_POOL for e in pending) >= serving.SESSION_MAX_DEPTH_EVENTS):
            return False, ("This session already has requests waiting or running; please wait for them to "
                           "finish before sending more."), "queue_full"
        waiting = queue.event_queue_per_concurrency_id.get(fn.concurrency_id)
        cap = serving.QUEUE_MAX_SIZE if depth else serving.LIGHT_QUEUE_MAX_SIZE
        if waiting is not None and len(waiting.queue) >= cap:
            return False, (f"The server is busy ({len(waiting.queue)} requests waiting); please try again in a "
                           "minute."), "queue_full"
        return await original(body, request, username)

    queue.push = push  # type: ignore[method-assign]


def harden(demo: gr.Blocks) -> None:
    """Queue, session memory and field checks; call once the page is built, before serving."""
    demo.queue(default_concurrency_limit=serving.DEPTH_CONCURRENCY, max_size=None)
    demo.state_session_capacity = serving.SESSION_CAPACITY
    check_number_inputs(demo)
    make_queue_fair(demo)


def guard_for(options: ServeOptions) -> tuple[GuardPolicy, DiskQuota]:
    names = None if options.share else serving.allowed_host_names(options.host, options.allowed_hosts)
    policy = GuardPolicy(
        allowed_names=names, max_body_bytes=serving.MAX_BODY_BYTES,
        max_upload_bytes=serving.MAX_UPLOAD_REQUEST_BYTES, max_upload_files=serving.MAX_UPLOAD_FILES,
        body_idle_s=serving.BODY_IDLE_S, body_deadline_s=serving.BODY_DEADLINE_S,
        upload_deadline_s=serving.UPLOAD_DEADLINE_S, blocked_prefixes=serving.BLOCKED_ROUTES)
    quota = DiskQuota(options.private_dir, options.disk_quota_bytes, options.upload_dir,
                      stale_after_s=serving.UPLOAD_DEADLINE_S + 60)
    return policy, quota


def gradio_launch_guard(policy: GuardPolicy, quota: DiskQuota | None) -> dict[str, Any]:
    """demo.launch() arguments that put the guard inside Gradio's own app (the --share path):
    it then runs after Gradio's CORS middleware, which answers preflights itself."""
    return {"enable_monitoring": False, "ssr_mode": False,
            "app_kwargs": {"middleware": [Middleware(RequestGuard, policy=policy, quota=quota)]}}


def serve(demo: gr.Blocks, options: ServeOptions, on_ready: Callable[[str, str | None], None],
          **gradio_options: Any) -> None:
    """Serve until Ctrl+C or SIGTERM (raised as KeyboardInterrupt). `on_ready(url, share_url)`
    is called once the server listens; `gradio_options` are the launch/mount settings both
    paths share (theme, css, js, allowed_paths, max_file_size, show_error: mount_gradio_app
    replaces the page's css/js with its own arguments, so they are given here)."""
    harden(demo)
    policy, quota = guard_for(options)
    if options.share:
        _, url, share_url = demo.launch(server_name=options.host, server_port=options.port, share=True, quiet=True,
                                        prevent_thread_lock=True, **gradio_launch_guard(policy, quota),
                                        **gradio_options)
        on_ready(url, share_url)
        demo.block_thread()
        return
    root = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    gr.mount_gradio_app(root, demo, path="/", server_name=options.host, server_port=options.port,
                        enable_monitoring=False, ssr_mode=False, **gradio_options)
    config = uvicorn.Config(
        RequestGuard(root, policy, quota), host=options.host, port=options.port, log_config=None, access_log=False,
        server_header=False, timeout_keep_alive=serving.KEEP_ALIVE_S, limit_concurrency=serving.MAX_CONNECTIONS,
        backlog=serving.LISTEN_BACKLOG, h11_max_incomplete_event_size=serving.MAX_HEADER_BYTES, http="h11",
        ws="none")
    server = uvicorn.Server(config)
    _raise_file_limit()
    shown = f"[{options.host}]" if ":" in options.host else options.host
    asyncio.run(_serve_with_watchdog(server, lambda: on_ready(f"http://{shown}:{options.port}/", None)))


def _raise_file_limit(wanted: int = 65536) -> None:
    """Use the hard limit on open files (often 1024 soft): a burst of connections then waits
    for the watchdog instead of stopping accept() with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def _serve_with_watchdog(server: uvicorn.Server, on_started: Callable[[], None]) -> None:
    watchdog = asyncio.create_task(watch_connections(server))
    announce = asyncio.create_task(_when_started(server, on_started))
    try:
        await server.serve()
    finally:
        watchdog.cancel()
        announce.cancel()


async def _when_started(server: uvicorn.Server, on_started: Callable[[], None]) -> None:
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.05)
    on_started()


async def watch_connections(server: uvicorn.Server, header_timeout_s: float = serving.HEADER_TIMEOUT_S,
                            max_idle: int = serving.MAX_IDLE_CONNECTIONS) -> None:
    """Close connections that have no request in progress for longer than `header_timeout_s`
    (half-sent headers, or silence after the last response), and, beyond `max_idle` such
    connections, the longest-idle ones at once. A request in progress is never cut here (the
    guard bounds its body; its response may stream for as long as it runs)."""
    idle_since: dict[int, tuple[int, float]] = {}
    while not server.should_exit:
        await asyncio.sleep(WATCH_INTERVAL_S)
        now = time.monotonic()
        connections = list(server.server_state.connections)
        idle = []
        for protocol in connections:
            cycle = getattr(protocol, "cycle", None)
            if cycle is not None and not cycle.response_complete:
                idle_since.pop(id(protocol), None)
                continue
            seen = idle_since.get(id(protocol))
            if seen is None or seen[0] != id(cycle):
                seen = idle_since[id(protocol)] = (id(cycle), now)
            idle.append((seen[1], protocol))
        live = {id(p) for p in connections}
        for key in [k for k in idle_since if k not in live]:
            del idle_since[key]
        idle.sort(key=lambda item: item[0])
        excess = len(idle) - max_idle
        closed = 0
        for rank, (since, protocol) in enumerate(idle):
            if rank < excess or now - since > header_timeout_s:
                transport = getattr(protocol, "transport", None)
                if transport is not None and not transport.is_closing():
                    transport.close()
                    closed += 1
        if closed:
            log.warning("closed %d connections without a complete request (of %d open)", closed, len(connections))
