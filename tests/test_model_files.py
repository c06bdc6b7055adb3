"""Model resolution order and the failure message, without any real network.

Downloads cannot work here, so the download path is exercised against a loopback Hub that
answers 404 (at once: huggingface_hub retries network errors for ~20 s, not a 404), and with
huggingface_hub's offline switch. huggingface_hub reads those variables at import time, hence
the subprocesses.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from backend.digest import file_sha256
from backend.model_files import (ENV_CACHE, ENV_MODEL, PUBLISHED_FILE, PUBLISHED_REPO, ModelNotFound, cache_dir,
                                 resolve_model)
from backend.model_info import (IMAGENET_MEAN, IMAGENET_STD, METADATA_NAME, ModelInfoError,
                                read_model_info)

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


def test_every_printed_option_works_as_printed(layout):
    """The commands in the message use the README's .venv/bin/python, name files that exist in the
    checkout, say where the checkpoint comes from, and the convert command parses."""
    from conversion.__main__ import _parser

    with pytest.raises(ModelNotFound) as err:
        resolve_model(None, env={ENV_CACHE: str(layout["cache"])}, download=False)
    commands = [line.split("#")[0].split(": ", 1)[-1].strip() for line in str(err.value).splitlines()
                if "python " in line]
    assert len(commands) == 3 and all(c.startswith(".venv/bin/python ") for c in commands), commands
    app_cmd, install_cmd, convert_cmd = commands
    assert app_cmd.split()[1:3] == ["app.py", "--model"] and (REPO / "app.py").is_file()
    assert install_cmd.split()[1:] == ["-m", "pip", "install", "-r", "requirements-conversion.txt"]
    assert "torch==" in (REPO / "requirements-conversion.txt").read_text()
    assert "metric_depth_vit_small_800k.pth" in str(err.value) and "JUGGHM/Metric3D" in str(err.value)
    argv = convert_cmd.split()[3:]  # after ".venv/bin/python -m conversion"
    args = _parser().parse_args(argv)
    assert (args.command, args.checkpoint) == ("convert", Path("metric_depth_vit_small_800k.pth"))
    assert args.output == layout["cache"] / PUBLISHED_FILE


def _resolve_in_subprocess(tmp_path: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "METRIC3D_"))}
    env.update({ENV_CACHE: str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"),
                "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1,localhost", **extra_env})
    return subprocess.run([sys.executable, "-m", "backend.model_files"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def _assert_download_failure(proc: subprocess.CompletedProcess, tmp_path: Path) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    cache = tmp_path / "cache"
    announced = f"downloading {PUBLISHED_FILE} from the Hugging Face repo {PUBLISHED_REPO} into {cache}"
    assert announced in proc.stderr  # said before the download began
    assert "downloading metric3d_fp16.tflite" in proc.stdout
    assert str(cache / PUBLISHED_FILE) in proc.stdout
    assert "python -m conversion convert" in proc.stdout
    assert not (cache / PUBLISHED_FILE).exists()


def test_download_failure_offline_mode(tmp_path):
    proc = _resolve_in_subprocess(tmp_path, {"HF_HUB_OFFLINE": "1"})
    _assert_download_failure(proc, tmp_path)


class _NotFoundHandler(http.server.BaseHTTPRequestHandler):
    """A loopback Hub that knows no repo: every request gets 404 at once (no retry is due)."""

    paths: list[str] = []

    def _not_found(self) -> None:
        type(self).paths.append(self.path)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _not_found

    def log_message(self, *args) -> None:
        pass


def test_download_failure_from_an_endpoint_without_the_repo(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFoundHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        proc = _resolve_in_subprocess(tmp_path, {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}"})
    finally:
        server.shutdown()
        server.server_close()
    _assert_download_failure(proc, tmp_path)
    assert any(PUBLISHED_REPO in path and PUBLISHED_FILE in path for path in _NotFoundHandler.paths)  # asked there


# --- read_model_info: identity and contract from the file itself -------------------------

def _repacked(source: Path, out: Path, edit) -> Path:
    """Rewrite a .tflite through the flatbuffer object API after `edit(model)`; returns out."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(source.read_bytes(), 0)
    tail = edit(model) or b""
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out.write_bytes(bytes(builder.Output()) + tail)
    return out


def _ours(model) -> int:
    return next(i for i, m in enumerate(model.metadata) if m.name.decode() == METADATA_NAME)


def test_read_model_info_with_metadata(stand_in_model):
    info = read_model_info(stand_in_model)
    assert info.published is False and info.metadata is not None
    assert info.metadata["format"] == 1 and "stand-in" in info.metadata["model"]
    assert info.input_size == 448 and info.precision == "fp32"
    assert info.mean == IMAGENET_MEAN and info.std == IMAGENET_STD and info.canonical_focal_px == 1000.0
    assert "stand-in" in info.source and info.converter.startswith("metric3d-litert/")
    assert info.sha256 == hashlib.sha256(stand_in_model.read_bytes()).hexdigest()


def test_read_model_info_without_metadata_means_published_defaults(stand_in_model, tmp_path):
    def strip(model):
        del model.metadata[_ours(model)]

    bare = _repacked(stand_in_model, tmp_path / "bare.tflite", strip)
    info = read_model_info(bare)
    assert info.published is True and info.metadata is None
    assert (info.input_size, info.mean, info.std, info.canonical_focal_px) == (
        448, IMAGENET_MEAN, IMAGENET_STD, 1000.0)
    assert "published" in info.source and info.precision == "unknown"


def test_read_model_info_from_offset_buffer(stand_in_model, tmp_path):
    """Large-model layout: the metadata bytes live after the flatbuffer, addressed by offset/size."""
    document = {**read_model_info(stand_in_model).metadata, "precision": "fp16"}
    payload = json.dumps(document).encode()
    size_probe = {}

    def external(model):
        buffer = model.buffers[model.metadata[_ours(model)].buffer]
        buffer.data, buffer.size = None, len(payload)
        buffer.offset = size_probe.get("offset", 1 << 40)

    probe = _repacked(stand_in_model, tmp_path / "probe.tflite", external)
    size_probe["offset"] = (probe.stat().st_size + 15) // 16 * 16
    padding = b"\0" * (size_probe["offset"] - probe.stat().st_size)
    out = _repacked(stand_in_model, tmp_path / "external.tflite", lambda m: (external(m), padding + payload)[1])
    assert out.stat().st_size == size_probe["offset"] + len(payload)
    info = read_model_info(out)
    assert info.precision == "fp16" and info.published is False


def test_read_model_info_rejects_bad_metadata_and_non_models(stand_in_model, tmp_path):
    def garble(model):
        model.buffers[model.metadata[_ours(model)].buffer].data = np.frombuffer(b"{not json", np.uint8)

    with pytest.raises(ModelInfoError, match="not valid UTF-8 JSON"):
        read_model_info(_repacked(stand_in_model, tmp_path / "garbled.tflite", garble))
    photo = tmp_path / "photo.tflite"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(ModelInfoError, match="not a TFLite model"):
        read_model_info(photo)


def test_sha256_follows_file_changes(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"a" * 3_000_000)
    first = file_sha256(path)
    assert first == hashlib.sha256(b"a" * 3_000_000).hexdigest()
    path.write_bytes(b"b" * 3_000_001)
    assert file_sha256(path) == hashlib.sha256(b"b" * 3_000_001).hexdigest() != first
