"""One runner on one phone: push what changed, start it, connect, handshake, stop.

Kept apart from the engine so the lifecycle (start, health check, restart, stop) can be
driven and tested on its own. Each start uses a fresh random socket name and token:
a stale runner from an earlier session can never answer for this one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

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
BUILD_HINT = ("Install the Android NDK (r27) and run: ANDROID_NDK_HOME=/path/to/android-ndk "
              "python -m device build-android")


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
class RunnerOptions:
    accelerator: str = "gpu"
    precision: str = "fp16acc32"
    mean: Sequence[float] = (123.675, 116.28, 103.53)
    std: Sequence[float] = (58.395, 57.12, 57.375)
    threads: int | None = None


class RunnerSession:
    """The resident runner for one model on one phone."""

    def __init__(self, phone: Phone, model_path: Path, model_sha256: str, files: RunnerFiles,
                 options: RunnerOptions, remote_dir: str = adb.REMOTE_DIR, request_timeout: float = 30.0,
                 startup_timeout: float = 60.0, adb_timeout: float = adb.ADB_TIMEOUT_S):
        self.phone = phone
        self.model_path = Path(model_path)
        self.model_sha256 = model_sha256
        self.files = files
        self.options = options
        self.remote_dir = adb.validate_remote_path(remote_dir)
        self.request_timeout = request_timeout
        self.startup_timeout = startup_timeout
        self.adb_timeout = adb_timeout
        self.client: RunnerClient | None = None
        self.runner: StartedRunner | None = None
        self.hello: HelloReply | None = None
        self.info: dict = {}
        self.last_push: PushReport | None = None
        self.start_ms = 0.0

    def _files_to_push(self) -> dict[str, Path]:
        files = {RUNNER_NAME: self.files.runner, REMOTE_MODEL_NAME: self.model_path}
        files.update({lib.name: lib for lib in self.files.libraries})
        return files

    def start(self) -> None:
        """Push what changed, start the runner, connect and handshake (stops it again on failure)."""
        started = time.perf_counter()
        self.last_push = adb.push_if_changed(self.phone, self._files_to_push(), self.remote_dir,
                                             executables=(RUNNER_NAME,), timeout=max(self.adb_timeout, 120.0))
        adb.kill_stale_runners(self.phone, RUNNER_NAME, self.adb_timeout)
        token = new_token()
        socket_name = new_socket_name()  # independent of the token
        token_path = f"{self.remote_dir}/token-{socket_name}"  # the runner reads and deletes it
        try:
            adb.push_secret(self.phone, token_file_bytes(token), token_path)
            args = build_runner_args(f"{self.remote_dir}/{REMOTE_MODEL_NAME}", f"localabstract:{socket_name}", token_path,
                                     self.options.accelerator, self.options.precision, self.options.mean,
                                     self.options.std, self.options.threads, libdir=self.remote_dir)
        except ValueError as exc:
            raise DeviceLinkError(f"Bad runner setting: {exc}") from None
        self.runner = adb.start_runner(self.phone, self.remote_dir, RUNNER_NAME, args, socket_name,
                                       f"runner-{socket_name}.log", self.adb_timeout)
        try:
            sock = adb.wait_for_runner(self.phone, self.runner, self.startup_timeout)
            self.client = RunnerClient(sock, self.request_timeout)
            self.hello = self.client.handshake(RUNNER_VERSION, self.model_sha256, token)
            self.info = self.client.info()
        except RunnerError as exc:
            log = adb.read_log(self.phone, self.runner.log_path)
            self.stop()
            raise DeviceLinkError(f"The runner on the phone refused the session: {exc}\n{log}") from None
        except BaseException:
            self.stop()
            raise
        self.start_ms = (time.perf_counter() - started) * 1000.0

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

    def restart(self) -> None:
        self.stop()
        self.start()

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
