"""DeviceEngine: the Engine protocol on a USB-connected Pixel through the resident runner.

The runner keeps the compiled model on the phone's GPU, so a request only ships 602 KB of
uint8 RGB and gets 401 KB of float16 depth back. Before each request a PING checks the
runner; a dead runner is restarted once for that request. A runner that dies DURING a
request is reported (it may be the input that crashed it) and restarted on the next one.
FallbackEngine runs on the host CPU when the phone is missing or goes away, and says so.
"""
from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from backend.engine import Engine, EngineError, EngineInfo, Inference
from backend.model_info import ModelInfoError, read_model_info
from device import adb
from device.adb import DeviceGoneError, DeviceLinkError
from device.protocol import Accelerator, RunnerError
from device.session import RunnerFiles, RunnerOptions, RunnerSession, android_runner_files

_ACCELERATOR_LABELS = {Accelerator.GPU_OPENCL: "GPU (OpenCL", Accelerator.GPU_OPENGL: "GPU (OpenGL",
                       Accelerator.GPU_WEBGPU: "GPU (WebGPU"}


class DeviceEngine:
    """Engine protocol on the phone; `files` overrides what is pushed (tests push the host build)."""

    def __init__(self, model_path: str | Path, serial: str | None = None, *, adb_host: str = "127.0.0.1",
                 adb_port: int = adb.DEFAULT_ADB_PORT, start_server: bool = True, files: RunnerFiles | None = None,
                 remote_dir: str = adb.REMOTE_DIR, accelerator: str = "gpu", precision: str = "fp16acc32",
                 threads: int | None = None, want: str = "f16", expected_abi: str = adb.EXPECTED_ABI,
                 request_timeout: float = 30.0, startup_timeout: float = 60.0,
                 adb_timeout: float = adb.ADB_TIMEOUT_S) -> None:
        if want not in ("f16", "f32"):
            raise EngineError(f"want must be 'f16' or 'f32', got {want!r}")
        try:
            self._model_info = read_model_info(model_path)
        except (ModelInfoError, OSError) as exc:
            raise EngineError(str(exc)) from exc
        files = files or android_runner_files()
        client = adb.adb_client(adb_host, adb_port, start_server, adb_timeout)
        self._phone = adb.choose_device(client, serial)
        self._abi = adb.check_abi(self._phone, expected_abi, adb_timeout)
        self._device_model = adb.device_model(self._phone, adb_timeout)
        options = RunnerOptions(accelerator, precision, self._model_info.mean, self._model_info.std, threads)
        self._session = RunnerSession(self._phone, Path(model_path), self._model_info.sha256, files, options,
                                      remote_dir, request_timeout, startup_timeout, adb_timeout)
        self._session.start()
        self._want = want
        self._request_timeout = request_timeout
        self._lock = threading.Lock()
        self._closed = False
        self._restarts = 0
        self._last_nonfinite = 0
        assert self._session.hello is not None
        if self._session.hello.input_size != self._model_info.input_size:
            self.close()
            raise EngineError(f"The runner reports input size {self._session.hello.input_size}, the model file "
                              f"says {self._model_info.input_size}")

    @property
    def serial(self) -> str:
        return self._phone.serial

    @property
    def input_size(self) -> int:
        return self._model_info.input_size

    def info(self) -> EngineInfo:
        hello, runner_info = self._session.hello, self._session.info
        push = self._session.last_push
        details = {
            "device": self._device_model,
            "serial": self._phone.serial,
            "abi": self._abi,
            "runner_version": hello.version if hello else "?",
            "live_accelerator": str(runner_info.get("accelerator", "?")),
            "compile_ms": f"{float(runner_info.get('compile_ms', 0.0)):.0f}",
            "warmup_ms": f"{float(runner_info.get('warmup_ms', 0.0)):.0f}",
            "session_start_ms": f"{self._session.start_ms:.0f}",
            "pushed": (f"{', '.join(push.pushed)} ({push.bytes_sent / 1e6:.1f} MB in {push.seconds:.1f} s)"
                       if push and push.pushed else "nothing (files on the phone are up to date)"),
            "runner_restarts": str(self._restarts),
        }
        if runner_info.get("gpu_error"):
            details["gpu_error"] = str(runner_info["gpu_error"])
        if self._last_nonfinite:
            details["nonfinite_values"] = str(self._last_nonfinite)
        return EngineInfo(engine=f"{self._device_model} runner", accelerator=self._accelerator_label(),
                          model=self._model_info, details=details)

    def _accelerator_label(self) -> str:
        hello = self._session.hello
        if hello is None:
            return "unknown"
        if hello.accelerator in _ACCELERATOR_LABELS:
            return f"{_ACCELERATOR_LABELS[hello.accelerator]}, {hello.precision.name.lower()})"
        if self._session.options.accelerator == "gpu":
            return "CPU (the phone's GPU could not compile or run the model)"
        return "CPU"

    def infer(self, rgb: np.ndarray) -> Inference:
        size = self.input_size
        if not isinstance(rgb, np.ndarray) or rgb.shape != (size, size, 3) or rgb.dtype != np.uint8:
            got = f"{rgb.dtype} {list(rgb.shape)}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
            raise EngineError(f"engine input must be uint8 [{size},{size},3], got {got}")
        with self._lock:
            if self._closed:
                raise EngineError("the Pixel engine is closed")
            client = self._ready_client()
            started = time.perf_counter()
            try:
                depth, _compute_ms, nonfinite = client.infer(rgb, self._want, self._request_timeout)
            except RunnerError as exc:
                self._session.drop_connection()
                raise self._request_failure(exc) from None
            round_trip = (time.perf_counter() - started) * 1000.0
        self._last_nonfinite = nonfinite
        runner = client.last_timings_ms
        compute = runner.get("compute", 0.0) + runner.get("readback", 0.0)
        normalize = runner.get("normalize", 0.0)
        return Inference(depth=depth, timings_ms={"normalize": normalize, "compute": compute,
                                                  "transfer": max(round_trip - compute - normalize, 0.0)})

    def _ready_client(self):
        """The runner's client after a health check; restarts a dead runner once for this request."""
        if self._session.healthy():
            assert self._session.client is not None
            return self._session.client
        state = adb.device_state(self._phone.client, self._phone.serial)
        if state != "device":
            raise DeviceGoneError(f"The Pixel {self._phone.serial} is not connected any more ({state}). "
                                  "Check the USB cable.")
        try:
            self._session.restart()
        except DeviceLinkError as exc:
            raise DeviceLinkError(f"The runner on the Pixel had stopped and could not be restarted: {exc}") from None
        self._restarts += 1
        assert self._session.client is not None
        return self._session.client

    def _request_failure(self, exc: RunnerError) -> EngineError:
        state = adb.device_state(self._phone.client, self._phone.serial)
        if state != "device":
            return DeviceGoneError(f"The Pixel {self._phone.serial} was disconnected during the request "
                                   f"({state}): {exc}")
        return EngineError(f"The runner on the Pixel stopped during the request ({exc}). "
                           "It will be restarted with the next request.")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._session.stop()


class FallbackEngine:
    """The Pixel when it is available, else the host CPU, with a notice that says why."""

    def __init__(self, model_path: str | Path, serial: str | None = None,
                 host_factory: Callable[[Path], Engine] | None = None, **device_options) -> None:
        self._model_path = Path(model_path)
        self._serial = serial
        self._device_options = device_options
        self._host_factory = host_factory or _default_host_engine
        self._device: DeviceEngine | None = None
        self._host: Engine | None = None
        self._notice = ""
        self._lock = threading.Lock()
        self.try_device()

    def try_device(self) -> bool:
        """(Re)try the phone; on failure keep (or start) the host engine and explain why."""
        with self._lock:
            if self._device is not None:
                return True
            try:
                self._device = DeviceEngine(self._model_path, self._serial, **self._device_options)
            except EngineError as exc:
                self._use_host(f"Pixel not available: {exc}")
                return False
            self._notice = ""
            if self._host is not None:
                self._host.close()
                self._host = None
            return True

    def _use_host(self, reason: str) -> None:
        self._notice = f"{reason} — running on the host CPU"
        if self._host is None:
            self._host = self._host_factory(self._model_path)

    @property
    def on_device(self) -> bool:
        return self._device is not None

    @property
    def input_size(self) -> int:
        return (self._device or self._host).input_size  # type: ignore[union-attr]

    def info(self) -> EngineInfo:
        engine = self._device or self._host
        assert engine is not None
        info = engine.info()
        if self._notice:
            info = EngineInfo(info.engine, info.accelerator, info.model, {**info.details, "notice": self._notice})
        return info

    def infer(self, rgb: np.ndarray) -> Inference:
        device = self._device
        if device is not None:
            try:
                return device.infer(rgb)
            except DeviceGoneError as exc:
                with self._lock:
                    self._device = None
                    device.close()
                    self._use_host(f"Pixel disconnected: {exc}")
        assert self._host is not None
        return self._host.infer(rgb)

    def close(self) -> None:
        with self._lock:
            for engine in (self._device, self._host):
                if engine is not None:
                    engine.close()
            self._device = self._host = None


def _default_host_engine(model_path: Path) -> Engine:
    from backend.host_engine import HostEngine

    return HostEngine(model_path)


def measure_link(engine: DeviceEngine, runs: int = 10, rgb: np.ndarray | None = None) -> dict[str, float]:
    """Median round trip vs the runner's own time for `runs` requests (for benchmarks, not tests)."""
    size = engine.input_size
    image = rgb if rgb is not None else np.random.default_rng(0).integers(0, 256, (size, size, 3), np.uint8)
    engine.infer(image)
    round_trips, runner_ms, transfers = [], [], []
    for _ in range(runs):
        started = time.perf_counter()
        result = engine.infer(image)
        round_trips.append((time.perf_counter() - started) * 1000.0)
        runner_ms.append(result.timings_ms["compute"] + result.timings_ms["normalize"])
        transfers.append(result.timings_ms["transfer"])
    return {"round_trip_ms": statistics.median(round_trips), "runner_ms": statistics.median(runner_ms),
            "transfer_ms": statistics.median(transfers), "runs": float(runs)}
