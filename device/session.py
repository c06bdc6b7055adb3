"""One runner on one phone: push what changed, start it, connect, handshake, stop.

Kept apart from the engine so the lifecycle (start, health check, restart, stop) can be
driven and tested on its own. Construction does no I/O; start() does all of it (scrcpy's
init/start/stop split). Each start uses a fresh random socket name and token: a stale
runner from an earlier session can never answer for this one. The model's identity is
checked on the host (its sha256 against the one the app loaded) and the push is checked
on the phone (sha256sum of the copy), so the runner is not asked to hash 150 MB again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from backend.digest import file_sha256
from backend.model_info import ModelInfo
from device import adb
from device.adb import DeviceLinkError, Phone, PushReport, StartedRunner
from device.build import ANDROID_BUILD_DIR, ANDROID_LIBS, ANDROID_PLATFORM_DIR, RUNNER_NAME, default_cache_dir
from device.protocol import (
    RUNNER_VERSION, HelloReply, RunnerClient, RunnerError, build_runner_args, new_socket_name, new_token,
    token_file_bytes,
)

REMOTE_MODEL_NAME = "model.tflite"
# The health PING is sent while the runner is idle, so an answer takes milliseconds; a runner
# that is alive but stuck is restarted after this long instead of the whole request timeout.
HEALTH_TIMEOUT_S = 2.0
BUILD_HINT = ("Install the Android NDK (r27) and run: ANDROID_NDK_HOME=$HOME/android-ndk-r27 "
              ".venv/bin/python -m device build-android")


@dataclass(frozen=True)
class RunnerFiles:
    """What goes to the phone beside the model: the runner and the LiteRT libraries it loads."""

    runner: Path
    libraries: tuple[Path, ...]


def android_runner_files(build_dir: Path = ANDROID_BUILD_DIR, cache_dir: Path | None = None) -> RunnerFiles:
    """The arm64 build from `python -m device build-android`, or an error that says how to make it."""
    from device.build import BuildError, litert_version

    try:
        version = litert_version()
    except BuildError as exc:
        raise DeviceLinkError(str(exc)) from None
    libs_dir = (cache_dir or default_cache_dir()) / version / ANDROID_PLATFORM_DIR
    files = RunnerFiles(build_dir / RUNNER_NAME, tuple(libs_dir / name for name in ANDROID_LIBS))
    missing = [str(p) for p in (files.runner, *files.libraries) if not p.is_file()]
    if missing:
        raise DeviceLinkError(f"The Pixel runner is not built yet (missing {', '.join(missing)}). {BUILD_HINT}")
    return files


@dataclass(frozen=True)
class LinkSettings:
    """How the app reaches the phone and runs the model there; checked when made.

    adb_host/adb_port/start_server: the adb server (started on loopback when missing and
    allowed). remote_dir: the folder on the phone (under /data/local/tmp). accelerator
    "gpu" (OpenCL, OpenGL, then CPU) or "cpu"; precision fp16, fp16acc32 or fp32 (GPU only);
    threads: CPU threads in the runner (None: LiteRT's default). want: depth sent back as
    "f16" (half the bytes) or "f32". Timeouts are seconds: one request, the runner's start
    (compile + warm-up) and each adb exchange.
    """

    adb_host: str = "127.0.0.1"
    adb_port: int = adb.DEFAULT_ADB_PORT
    start_server: bool = True
    remote_dir: str = adb.REMOTE_DIR
    accelerator: str = "gpu"
    precision: str = "fp16acc32"
    threads: int | None = None
    want: str = "f16"
    expected_abi: str = adb.EXPECTED_ABI
    request_timeout: float = 30.0
    startup_timeout: float = 60.0
    adb_timeout: float = adb.ADB_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.want not in ("f16", "f32"):
            raise DeviceLinkError(f"want must be 'f16' or 'f32', got {self.want!r}")
        adb.validate_remote_path(self.remote_dir)
        try:  # the runner's own checks, so a bad setting fails here and not on the phone
            build_runner_args("model", "localabstract:x", new_token(), self.accelerator, self.precision,
                              threads=self.threads)
        except ValueError as exc:
            raise DeviceLinkError(f"Bad runner setting: {exc}") from None
        for name in ("request_timeout", "startup_timeout", "adb_timeout"):
            if not getattr(self, name) > 0:
                raise DeviceLinkError(f"{name} must be positive, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class SessionStart:
    """What one start of the runner found and cost."""

    hello: HelloReply
    info: dict  # the runner's INFO JSON (device/PROTOCOL.md)
    push: PushReport
    start_ms: float


class RunnerSession:
    """The resident runner for one model on one phone: start(), healthy(), restart(), stop()."""

    def __init__(self, phone: Phone, model_path: Path, model: ModelInfo, files: RunnerFiles,
                 settings: LinkSettings) -> None:
        self.phone = phone
        self.model_path = Path(model_path)
        self.model = model
        self.files = files
        self.settings = settings
        self.client: RunnerClient | None = None
        self.runner: StartedRunner | None = None
        self.started: SessionStart | None = None

    def _files_to_push(self) -> dict[str, Path]:
        files = {RUNNER_NAME: self.files.runner, REMOTE_MODEL_NAME: self.model_path}
        files.update({lib.name: lib for lib in self.files.libraries})
        return files

    def _check_model_unchanged(self) -> None:
        """The file must still be the model the app loaded: its input size, mean/std and labels are in use."""
        try:
            now = file_sha256(self.model_path)
        except OSError as exc:
            raise DeviceLinkError(f"The model file {self.model_path} cannot be read any more: {exc}") from None
        if now != self.model.sha256:
            raise DeviceLinkError(f"The model file {self.model_path} changed since the app loaded it (sha256 "
                                  f"{now[:12]}…, loaded {self.model.sha256[:12]}…). Restart the app to use it.")

    def start(self) -> SessionStart:
        """Push what changed, start the runner, connect and handshake (stops it again on failure)."""
        settings = self.settings
        started = time.perf_counter()
        self._check_model_unchanged()
        push = adb.push_if_changed(self.phone, self._files_to_push(), settings.remote_dir,
                                   executables=(RUNNER_NAME,), timeout=max(settings.adb_timeout, 120.0))
        adb.kill_stale_runners(self.phone, RUNNER_NAME, settings.adb_timeout)
        token = new_token()
        socket_name = new_socket_name()  # independent of the token
        token_path = f"{settings.remote_dir}/token-{socket_name}"  # the runner reads and deletes it
        try:
            adb.push_secret(self.phone, token_file_bytes(token), token_path)
            args = build_runner_args(f"{settings.remote_dir}/{REMOTE_MODEL_NAME}", f"localabstract:{socket_name}",
                                     token_path, settings.accelerator, settings.precision, self.model.mean,
                                     self.model.std, settings.threads, libdir=settings.remote_dir)
        except ValueError as exc:  # the model's mean/std (the settings were checked when made)
            raise DeviceLinkError(f"Bad runner setting: {exc}") from None
        self.runner = adb.start_runner(self.phone, settings.remote_dir, RUNNER_NAME, args, socket_name,
                                       f"runner-{socket_name}.log", settings.adb_timeout)
        try:
            sock = adb.wait_for_runner(self.phone, self.runner, settings.startup_timeout)
            self.client = RunnerClient(sock, settings.request_timeout)
            hello = self.client.handshake(RUNNER_VERSION, None, token)
            info = self.client.info()
        except RunnerError as exc:
            log = adb.read_log(self.phone, self.runner.log_path)
            self.stop()
            raise DeviceLinkError(f"The runner on the phone refused the session: {exc}\n{log}") from None
        except BaseException:
            self.stop()
            raise
        self.started = SessionStart(hello, info, push, (time.perf_counter() - started) * 1000.0)
        return self.started

    def healthy(self) -> bool:
        """A PING answered in time; False (and the client dropped) otherwise."""
        if self.client is None:
            return False
        try:
            self.client.ping(b"health", timeout=HEALTH_TIMEOUT_S)
            return True
        except RunnerError:
            self.drop_connection()
            return False

    def drop_connection(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def restart(self) -> SessionStart:
        self.stop()
        return self.start()

    def stop(self) -> None:
        """QUIT if the runner still answers, then make sure it is gone and its log removed."""
        quit_ok = False
        if self.client is not None:
            try:
                self.client.quit()
                quit_ok = True
            except RunnerError:
                pass
            self.client = None
        if self.runner is not None:
            deadline = time.monotonic() + 2.0
            try:
                while quit_ok and time.monotonic() < deadline and adb.runner_alive(self.phone, self.runner.pid, 5.0):
                    time.sleep(0.05)
            except DeviceLinkError:
                pass
            adb.stop_runner(self.phone, self.runner)
            self.runner = None
