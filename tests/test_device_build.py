"""device.build: host builds (real gcc), rebuild-on-change, and the Android build's checks,
downloads and cache — with the download base pointed at loopback servers (no network here)."""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import device.build as build
from device.build import BuildError
from device.protocol import RUNNER_VERSION

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def runner_copy(tmp_path, monkeypatch) -> Path:
    """A private copy of device/runner/ so a test can edit sources without touching the tree."""
    copy = tmp_path / "runner"
    copy.mkdir()
    for name in build.ANDROID_SOURCES:
        shutil.copy(build.RUNNER_DIR / name, copy / name)
    monkeypatch.setattr(build, "RUNNER_DIR", copy)
    return copy


def test_host_build_is_cached_until_a_source_changes(runner_copy, tmp_path):
    out = tmp_path / "out"
    binary = build.build_host(out)
    assert os.access(binary, os.X_OK)
    assert (out / "libLiteRt.so").resolve() == build.wheel_litert_library().resolve()
    first = binary.stat()
    assert build.build_host(out).stat().st_mtime_ns == first.st_mtime_ns  # cache hit
    with open(runner_copy / "litert_api.h", "a") as header:
        header.write("\n/* edited */\n")
    rebuilt = build.build_host(out).stat()
    assert (rebuilt.st_ino, rebuilt.st_mtime_ns) != (first.st_ino, first.st_mtime_ns)


def test_host_binary_knows_its_version(tmp_path):
    binary = build.build_host(tmp_path / "out")
    proc = subprocess.run([str(binary), "9.9.9"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and f"this runner is {RUNNER_VERSION}" in proc.stderr


def test_host_compile_errors_are_reported(runner_copy, tmp_path):
    (runner_copy / "runner.c").write_text("int main(void) { return undeclared_thing; }\n")
    with pytest.raises(BuildError, match="undeclared_thing"):
        build.build_host(tmp_path / "out")
    assert not (tmp_path / "out" / build.RUNNER_NAME).exists()


def test_host_build_warnings_are_errors(runner_copy, tmp_path):
    (runner_copy / "runner.c").write_text("int main(void) { int unused_variable; return 0; }\n")
    with pytest.raises(BuildError, match="unused_variable"):
        build.build_host(tmp_path / "out")


def test_missing_compiler_is_explained(tmp_path):
    with pytest.raises(BuildError, match="'no-such-cc' not found"):
        build.build_host(tmp_path / "out", compiler="no-such-cc")


def test_host_compile_command():
    command = build.host_compile_command("gcc", Path("/tmp/x"))
    for flag in ("-O2", "-Wall", "-Wextra", "-Werror", f'-DRUNNER_VERSION="{RUNNER_VERSION}"', "-ldl"):
        assert flag in command


def test_ndk_checks(tmp_path, monkeypatch):
    monkeypatch.delenv("ANDROID_NDK_HOME", raising=False)
    with pytest.raises(BuildError, match="ANDROID_NDK_HOME is not set"):
        build.build_android()
    with pytest.raises(BuildError, match="is not an Android NDK"):
        build.build_android(ndk=tmp_path)
    monkeypatch.setenv("ANDROID_NDK_HOME", str(tmp_path / "nope"))
    with pytest.raises(BuildError, match="nope is not an Android NDK"):
        build.build_android()


def test_android_urls_use_the_pinned_litert_version():
    version = build.litert_version()
    assert version == "2.3.0"  # requirements.txt pins ai-edge-litert==2.3.0
    urls = build.android_library_urls(version)
    assert urls == {
        name: f"https://storage.googleapis.com/litert/binaries/2.3.0/android_arm64/{name}"
        for name in ("libLiteRt.so", "libLiteRtClGlAccelerator.so")
    }


def test_android_cmake_commands():
    configure, compile_ = build.android_cmake_commands(Path("/ndk"), Path("/b"))
    assert "-DCMAKE_TOOLCHAIN_FILE=/ndk/build/cmake/android.toolchain.cmake" in configure
    assert "-DANDROID_ABI=arm64-v8a" in configure and "-DANDROID_PLATFORM=26" in configure
    assert f"-DRUNNER_VERSION={RUNNER_VERSION}" in configure
    assert compile_[-1] == build.RUNNER_NAME


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_from_a_closed_port_fails_clearly(tmp_path):
    base = f"http://127.0.0.1:{_closed_port()}/litert/binaries"
    with pytest.raises(BuildError) as err:
        build.fetch_android_libraries("2.3.0", tmp_path, base, progress=None, timeout=5)
    message = str(err.value)
    assert f"{base}/2.3.0/android_arm64/libLiteRt.so" in message and "refused" in message
    assert not list(tmp_path.rglob("*.part"))


def test_cache_hit_needs_no_network(tmp_path):
    folder = tmp_path / "2.3.0" / "android_arm64"
    folder.mkdir(parents=True)
    for name in build.ANDROID_LIBS:
        (folder / name).write_bytes(b"\x7fELF cached")
    base = f"http://127.0.0.1:{_closed_port()}/x"
    paths, downloaded = build.fetch_android_libraries("2.3.0", tmp_path, base, progress=None)
    assert downloaded == [] and [p.name for p in paths] == list(build.ANDROID_LIBS)


@pytest.fixture
def file_server(tmp_path):
    """A loopback HTTP server over tmp_path/www, laid out like the LiteRT binaries bucket."""
    root = tmp_path / "www"
    (root / "2.3.0" / "android_arm64").mkdir(parents=True)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_fills_the_cache_with_progress_then_hits(tmp_path, file_server):
    root, base = file_server
    payloads = {name: os.urandom(200_000 + i) for i, name in enumerate(build.ANDROID_LIBS)}
    for name, data in payloads.items():
        (root / "2.3.0" / "android_arm64" / name).write_bytes(data)
    seen: list[tuple[str, int, int | None]] = []
    cache = tmp_path / "cache"
    paths, downloaded = build.fetch_android_libraries("2.3.0", cache, base, lambda *a: seen.append(a))
    assert downloaded == list(build.ANDROID_LIBS)
    for path in paths:
        assert path.read_bytes() == payloads[path.name]
    last = {name: (done, total) for name, done, total in seen}
    assert last == {name: (len(data), len(data)) for name, data in payloads.items()}
    assert len(seen) > 2  # more than one update per file
    (root / "2.3.0" / "android_arm64" / "libLiteRt.so").unlink()
    assert build.fetch_android_libraries("2.3.0", cache, base, progress=None)[1] == []


def _publish(root: Path, seed: int = 0) -> dict[str, bytes]:
    payloads = {name: np.random.default_rng(seed + i).bytes(70_000 + i) for i, name in enumerate(build.ANDROID_LIBS)}
    for name, data in payloads.items():
        (root / "2.3.0" / "android_arm64" / name).write_bytes(data)
    return payloads


def test_pinned_sha256_accepts_the_right_file_and_refuses_another(tmp_path, file_server):
    root, base = file_server
    payloads = _publish(root)
    right = {name: hashlib.sha256(data).hexdigest() for name, data in payloads.items()}
    paths, _ = build.fetch_android_libraries("2.3.0", tmp_path / "ok", base, progress=None, pinned=right)
    assert [p.read_bytes() for p in paths] == list(payloads.values())
    assert not (paths[0].parent / build.TRUSTED_RECORD).exists()  # pinned: nothing to trust
    wrong = dict(right, **{"libLiteRt.so": "0" * 64})
    with pytest.raises(BuildError, match="does not have the expected sha256"):
        build.fetch_android_libraries("2.3.0", tmp_path / "bad", base, progress=None, pinned=wrong)
    assert not (tmp_path / "bad" / "2.3.0" / "android_arm64" / "libLiteRt.so").exists()


def test_unpinned_files_are_trusted_on_first_use_recorded_and_then_checked(tmp_path, file_server, capsys):
    root, base = file_server
    payloads = _publish(root)
    cache = tmp_path / "cache"
    unpinned = {name: None for name in build.ANDROID_LIBS}
    paths, downloaded = build.fetch_android_libraries("2.3.0", cache, base, progress=None, pinned=unpinned)
    record = json.loads((paths[0].parent / build.TRUSTED_RECORD).read_text())
    assert record == {name: hashlib.sha256(data).hexdigest() for name, data in payloads.items()}
    warning = capsys.readouterr().err
    assert "no pinned sha256" in warning and "LITERT_ANDROID_SHA256" in warning and record["libLiteRt.so"] in warning
    assert downloaded == list(build.ANDROID_LIBS)
    paths[0].write_bytes(b"tampered")  # the cached copy no longer matches its record: fetched again
    _, again = build.fetch_android_libraries("2.3.0", cache, base, progress=None, pinned=unpinned)
    assert again == ["libLiteRt.so"] and paths[0].read_bytes() == payloads["libLiteRt.so"]
    _publish(root, seed=7)  # the server now serves other bytes than the recorded ones
    paths[0].write_bytes(b"tampered")
    with pytest.raises(BuildError, match="does not have the expected sha256"):
        build.fetch_android_libraries("2.3.0", cache, base, progress=None, pinned=unpinned)


def test_the_pinned_table_covers_the_pinned_litert_version():
    assert set(build.LITERT_ANDROID_SHA256[build.litert_version()]) == set(build.ANDROID_LIBS)


def test_missing_release_is_a_404_with_a_hint(tmp_path, file_server):
    _, base = file_server
    with pytest.raises(BuildError, match="HTTP 404.*no such LiteRT release"):
        build.fetch_android_libraries("9.9.9", tmp_path / "cache", base, progress=None)


def test_android_flow_runs_cmake_with_the_toolchain_file(tmp_path, file_server):
    """With a stand-in toolchain file (host compiler), the whole flow runs for real: NDK check,
    download into the cache, CMake configure + build of CMakeLists.txt, runner produced."""
    root, base = file_server
    for name in build.ANDROID_LIBS:
        (root / "2.3.0" / "android_arm64" / name).write_bytes(b"\x7fELF")
    ndk = tmp_path / "ndk"
    (ndk / "build" / "cmake").mkdir(parents=True)
    (ndk / "build" / "cmake" / "android.toolchain.cmake").write_text("# host stand-in\n")
    result = build.build_android(ndk, tmp_path / "cache", base, tmp_path / "build", progress=None)
    assert result.runner.is_file() and result.litert_version == "2.3.0"
    assert [p.name for p in result.libraries] == list(build.ANDROID_LIBS)
    proc = subprocess.run([str(result.runner), "0.0.0"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and RUNNER_VERSION in proc.stderr


def test_cli_reports_a_missing_ndk():
    env = {k: v for k, v in os.environ.items() if k != "ANDROID_NDK_HOME"}
    proc = subprocess.run([sys.executable, "-m", "device", "build-android"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "ANDROID_NDK_HOME is not set" in proc.stderr


def test_cli_builds_the_host_runner():
    proc = subprocess.run([sys.executable, "-m", "device", "build-host"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == build.HOST_BUILD_DIR / build.RUNNER_NAME
