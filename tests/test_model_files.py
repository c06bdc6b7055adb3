"""Model resolution order and the failure message, without any real network.

Downloads cannot work here, so the download path is exercised against a loopback port
that refuses connections, and with huggingface_hub's offline switch. huggingface_hub
reads those variables at import time, hence the subprocesses.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from backend.model_files import (ENV_CACHE, ENV_MODEL, PUBLISHED_FILE, ModelNotFound, cache_dir,
                                 resolve_model)

REPO = Path(__file__).resolve().parents[1]


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not really a model")
    return path


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    return {
        "cli": _touch(tmp_path / "cli.tflite"),
        "env": _touch(tmp_path / "env.tflite"),
        "cache": tmp_path / "cache",
    }


def test_cli_path_beats_env_and_cache(layout):
    _touch(layout["cache"] / PUBLISHED_FILE)
    env = {ENV_MODEL: str(layout["env"]), ENV_CACHE: str(layout["cache"])}
    got = resolve_model(str(layout["cli"]), env=env, download=False)
    assert (got.path, got.origin) == (layout["cli"].resolve(), "--model")


def test_env_beats_cache(layout):
    _touch(layout["cache"] / PUBLISHED_FILE)
    env = {ENV_MODEL: str(layout["env"]), ENV_CACHE: str(layout["cache"])}
    got = resolve_model(None, env=env, download=False)
    assert (got.path, got.origin) == (layout["env"].resolve(), ENV_MODEL)


def test_cache_used_when_nothing_explicit(layout):
    cached = _touch(layout["cache"] / PUBLISHED_FILE)
    got = resolve_model(None, env={ENV_CACHE: str(layout["cache"])}, download=False)
    assert (got.path, got.origin) == (cached, "cache")


def test_default_cache_is_under_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir({}) == tmp_path / ".cache" / "metric3d-litert"


@pytest.mark.parametrize("origin", ["--model", ENV_MODEL])
def test_missing_explicit_path_is_reported_not_replaced(layout, origin):
    _touch(layout["cache"] / PUBLISHED_FILE)  # a usable cache must NOT hide the typo
    missing = layout["cache"] / "typo.tflite"
    env = {ENV_CACHE: str(layout["cache"])}
    if origin == ENV_MODEL:
        env[ENV_MODEL] = str(missing)
    with pytest.raises(ModelNotFound) as err:
        resolve_model(str(missing) if origin == "--model" else None, env=env)
    assert origin in str(err.value) and str(missing) in str(err.value)


def test_nothing_found_lists_every_option(layout):
    with pytest.raises(ModelNotFound) as err:
        resolve_model(None, env={ENV_CACHE: str(layout["cache"])}, download=False)
    text = str(err.value)
    assert "--model" in text
    assert str(layout["cache"] / PUBLISHED_FILE) in text
    assert "python -m conversion convert --checkpoint" in text


def _resolve_in_subprocess(tmp_path: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "METRIC3D_"))}
    env.update({ENV_CACHE: str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"),
                "HF_HUB_DISABLE_TELEMETRY": "1", **extra_env})
    return subprocess.run([sys.executable, "-m", "backend.model_files"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def _assert_download_failure(proc: subprocess.CompletedProcess, tmp_path: Path) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "downloading metric3d_fp16.tflite" in proc.stdout
    assert str(tmp_path / "cache" / PUBLISHED_FILE) in proc.stdout
    assert "python -m conversion convert" in proc.stdout
    assert not (tmp_path / "cache" / PUBLISHED_FILE).exists()


def test_download_failure_offline_mode(tmp_path):
    proc = _resolve_in_subprocess(tmp_path, {"HF_HUB_OFFLINE": "1"})
    _assert_download_failure(proc, tmp_path)


def test_download_failure_unreachable_endpoint(tmp_path):
    with socket.socket() as bound_not_listening:  # connections to it are refused at once
        bound_not_listening.bind(("127.0.0.1", 0))
        port = bound_not_listening.getsockname()[1]
        proc = _resolve_in_subprocess(tmp_path, {"HF_ENDPOINT": f"http://127.0.0.1:{port}"})
    _assert_download_failure(proc, tmp_path)
    assert f"127.0.0.1:{port}" in proc.stderr  # it really tried the loopback endpoint
