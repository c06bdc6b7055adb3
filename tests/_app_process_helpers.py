"""app.py as a subprocess with chosen arguments and environment (the Pixel and security tests).

tests/_app_helpers.running_app always starts `--backend host`; these tests need the other
backends, an adb server port, a temp folder they can inspect, and the exit code.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests._app_helpers import REPO, _wait_until_up, free_port


@dataclass
class AppProcess:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (what a service manager sends), then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def app_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("METRIC3D_", "GRADIO_", "ANDROID_ADB_SERVER_"))}
    env.update({"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1,localhost"})
    env.update(extra or {})
    return env


def app_command(model: Path, port: int, args: Sequence[str]) -> list[str]:
    return [sys.executable, "app.py", "--model", str(model), "--port", str(port), *args]


@contextmanager
def app_process(model: Path, log_path: Path, args: Sequence[str], env: Mapping[str, str] | None = None,
                timeout_s: float = 180.0) -> Iterator[AppProcess]:
    """`python app.py --model MODEL --port P ARGS` on a free loopback port, stopped (SIGTERM) afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(app_command(model, port, args), cwd=REPO, env=app_env(env), stdout=log,
                                stderr=subprocess.STDOUT)
        app = AppProcess(url, proc, log_path)
        try:
            _wait_until_up(proc, url, timeout_s, log_path)
            yield app
        finally:
            app.stop()


def run_app_to_exit(model: Path, args: Sequence[str], env: Mapping[str, str] | None = None,
                    timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    """Run app.py expecting it to exit by itself (a start-up error); returns its output."""
    return subprocess.run(app_command(model, free_port(), args), cwd=REPO, env=app_env(env), capture_output=True,
                          text=True, timeout=timeout_s)
