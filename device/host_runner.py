"""Start the host build of the runner on a fresh socket and talk to it (tests, benchmarks).

The host runner is the same C program as on the phone, so this is how the protocol, the
fault handling and the numerics are checked without a device.
"""
from __future__ import annotations

import os
import selectors
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from device.build import build_host, wheel_litert_library
from device.protocol import (
    DEFAULT_MEAN, DEFAULT_STD, RUNNER_VERSION, RunnerClient, RunnerError, build_runner_args, new_socket_name,
    new_token, parse_ready_line, write_token_file,
)

BACKLOG_RETRY_S = 0.02


@dataclass
class LaunchedRunner:
    """A running host runner: its process, where it listens and the session token."""

    proc: subprocess.Popen
    socket_spec: str
    token: str
    ready: dict[str, str]
    log_path: Path
    _log_dir: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def log(self) -> str:
        """Everything the runner (and LiteRT) wrote to stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return connect_socket(self.socket_spec, timeout)

    def client(self, timeout: float = 30.0) -> RunnerClient:
        """A new connection that has passed the handshake."""
        client = RunnerClient(self.connect(timeout), timeout)
        try:
            client.handshake(RUNNER_VERSION, None, self.token)
        except BaseException:
            client.close()
            raise
        return client

    def stop(self, grace: float = 0.5, timeout: float = 5.0) -> int:
        """Reap the process (after a QUIT it exits by itself within `grace`), else terminate it."""
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout:
            self.proc.stdout.close()
        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None
        return self.proc.returncode


def connect_socket(spec: str, timeout: float = 10.0) -> socket.socket:
    """A connected stream socket for a runner socket spec (localabstract:, unix: or tcp:)."""
    kind, _, where = spec.partition(":")
    if kind == "tcp":
        return socket.create_connection(("127.0.0.1", int(where)), timeout=timeout)
    if kind not in ("localabstract", "unix"):
        raise ValueError(f"unknown socket spec {spec!r}")
    address = "\0" + where if kind == "localabstract" else where
    # A unix socket whose listen backlog is full refuses at once with EAGAIN (it does not wait
    # like TCP); the runner serves one client at a time, so retry until our own deadline.
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the runner's listen backlog at {spec} stayed full for {timeout:g} s") from None
            time.sleep(BACKLOG_RETRY_S)
        except OSError:
            sock.close()
            raise


def _socket_spec(kind: str, folder: Path) -> str:
    if kind == "localabstract":
        return f"localabstract:{new_socket_name()}"
    if kind == "unix":
        return f"unix:{folder / 'runner.sock'}"
    if kind == "tcp":
        return "tcp:0"
    raise ValueError(f"socket kind must be localabstract, unix or tcp, got {kind!r}")


def _wait_ready(proc: subprocess.Popen, log_path: Path, timeout: float) -> dict[str, str]:
    """Read the runner's stdout until its `ready` line; fail with its log if it exits first."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RunnerError(f"the runner did not get ready within {timeout:g} s:\n{_tail(log_path)}")
            if sel.select(remaining):
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    proc.wait(5)
                    raise RunnerError(f"the runner exited with status {proc.returncode} before it was ready:\n"
                                      f"{_tail(log_path)}")
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    ready = parse_ready_line(line.decode("utf-8", errors="replace"))
                    if ready is not None:
                        return ready


def _tail(log_path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no runner log)"


def launch_host_runner(
    model_path: str | os.PathLike,
    accelerator: str = "gpu",
    precision: str = "fp16acc32",
    threads: int | None = None,
    socket_kind: str = "localabstract",
    io_timeout_ms: int | None = None,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    version: str = RUNNER_VERSION,
    binary: Path | None = None,
    startup_timeout: float = 120.0,
    libdir: str | os.PathLike | None = None,
) -> LaunchedRunner:
    """Build (if needed) and start the host runner; returns once it prints its ready line.

    libdir is where LiteRT looks for its GPU accelerator library (default: the wheel's folder,
    which has the WebGPU one); a folder without it makes the GPU compile fail, as on a phone
    that lacks the library.
    """
    binary = binary or build_host()
    token = new_token()
    log_dir = tempfile.TemporaryDirectory(prefix="metric3d-runner-")
    folder = Path(log_dir.name)
    token_file = folder / "token"
    write_token_file(token_file, token)  # the runner reads and deletes it; mode 0600
    args = build_runner_args(
        str(Path(model_path).resolve()), _socket_spec(socket_kind, folder), str(token_file), accelerator, precision,
        mean, std, threads, io_timeout_ms, libdir=str(libdir or wheel_litert_library().parent), version=version)
    log_path = folder / "runner.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(binary), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
    try:
        ready = _wait_ready(proc, log_path, startup_timeout)
    except BaseException:
        token_file.unlink(missing_ok=True)  # a runner that failed early may not have read it
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        log_dir.cleanup()
        raise
    return LaunchedRunner(proc, ready["socket"], token, ready, log_path, log_dir)


def start_host_runner(model_path: str | os.PathLike, timeout: float = 30.0,
                      **launch_options) -> tuple[subprocess.Popen, RunnerClient]:
    """Start the host runner, connect and handshake. Use launch_host_runner for its log and token."""
    runner = launch_host_runner(model_path, **launch_options)
    try:
        return runner.proc, runner.client(timeout)
    except BaseException:
        runner.stop()
        raise
