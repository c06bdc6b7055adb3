"""Builds of the resident runner: host (system gcc) for tests, Android arm64 (NDK) for the phone.

Both builds take the runner version from device.protocol so the binary and the client can
never disagree about it. The host build dlopens the ai-edge-litert wheel's libLiteRt.so; the
Android build needs the matching prebuilt LiteRT runtime and GPU accelerator for arm64, which
LiteRT publishes per release in its public binaries bucket: pooch downloads them once into a
cache and checks each against its sha256 (pinned per LiteRT version in LITERT_ANDROID_SHA256,
else trusted on first use and recorded; see fetch_android_libraries).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from backend.digest import file_sha256
from device.protocol import RUNNER_VERSION

RUNNER_DIR = Path(__file__).resolve().parent / "runner"
HOST_SOURCES = ("runner.c", "litert_api.h")
ANDROID_SOURCES = HOST_SOURCES + ("CMakeLists.txt",)
HOST_BUILD_DIR = RUNNER_DIR / "build" / "host"
ANDROID_BUILD_DIR = RUNNER_DIR / "build" / "android-arm64"
RUNNER_NAME = "metric3d_runner"
HOST_CFLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra", "-Werror")
LITERT_BINARIES_BASE = "https://storage.googleapis.com/litert/binaries"
ANDROID_PLATFORM_DIR = "android_arm64"
ANDROID_LIBS = ("libLiteRt.so", "libLiteRtClGlAccelerator.so")
ANDROID_API_LEVEL = 26
DOWNLOAD_TIMEOUT_S = 60.0
# sha256 of the arm64 libraries per pinned LiteRT release (requirements.txt pins ai-edge-litert).
# None = not pinned yet: nobody has checked a copy of that file from where this project is
# developed (no network). fetch_android_libraries then trusts the first copy it gets, records
# its sha256 in the cache (TRUSTED_RECORD) with a warning, and checks later uses against it.
# To pin: run `python -m device build-android` once, compare the printed sha256 with a copy
# fetched elsewhere, and write it here.
LITERT_ANDROID_SHA256: dict[str, dict[str, str | None]] = {
    "2.3.0": {"libLiteRt.so": None, "libLiteRtClGlAccelerator.so": None},
}
TRUSTED_RECORD = "sha256-trusted-on-first-use.json"

Progress = Callable[[str, int, int | None], None]  # (file name, bytes so far, total or None)


class BuildError(RuntimeError):
    """A build step failed; the message says what to install or fix."""


@dataclass(frozen=True)
class AndroidBuild:
    runner: Path
    libraries: tuple[Path, ...]  # push these beside the runner
    litert_version: str


def wheel_litert_library() -> Path:
    """The libLiteRt.so that ships inside the installed ai-edge-litert wheel."""
    spec = importlib.util.find_spec("ai_edge_litert")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("ai-edge-litert is not installed (pip install -r requirements.txt)")
    lib = Path(list(spec.submodule_search_locations)[0]) / "libLiteRt.so"
    if not lib.exists():
        raise BuildError(f"{lib} is missing: the ai-edge-litert wheel has no LiteRT C library")
    return lib


def litert_version() -> str:
    """The pinned ai-edge-litert version; the Android runtime must be the same release."""
    try:
        return importlib.metadata.version("ai-edge-litert")
    except importlib.metadata.PackageNotFoundError:
        raise BuildError("ai-edge-litert is not installed (pip install -r requirements.txt)") from None


def sources_stamp(names: tuple[str, ...], *extra: str) -> str:
    """Hash of the sources and build settings: a rebuild happens exactly when it changes."""
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0" + (RUNNER_DIR / name).read_bytes() + b"\0")
    for item in extra:
        h.update(item.encode() + b"\0")
    return h.hexdigest()


def host_cpu_flags() -> tuple[str, ...]:
    """-mf16c where this x86-64 CPU has F16C: the runner's float16 cast is then one instruction
    (vcvtps2ph), not libgcc's software conversion (~10 ms instead of ~0.3 ms per 448x448 depth).
    The host build runs where it is built; arm64 (the phone) converts in hardware anyway."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    return ("-mf16c",) if platform.machine() == "x86_64" and " f16c" in flags else ()


def host_compile_command(compiler: str, output: Path) -> list[str]:
    return [compiler, *HOST_CFLAGS, *host_cpu_flags(), f'-DRUNNER_VERSION="{RUNNER_VERSION}"', "-o", str(output),
            str(RUNNER_DIR / "runner.c"), "-ldl", "-lm"]


def build_host(build_dir: Path = HOST_BUILD_DIR, compiler: str = "gcc", force: bool = False) -> Path:
    """Compile the host runner (only when sources changed) and link the wheel's libLiteRt.so beside it."""
    binary = build_dir / RUNNER_NAME
    stamp_file = build_dir / "stamp"
    lib = wheel_litert_library()
    stamp = sources_stamp(HOST_SOURCES, RUNNER_VERSION, compiler, str(lib), *host_cpu_flags())
    if not force and binary.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return binary
    if shutil.which(compiler) is None:
        raise BuildError(f"C compiler '{compiler}' not found; install gcc to build the host runner")
    build_dir.mkdir(parents=True, exist_ok=True)
    partial = build_dir / f"{RUNNER_NAME}.{os.getpid()}.partial"
    proc = subprocess.run(host_compile_command(compiler, partial), capture_output=True, text=True)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BuildError(f"compiling the host runner failed:\n{proc.stderr.strip()}")
    _link_beside(lib, build_dir / "libLiteRt.so")
    partial.replace(binary)
    stamp_file.write_text(stamp)
    return binary


def _link_beside(target: Path, link: Path) -> None:
    """The runner dlopens libLiteRt.so from its own folder, as it does on the phone."""
    temp = link.with_name(f"{link.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    temp.symlink_to(target)
    temp.replace(link)


def check_ndk(ndk: str | os.PathLike | None) -> Path:
    """The NDK folder, or a BuildError that says how to point at one."""
    if not ndk:
        raise BuildError("ANDROID_NDK_HOME is not set: install the Android NDK (r27 suggested) and "
                         "export ANDROID_NDK_HOME=/path/to/android-ndk")
    path = Path(ndk)
    toolchain = path / "build" / "cmake" / "android.toolchain.cmake"
    if not toolchain.is_file():
        raise BuildError(f"ANDROID_NDK_HOME={path} is not an Android NDK (no {toolchain.relative_to(path)} in it)")
    return path


def android_library_urls(version: str, base_url: str = LITERT_BINARIES_BASE) -> dict[str, str]:
    return {name: f"{base_url.rstrip('/')}/{version}/{ANDROID_PLATFORM_DIR}/{name}" for name in ANDROID_LIBS}


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "metric3d-litert" / "litert-android"


def print_progress(name: str, done: int, total: int | None) -> None:
    """Progress on one stderr line per file (overwritten in place)."""
    if total:
        text = f"\r  {name}: {done / 1e6:6.1f} / {total / 1e6:.1f} MB ({100 * done // total:3d}%)"
    else:
        text = f"\r  {name}: {done / 1e6:6.1f} MB"
    sys.stderr.write(text)
    if total is not None and done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


class _ProgressAdapter:
    """pooch's progress-bar protocol (total, update, reset, close) feeding a Progress callback."""

    def __init__(self, name: str, progress: Progress) -> None:
        self._name, self._progress = name, progress
        self.total: int | None = None
        self._done = 0

    def update(self, n: int) -> None:
        self._done += n
        if self.total:
            self._done = min(self._done, self.total)
        self._progress(self._name, self._done, self.total or None)

    def reset(self) -> None:
        self._done = 0

    def close(self) -> None:
        pass


def _read_record(folder: Path) -> dict[str, str]:
    try:
        return json.loads((folder / TRUSTED_RECORD).read_text())
    except (OSError, ValueError):
        return {}


def fetch_android_libraries(version: str, cache_dir: Path, base_url: str = LITERT_BINARIES_BASE,
                            progress: Progress | None = print_progress, timeout: float = DOWNLOAD_TIMEOUT_S,
                            pinned: Mapping[str, str | None] | None = None) -> tuple[list[Path], list[str]]:
    """Cached arm64 LiteRT libraries for `version`, each checked against its sha256.

    Returns (paths, names that were downloaded now). `pinned` ({file name: sha256}) defaults
    to LITERT_ANDROID_SHA256[version]. A file with a pinned sha256 is downloaded again when the
    cached copy differs and refused (BuildError) when the download differs. A file without one
    is trusted on first use: its sha256 is recorded in the cache folder (TRUSTED_RECORD), a
    warning on stderr says so and how to pin it, and later uses are checked against the record.
    """
    import pooch  # lazily: only the Android build downloads anything

    folder = cache_dir / version / ANDROID_PLATFORM_DIR
    folder.mkdir(parents=True, exist_ok=True)
    pins = LITERT_ANDROID_SHA256.get(version, {}) if pinned is None else pinned
    record = _read_record(folder)
    paths, downloaded = [], []
    for name, url in android_library_urls(version, base_url).items():
        expected = pins.get(name) or record.get(name)
        before = _mtime_ns(folder / name)
        bar = _ProgressAdapter(name, progress) if progress else False
        downloader = pooch.HTTPDownloader(progressbar=bar, chunk_size=1 << 16, timeout=timeout)
        try:
            path = Path(pooch.retrieve(url, f"sha256:{expected}" if expected else None, fname=name, path=folder,
                                       downloader=downloader))
        except ValueError as exc:  # pooch: the download's hash differs from the expected one
            raise BuildError(f"{url} does not have the expected sha256 ({exc}); the download was discarded. "
                             "If LiteRT republished it, check the new file and update "
                             f"LITERT_ANDROID_SHA256 in device/build.py (or {folder / TRUSTED_RECORD})") from None
        except Exception as exc:  # noqa: BLE001 - requests' errors, without importing requests here
            raise _download_error(url, folder / name, exc) from None
        if _mtime_ns(path) != before:  # pooch fetched it (missing, or the cached copy's sha256 differed)
            downloaded.append(name)
        if not pins.get(name) and name not in record:
            record[name] = file_sha256(path)
            (folder / TRUSTED_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
            sys.stderr.write(f"warning: no pinned sha256 for LiteRT {version} {name}; trusting this copy "
                             f"(sha256 {record[name]}) and recording it in {folder / TRUSTED_RECORD}. "
                             f"Pin it in LITERT_ANDROID_SHA256 (device/build.py) to check every download.\n")
        paths.append(path)
    return paths, downloaded


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _download_error(url: str, target: Path, exc: Exception) -> BuildError:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status is not None:
        hint = " (no such LiteRT release for android_arm64?)" if status == 404 else ""
        return BuildError(f"downloading {url} failed: HTTP {status}{hint}")
    return BuildError(f"downloading {url} failed: {exc}. Check the network, or put {target.name} "
                      f"into {target.parent} by hand")


def android_cmake_commands(ndk: Path, build_dir: Path, cmake: str = "cmake") -> list[list[str]]:
    """Configure + build commands for the arm64 runner with the NDK toolchain."""
    configure = [
        cmake, "-S", str(RUNNER_DIR), "-B", str(build_dir),
        f"-DCMAKE_TOOLCHAIN_FILE={ndk / 'build' / 'cmake' / 'android.toolchain.cmake'}",
        "-DANDROID_ABI=arm64-v8a", f"-DANDROID_PLATFORM={ANDROID_API_LEVEL}",
        "-DCMAKE_BUILD_TYPE=Release", f"-DRUNNER_VERSION={RUNNER_VERSION}",
    ]
    return [configure, [cmake, "--build", str(build_dir), "--target", RUNNER_NAME]]


def build_android(ndk: str | os.PathLike | None = None, cache_dir: Path | None = None,
                  base_url: str = LITERT_BINARIES_BASE, build_dir: Path = ANDROID_BUILD_DIR,
                  progress: Progress | None = print_progress, cmake: str = "cmake") -> AndroidBuild:
    """Cross-compile the runner for arm64 and gather the LiteRT libraries that go beside it."""
    ndk_path = check_ndk(ndk if ndk is not None else os.environ.get("ANDROID_NDK_HOME"))
    if shutil.which(cmake) is None:
        raise BuildError(f"'{cmake}' not found; install CMake to build the Android runner")
    version = litert_version()
    libs, _ = fetch_android_libraries(version, cache_dir or default_cache_dir(), base_url, progress)
    for command in android_cmake_commands(ndk_path, build_dir, cmake):
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"{' '.join(command[:2])} failed:\n{(proc.stdout + proc.stderr).strip()[-4000:]}")
    runner = build_dir / RUNNER_NAME
    if not runner.is_file():
        raise BuildError(f"CMake finished but {runner} was not produced")
    return AndroidBuild(runner, tuple(libs), version)
