"""Which engine serves a request: the host CPU or GPU, the Pixel, or "auto".

"auto" takes the Pixel when present, else the host GPU when it is a hardware adapter (a
software one such as llvmpipe is ~30x slower than the CPU), else the host CPU, and says why.

Engines are created once and shared by every request: the host model loads once and the
phone keeps one resident runner (its GPU compile costs ~2 s). A request picks its engine
when it starts and keeps it to the end, so switching backend in the UI never disturbs a
request already running. When the phone goes away, "auto" requests go on on the host with
a notice and "device" requests get the reason. The phone is looked for once, then only
when someone asks (look_for_phone): each try costs adb round trips and maybe a push.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from backend.engine import Engine, EngineError
from device.adb import DeviceGoneError, DeviceLinkError
from device.build import RUNNER_NAME
from device.engine import DeviceEngine
from device.session import RunnerFiles

BACKENDS = ("auto", "host", "host-gpu", "device")
BACKEND_LABELS = {"auto": "Auto (Pixel if present, else host)", "device": "Pixel", "host": "Host",
                  "host-gpu": "Host GPU"}
LOOK_AGAIN_HINT = ("Connect the phone (USB debugging on, this computer authorized) and click "
                   "“Look for the phone again”, or choose Auto or Host.")
T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pick:
    """The engine one request runs on, where it is, and why "auto" is not on the phone."""

    engine: Engine
    where: str  # "device", "host" or "host-gpu"
    notice: str = ""


def runner_files_in(folder: str | Path) -> RunnerFiles:
    """A runner build folder: the metric3d_runner executable plus every .so beside it, all pushed.

    Lets a person push a runner built elsewhere (another machine, CI) instead of the
    default `python -m device build-android` output.
    """
    folder = Path(folder)
    runner = folder / RUNNER_NAME
    if not runner.is_file():
        raise DeviceLinkError(f"No {RUNNER_NAME} in the runner folder {folder}. Build it with "
                              "`python -m device build-android` or point --runner-dir at a folder that has it.")
    return RunnerFiles(runner, tuple(sorted(p for p in folder.glob("*.so") if p.is_file())))


class Backends:
    """The shared engines behind the app's backend choice; thread-safe.

    device_factory makes a DeviceEngine (no I/O); Backends starts it when it looks for the phone.
    """

    def __init__(self, host_factory: Callable[[], Engine], device_factory: Callable[[], DeviceEngine],
                 host_gpu_factory: Callable[[bool], Engine] | None = None) -> None:
        """host_gpu_factory(allow_software) builds the host GPU engine; it raises EngineError
        (SoftwareGpuError for a refused software adapter) when it cannot. None: no host GPU."""
        self._host_factory = host_factory
        self._device_factory = device_factory
        self._host_gpu_factory = host_gpu_factory
        self._host: Engine | None = None
        self._host_gpu: Engine | None = None
        self._host_gpu_hardware = False  # the loaded host GPU engine may serve "auto"
        self._host_gpu_problem = ""  # why "auto" does not use the host GPU
        self._device: DeviceEngine | None = None
        self._problem = ""  # why the phone is not in use ("Pixel not available: ...")
        self._looked = False
        self._closed = False
        self._lock = threading.Lock()  # guards the fields above; never held during slow work
        self._host_lock = threading.Lock()  # one host model load at a time
        self._search_lock = threading.Lock()  # one phone search at a time (never two runners)
        self._closers: list[threading.Thread] = []

    def host(self) -> Engine:
        """The host engine, loaded on first use."""
        with self._host_lock:
            if self._closed:
                raise EngineError("The app is shutting down.")
            if self._host is None:
                self._host = self._host_factory()
            return self._host

    def host_gpu(self, for_auto: bool = False) -> Engine:
        """The host GPU engine, loaded on first use; for "auto" only on a hardware adapter (else EngineError)."""
        with self._host_lock:
            if self._closed:
                raise EngineError("The app is shutting down.")
            if self._host_gpu is None:
                if self._host_gpu_factory is None:
                    raise EngineError("This app has no host GPU engine.")
                if for_auto and self._host_gpu_problem:
                    raise EngineError(self._host_gpu_problem)
                try:
                    engine = self._host_gpu_factory(not for_auto)
                except EngineError as exc:
                    self._host_gpu_problem = f"Host GPU not used: {exc}"
                    raise EngineError(self._host_gpu_problem) from exc
                adapter = getattr(engine, "adapter", None)
                self._host_gpu, self._host_gpu_hardware = engine, adapter is not None and not adapter.is_software
                if not self._host_gpu_hardware:
                    self._host_gpu_problem = (f"Host GPU not used: its adapter is a software one ({adapter.label})"
                                              if adapter else "Host GPU not used: its adapter type is unknown")
            if for_auto and not self._host_gpu_hardware:
                raise EngineError(self._host_gpu_problem)
            return self._host_gpu

    def look_for_phone(self) -> bool:
        """Start the Pixel engine if it is not running; False (and the reason kept) when it cannot."""
        with self._search_lock:
            if self._closed:
                return False
            if self._device is not None:
                return True
            try:
                engine = self._device_factory().start()  # a no-op for an engine already started
            except EngineError as exc:
                return self._not_found(f"Pixel not available: {exc}")
            except Exception as exc:  # noqa: BLE001 - adb and USB fail in ways nobody listed; keep serving
                log.exception("looking for the phone failed")
                return self._not_found(f"Pixel not available: unexpected {type(exc).__name__}: {exc}")
            with self._lock:
                self._device, self._problem, self._looked = engine, "", True
            return True

    def _not_found(self, problem: str) -> bool:
        with self._lock:
            self._problem, self._looked = problem, True
        return False

    def pick(self, choice: str, load_gpu: bool = True) -> Pick:
        """The engine for a request that asked for `choice` (auto, host, host-gpu or device).

        load_gpu=False: "auto" uses the host GPU only if it is already loaded (a request that
        just lost the phone goes on at once instead of waiting for a GPU compile)."""
        if choice not in BACKENDS:
            raise EngineError(f"Unknown backend {choice!r}; choose one of {', '.join(BACKENDS)}.")
        if choice == "host":
            return Pick(self.host(), "host")
        if choice == "host-gpu":
            return Pick(self.host_gpu(), "host-gpu")
        if not self._looked:
            self.look_for_phone()
        with self._lock:
            device, problem = self._device, self._problem
        if device is not None:
            return Pick(device, "device")
        if choice == "device":
            raise DeviceLinkError(f"{problem}. {LOOK_AGAIN_HINT}")
        if self._host_gpu_factory is not None and (load_gpu or self._host_gpu is not None):
            try:
                return Pick(self.host_gpu(for_auto=True), "host-gpu", f"{problem} — running on the host GPU")
            except EngineError as exc:
                problem = f"{problem}; {exc}"
        return Pick(self.host(), "host", f"{problem} — running on the host CPU")

    def run(self, choice: str, work: Callable[[Pick], T]) -> tuple[T, Pick]:
        """work(pick) on the chosen engine; an "auto" request whose phone went away reruns on the host."""
        pick = self.pick(choice)
        try:
            return work(pick), pick
        except EngineError as exc:
            if pick.where != "device" or not self._forget_if_gone(pick.engine, exc) or choice != "auto":
                raise
        pick = self.pick(choice, load_gpu=False)
        return work(pick), pick

    def _forget_if_gone(self, engine: Engine, exc: EngineError) -> bool:
        """True when `engine` is no longer the phone in use: it went away now, or another request saw it go."""
        with self._lock:
            if self._device is not engine:
                return True
            if not isinstance(exc, DeviceGoneError):
                return False
            self._device, self._problem = None, f"Pixel disconnected: {exc}"
        # Closing talks to adb with timeouts; the request goes on on the host meanwhile.
        closer = threading.Thread(target=engine.close, name="close-pixel-engine", daemon=True)
        closer.start()
        self._closers.append(closer)
        return True

    def status(self) -> dict:
        """What the status panel shows: the phone in use (or why not) and the host engine if loaded."""
        with self._lock:
            device, host, problem, looked = self._device, self._host, self._problem, self._looked
        status: dict = {"device": None, "device_problem": problem or None, "looked_for_phone": looked, "host": None}
        with self._lock:
            host_gpu, gpu_problem = self._host_gpu, self._host_gpu_problem
        if host_gpu is not None:
            info = host_gpu.info()
            status["host_gpu"] = {"engine": info.engine, "accelerator": info.accelerator}
        if gpu_problem:
            status["host_gpu_problem"] = gpu_problem
        if device is not None:
            info = device.info()
            status["device"] = {"engine": info.engine, "accelerator": info.accelerator, **info.details}
        if host is not None:
            info = host.info()
            status["host"] = {"engine": info.engine, "accelerator": info.accelerator}
        return status

    def close(self, join_timeout_s: float = 30.0) -> None:
        """Stop the runner on the phone and release the host model (at exit)."""
        with self._search_lock, self._host_lock, self._lock:
            self._closed = True
            engines = [e for e in (self._device, self._host, self._host_gpu) if e is not None]
            self._device = self._host = self._host_gpu = None
        for engine in engines:
            engine.close()
        for closer in self._closers:
            closer.join(join_timeout_s)
