"""Fixtures shared by the test suite, and the test tiers.

Models are built by the project's own conversion code (no downloads) and cached under
`.cache/test-models/`, keyed by a hash of the conversion sources, so a second test run on the
same checkout reuses them and a change to the converter rebuilds them. The emulated phone
and its adb server come from the `testing` package (shared with benchmarks/).

Tiers (markers registered in pyproject.toml): each test gets its markers from the table
MODULE_MARKERS (by module) and from the fixtures it uses (FIXTURE_MARKERS), so a new test
file that uses the phone or a full model is classified without listing it; a module can add
more with `pytestmark`. Tests with none of them are marked `fast`: `pytest -m fast` is the
day-to-day tier, plain `pytest` (CI) runs everything.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from testing import device as device_testing
from testing.adb_emulator import EmulatedPhone, adb_server, emulated_phone

REPO = Path(__file__).resolve().parents[1]
MODEL_CACHE = REPO / ".cache" / "test-models"


def _sources_hash(*globs: str, exclude: tuple[str, ...] = ()) -> str:
    h = hashlib.sha256()
    for pattern in globs:
        for path in sorted(REPO.glob(pattern)):
            if path.name in exclude:
                continue
            h.update(str(path.relative_to(REPO)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _build_once(name: str, command: list[str], output: Path) -> Path:
    """Run a model-building command into a temp name and rename it atomically."""
    if output.exists():
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f"{output.stem}.{os.getpid()}.partial.tflite")
    cmd = [arg if arg != "{out}" else str(partial) for arg in command]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0 or not partial.exists():
        raise RuntimeError(f"building {name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    partial.replace(output)
    sidecar = partial.with_name(partial.name + ".json")
    if sidecar.exists():
        sidecar.replace(output.with_name(output.name + ".json"))
    return output


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    path = Path(os.environ.get("METRIC3D_GOLDEN_DIR", REPO.parent / "shared" / "golden")).resolve()
    if not (path / "depth_canonical_f32.npy").exists():
        raise FileNotFoundError(f"golden vectors not found in {path}; set METRIC3D_GOLDEN_DIR")
    return path


@pytest.fixture(scope="session")
def stand_in_model() -> Path:
    """Small .tflite with the exact I/O contract and our metadata (built in seconds)."""
    key = _sources_hash("conversion/stand_in.py", "conversion/metadata.py", "backend/model_info.py")
    out = MODEL_CACHE / f"stand_in-{key}.tflite"
    return _build_once("stand-in model", [sys.executable, "-m", "conversion.stand_in", "--output", "{out}"], out)


@pytest.fixture(scope="session")
def stand_in_engine(stand_in_model: Path):
    """One host engine on the stand-in model, shared (it is safe under concurrent requests)."""
    from backend.host_engine import HostEngine

    engine = HostEngine(stand_in_model)
    yield engine
    engine.close()


def _conversion_key() -> str:
    return _sources_hash("conversion/**/*.py", "backend/model_info.py", exclude=("stand_in.py",))


@pytest.fixture(scope="session")
def full_model_fp32() -> Path:
    """The full Metric3D v2 ViT-S architecture with seed-0 random weights, fp32 (slow: ~1 min)."""
    out = MODEL_CACHE / f"metric3d_random0_fp32-{_conversion_key()}.tflite"
    cmd = [sys.executable, "-m", "conversion", "convert", "--random-weights", "0",
           "--precision", "fp32", "--output", "{out}"]
    return _build_once("full model (fp32)", cmd, out)


@pytest.fixture(scope="session")
def full_model_fp16(full_model_fp32: Path) -> Path:
    """fp16-weight version of full_model_fp32, made by quantizing it (no second conversion)."""
    out = MODEL_CACHE / f"metric3d_random0_fp16-{_conversion_key()}.tflite"
    cmd = [sys.executable, "-m", "conversion", "quantize", "--input", str(full_model_fp32), "--output", "{out}"]
    return _build_once("full model (fp16)", cmd, out)


@pytest.fixture(scope="session")
def small_model_fp32() -> Path:
    """The full architecture (seed-0 random weights, fp32) at a 112 px input: every op of the real
    graph with 1/16 of its pixels, for the GPU test that runs in every CI."""
    out = MODEL_CACHE / f"metric3d_random0_s112_fp32-{_conversion_key()}.tflite"
    cmd = [sys.executable, "-m", "conversion", "convert", "--random-weights", "0", "--precision", "fp32",
           "--size", "112", "--output", "{out}"]
    return _build_once("small full-architecture model (112 px)", cmd, out)


@pytest.fixture(scope="session")
def golden_checkpoint(golden_dir, tmp_path_factory) -> Path:
    """The golden seed-0 weights as an official-layout .pth (written by the golden generator)."""
    out = tmp_path_factory.mktemp("golden_ckpt") / "metric3d_golden_s0.pth"
    subprocess.run([sys.executable, str(golden_dir / "make_weights.py"), "--seed", "0", "--out", str(out)],
                   check=True, capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="session")
def golden_models(golden_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The golden checkpoint converted once (fp32) by the CLI, then quantized to fp16 by the CLI.

    Session-wide: the conversion tests and the GPU tests share these two files."""
    out = tmp_path_factory.mktemp("golden_tflite")
    fp32, fp16 = out / "golden_fp32.tflite", out / "golden_fp16.tflite"
    for args in (["convert", "--checkpoint", str(golden_checkpoint), "--precision", "fp32", "--output", str(fp32)],
                 ["quantize", "--input", str(fp32), "--output", str(fp16)]):
        proc = subprocess.run([sys.executable, "-m", "conversion", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        if args[0] == "convert" and not ("conversion time" in proc.stdout and "peak RSS" in proc.stdout):
            raise RuntimeError(f"convert did not report its time and memory:\n{proc.stdout[-2000:]}")
    return {"fp32": fp32, "fp16": fp16}


@pytest.fixture(scope="session")
def host_runner_files():
    """What the tests push as "the runner": the host build and the wheel's libLiteRt.so."""
    return device_testing.host_runner_files()


@pytest.fixture
def phone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedPhone]:
    """An emulated Pixel 8a connected to a private adb server (fresh per test)."""
    with emulated_phone(tmp_path_factory.mktemp("phone")) as connected:
        yield connected


@pytest.fixture
def adb_server_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A private adb server with no phone attached; yields its port."""
    with adb_server(tmp_path_factory.mktemp("adb-home")) as port:
        yield port


# ----------------------------------------------------------------------------- test tiers

TIERS = ("slow", "browser", "device", "gpu", "conversion")
# What a module needs or costs; see pyproject.toml for each marker's meaning.
MODULE_MARKERS: dict[str, tuple[str, ...]] = {
    "test_adb_emulator": ("device",),
    "test_app_api": ("slow",),
    "test_app_device": ("slow", "device"),
    "test_app_security": ("slow",),
    "test_audit": ("slow", "conversion"),
    "test_benchmarks_smoke": ("slow", "conversion"),
    "test_checkpoint": ("conversion",),
    "test_conversion_cli": ("slow", "conversion"),
    "test_device_build": ("device",),
    "test_device_faults": ("slow", "device"),
    "test_device_link": ("slow", "device"),
    "test_export_rewrites": ("slow", "conversion"),
    "test_faults": ("slow", "device"),
    "test_gpu": ("slow", "gpu"),
    "test_load": ("slow",),
    "test_model_parity": ("slow", "conversion"),
    "test_runner_host": ("device", "gpu"),
    "test_ui_browser": ("slow", "browser"),
}
FIXTURE_MARKERS: dict[str, tuple[str, ...]] = {
    "app": ("slow",),  # app.py as a subprocess
    "wrong_shape_model": ("conversion",),
    "full_model_fp32": ("slow", "conversion"),
    "full_model_fp16": ("slow", "conversion"),
    "small_model_fp32": ("slow", "conversion"),
    "golden_checkpoint": ("conversion",),
    "golden_models": ("slow", "conversion"),
    "phone": ("device",),
    "host_runner_files": ("device",),
    "adb_server_port": ("device",),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        wanted = set(MODULE_MARKERS.get(item.module.__name__.rpartition(".")[2], ()))
        for name in getattr(item, "fixturenames", ()):
            wanted.update(FIXTURE_MARKERS.get(name, ()))
        for name in sorted(wanted):
            item.add_marker(name)
        if not any(item.get_closest_marker(name) for name in TIERS):
            item.add_marker("fast")
