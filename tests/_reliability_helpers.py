"""Shared by the reliability suites (bad inputs, faults, load) and benchmarks/soak.py.

Why not tests/_app_helpers.running_app: these suites must see where the app writes.
The app runs with its own GRADIO_TEMP_DIR (uploads and Gradio's output cache) and its own
TMPDIR (backend.outputs.OutputStore's per-request folders), both inside one work folder, so
a test can list every file the server left behind and a soak can measure their growth.
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

import numpy as np
from PIL import Image

from tests._app_helpers import REPO, _wait_until_up, free_port


@dataclass(frozen=True)
class AppUnderTest:
    url: str
    pid: int
    gradio_temp: Path  # GRADIO_TEMP_DIR of the server: uploads and Gradio's cache of returned files
    tmp: Path  # TMPDIR of the server: OutputStore's metric3d-*/req-* folders live here
    log_path: Path

    def files(self) -> set[Path]:
        """Every regular file the server has under its two temp folders right now."""
        return {p for root in (self.gradio_temp, self.tmp) for p in root.rglob("*") if p.is_file()}

    def usage(self) -> tuple[int, int]:
        """(file count, total bytes) under the two temp folders."""
        found = self.files()
        return len(found), sum(p.stat().st_size for p in found if p.exists())


@contextmanager
def app_subprocess(model: Path, workdir: Path, backend: str = "host", extra_args: Sequence[str] = (),
                   extra_env: Mapping[str, str] | None = None, timeout_s: float = 120.0) -> Iterator[AppUnderTest]:
    """`python app.py --model MODEL --backend BACKEND` on a free loopback port, temp folders under workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    gradio_temp, tmp = workdir / "gradio-temp", workdir / "tmp"
    gradio_temp.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METRIC3D_", "GRADIO_"))}
    env.update({"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1,localhost",
                "GRADIO_TEMP_DIR": str(gradio_temp), "TMPDIR": str(tmp), **(extra_env or {})})
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "app.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--model", str(model), "--backend", backend, "--port", str(port),
             *extra_args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_until_up(proc, url, timeout_s, log_path)
            yield AppUnderTest(url, proc.pid, gradio_temp, tmp, log_path)
        finally:
            stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 20 s: a wedged server must not outlive its test."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def distinct_photo(seed: int, width: int = 320, height: int = 240) -> np.ndarray:
    """A different picture per seed, so no cache can serve one request's answer to another:
    coarse random colour blocks (a resize keeps them apart) plus a gradient turned by the seed."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    rgb = np.asarray(Image.fromarray(blocks).resize((width, height), Image.Resampling.BILINEAR), np.float32)
    angle = seed * 0.7
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height) * 60.0
    return np.clip(rgb + ramp[..., None], 0, 255).astype(np.uint8)
