"""app.py as a real subprocess on a free loopback port: the one launcher for tests and the soak.

Every run gets its own work folder: the server's GRADIO_TEMP_DIR (uploads, Gradio's cache of
returned files) and TMPDIR (backend.outputs' per-request folders) live in it, so a test can
list every file the server left behind and a soak can measure their growth; the log is
`app.log` there. The environment is the caller's minus every METRIC3D_*, GRADIO_* and
ANDROID_ADB_SERVER_* variable (a developer's settings must not leak in), plus `env`.
Stopping is SIGTERM (what a service manager sends), then SIGKILL after `stop`'s timeout.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testing import REPO, free_port

_DROPPED_ENV = ("METRIC3D_", "GRADIO_", "ANDROID_ADB_SERVER_")


@dataclass(frozen=True)
class AppProcess:
    url: str
    proc: subprocess.Popen
    workdir: Path

    @property
    def log_path(self) -> Path:
        return self.workdir / "app.log"

    @property
    def gradio_temp(self) -> Path:
        return self.workdir / "gradio-temp"

    @property
    def tmp(self) -> Path:
        return self.workdir / "tmp"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def files(self) -> set[Path]:
        """Every regular file the server has under its two temp folders right now."""
        return {p for root in (self.gradio_temp, self.tmp) for p in root.rglob("*") if p.is_file()}

    def usage(self) -> tuple[int, int]:
        """(file count, total bytes) under the two temp folders."""
        found = self.files()
        return len(found), sum(p.stat().st_size for p in found if p.exists())

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time: a wedged server must not outlive its test."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def app_env(workdir: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_ENV)}
    clean.update({"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1,localhost",
                  "GRADIO_TEMP_DIR": str(workdir / "gradio-temp"), "TMPDIR": str(workdir / "tmp")})
    clean.update(env or {})
    return clean


def _prepare(workdir: Path) -> None:
    for folder in (workdir, workdir / "gradio-temp", workdir / "tmp"):
        folder.mkdir(parents=True, exist_ok=True)


def _command(model: Path, port: int, args: Sequence[str]) -> list[str]:
    return [sys.executable, "app.py", "--model", str(model), "--port", str(port), *args]


@contextmanager
def running_app(model: Path, workdir: Path, args: Sequence[str] = ("--backend", "host"),
                env: Mapping[str, str] | None = None, timeout_s: float = 180.0) -> Iterator[AppProcess]:
    """`python app.py --model MODEL --port P ARGS` once it answers; stopped afterwards.

    A free port can be taken by another process before the app binds it (other suites run
    beside this one); the app then exits saying so, and it is started again on another port.
    """
    app = _start(model, workdir, args, env, timeout_s)
    try:
        yield app
    finally:
        app.stop()


def _start(model: Path, workdir: Path, args: Sequence[str], env: Mapping[str, str] | None, timeout_s: float,
           tries: int = 3) -> AppProcess:
    _prepare(workdir)
    attempt = 1
    while True:
        port = free_port()
        with (workdir / "app.log").open("wb") as log:
            proc = subprocess.Popen(_command(model, port, args), cwd=REPO, env=app_env(workdir, env), stdout=log,
                                    stderr=subprocess.STDOUT)
        app = AppProcess(f"http://127.0.0.1:{port}", proc, workdir)
        try:
            _wait_until_up(app, timeout_s)
            return app
        except RuntimeError:
            app.stop()
            if attempt == tries or "Cannot find empty port" not in app.log():
                raise
        attempt += 1


def run_app_to_exit(model: Path, workdir: Path, args: Sequence[str], env: Mapping[str, str] | None = None,
                    timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    """Run app.py expecting it to exit by itself (a start-up error); returns its output."""
    _prepare(workdir)
    return subprocess.run(_command(model, free_port(), args), cwd=REPO, env=app_env(workdir, env),
                          capture_output=True, text=True, timeout=timeout_s)


def _wait_until_up(app: AppProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if app.proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {app.proc.returncode}:\n{app.log()[-3000:]}")
        try:
            with urllib.request.urlopen(app.url + "/", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"app.py did not answer within {timeout_s:.0f} s:\n{app.log()[-3000:]}")
