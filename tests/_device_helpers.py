"""Fixtures for the device-link tests: an emulated Pixel behind a private adb server,
the host runner build to push to it, and a guard that turns a hang into a failure."""
from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Iterator

import pytest

from device.build import build_host, wheel_litert_library
from device.session import LinkSettings, RunnerFiles
from adb_device_emulator import EmulatedPhone, emulated_phone

RUNNER = "metric3d_runner"


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging) when the block takes longer than `seconds`."""
    def expired(signum, frame):
        raise TimeoutError(f"the test did not finish within {seconds} s (a call hung)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def host_runner_files() -> RunnerFiles:
    """What the tests push as "the runner": the host build and the wheel's libLiteRt.so."""
    return RunnerFiles(build_host(), (wheel_litert_library(),))


@pytest.fixture
def phone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedPhone]:
    """An emulated Pixel 8a connected to a private adb server (fresh per test)."""
    with emulated_phone(tmp_path_factory.mktemp("phone")) as connected:
        yield connected


def emulated_link(phone: EmulatedPhone, **overrides) -> LinkSettings:
    """Link settings for the emulated phone (CPU in the runner: no GPU here)."""
    options = dict(adb_port=phone.adb_port, start_server=False, accelerator="cpu",
                   request_timeout=20.0, startup_timeout=30.0, adb_timeout=10.0)
    options.update(overrides)
    return LinkSettings(**options)


def remote_dir_on_host(phone: EmulatedPhone, remote_dir: str = "/data/local/tmp/metric3d") -> Path:
    return Path(phone.device.fs.host(remote_dir))
