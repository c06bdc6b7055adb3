"""Helpers for the device-link tests and benchmarks: link settings for the emulated phone,
a guard that turns a hang into a failure, and where a device folder lives on the host."""
from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Iterator

from device.build import RUNNER_NAME as RUNNER, build_host, wheel_litert_library
from device.session import LinkSettings, RunnerFiles
from testing.adb_emulator import EmulatedPhone

__all__ = ["RUNNER", "deadline", "emulated_link", "host_runner_files", "remote_dir_on_host"]


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


def host_runner_files() -> RunnerFiles:
    """What goes to the emulated phone as "the runner": the host build and the wheel's libLiteRt.so."""
    return RunnerFiles(build_host(), (wheel_litert_library(),))


def emulated_link(phone: EmulatedPhone, **overrides) -> LinkSettings:
    """Link settings for the emulated phone (CPU in the runner: no GPU here)."""
    options = dict(adb_port=phone.adb_port, start_server=False, accelerator="cpu",
                   request_timeout=20.0, startup_timeout=30.0, adb_timeout=10.0)
    options.update(overrides)
    return LinkSettings(**options)


def remote_dir_on_host(phone: EmulatedPhone, remote_dir: str = "/data/local/tmp/metric3d") -> Path:
    return Path(phone.device.fs.host(remote_dir))
