"""DeviceEngine: the Engine protocol on a USB-connected Pixel through the resident runner.

The runner keeps the compiled model on the phone's GPU, so a request only ships 602 KB of
uint8 RGB and gets 401 KB of float16 depth back. Lifecycle as in scrcpy: the constructor
only records what to do; start() finds the phone, pushes, starts the runner and shakes
hands; stop() ends the runner (start() may follow); close() ends it for good. Before each
request a PING checks the runner; a dead runner is restarted once for that request. A
runner that dies DURING a request is reported (it may be the input that crashed it) and
restarted on the next one. Falling back to the host is device.backends' job.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from backend.engine import EngineError, EngineInfo, Inference
from backend.model_info import ModelInfo, ModelInfoError, read_model_info
from device import adb
from device.adb import DeviceGoneError, DeviceLinkError, Phone
from device.protocol import Accelerator, RunnerClient, RunnerError
from device.session import LinkSettings, RunnerFiles, RunnerSession, SessionStart, android_runner_files

_ACCELERATOR_LABELS = {Accelerator.GPU_OPENCL: "GPU (OpenCL", Accelerator.GPU_OPENGL: "GPU (OpenGL",
                       Accelerator.GPU_WEBGPU: "GPU (WebGPU"}


class DeviceEngine:
    """Engine protocol on the phone; `files` overrides what is pushed (tests push the host build)."""

    def __init__(self, model_path: str | Path, serial: str | None = None,
                 settings: LinkSettings = LinkSettings(), files: RunnerFiles | None = None) -> None:
        self._model_path = Path(model_path)
        self._serial = serial
        self._settings = settings
        self._files = files
        self._lock = threading.Lock()
        self._closed = False
        self._restarts = 0
        self._last_nonfinite = 0
        self._model_info: ModelInfo | None = None
        self._phone: Phone | None = None
        self._abi = self._device_model = ""
        self._session: RunnerSession | None = None

    def start(self) -> DeviceEngine:
        """Find the phone, push what changed, start the runner and handshake; returns self.

        Raises EngineError (DeviceLinkError for the phone side) with a message that says what
        to do. Calling it on a started engine does nothing.
        """
        with self._lock:
            if self._closed:
                raise EngineError("the Pixel engine is closed")
            if self._session is None or self._session.started is None:
                self._start_locked()
        return self

    def _start_locked(self) -> None:
        settings = self._settings
        try:
            self._model_info = read_model_info(self._model_path)
        except (ModelInfoError, OSError) as exc:
            raise EngineError(str(exc)) from exc
        files = self._files or android_runner_files()
        client = adb.adb_client(settings.adb_host, settings.adb_port, settings.start_server, settings.adb_timeout)
        self._phone = adb.choose_device(client, self._serial)
        self._abi = adb.check_abi(self._phone, settings.expected_abi, settings.adb_timeout)
        self._device_model = adb.device_model(self._phone, settings.adb_timeout)
        session = RunnerSession(self._phone, self._model_path, self._model_info, files, settings)
        started = session.start()
        if started.hello.input_size != self._model_info.input_size:
            session.stop()
            raise EngineError(f"The runner reports input size {started.hello.input_size}, the model file "
                              f"says {self._model_info.input_size}")
        self._session = session

    def _started(self) -> tuple[RunnerSession, SessionStart, ModelInfo, Phone]:
        session = self._session
        if session is None or session.started is None or self._model_info is None or self._phone is None:
            raise EngineError("the Pixel engine is not started (call start())")
        return session, session.started, self._model_info, self._phone

    @property
    def serial(self) -> str:
        return self._started()[3].serial

    @property
    def input_size(self) -> int:
        if self._model_info is None:
            raise EngineError("the Pixel engine is not started (call start())")
        return self._model_info.input_size

    def info(self) -> EngineInfo:
        session, started, model_info, phone = self._started()
        push, runner_info = started.push, started.info
        details = {
            "device": self._device_model,
            "serial": phone.serial,
            "abi": self._abi,
            "runner_version": started.hello.version,
            "live_accelerator": str(runner_info.get("accelerator", "?")),
            "compile_ms": f"{float(runner_info.get('compile_ms', 0.0)):.0f}",
            "warmup_ms": f"{float(runner_info.get('warmup_ms', 0.0)):.0f}",
            "session_start_ms": f"{started.start_ms:.0f}",
            "pushed": (f"{', '.join(push.pushed)} ({push.bytes_sent / 1e6:.1f} MB in {push.seconds:.1f} s)"
                       if push.pushed else "nothing (files on the phone are up to date)"),
            "runner_restarts": str(self._restarts),
        }
        if runner_info.get("gpu_error"):
            details["gpu_error"] = str(runner_info["gpu_error"])
        if self._last_nonfinite:
            details["nonfinite_values"] = str(self._last_nonfinite)
        return EngineInfo(engine=f"{self._device_model} runner", accelerator=self._accelerator_label(started),
                          model=model_info, details=details)

    def _accelerator_label(self, started: SessionStart) -> str:
        hello = started.hello
        if hello.accelerator in _ACCELERATOR_LABELS:
            return f"{_ACCELERATOR_LABELS[hello.accelerator]}, {hello.precision.name.lower()})"
        if self._settings.accelerator == "gpu":
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
            session, _, _, phone = self._started()
            client = self._ready_client(session, phone)
            started = time.perf_counter()
            try:
                reply = client.infer(rgb, self._settings.want, self._settings.request_timeout)
            except RunnerError as exc:
                session.drop_connection()
                raise self._request_failure(phone, exc) from None
            round_trip = (time.perf_counter() - started) * 1000.0
        self._last_nonfinite = reply.nonfinite
        runner = reply.timings_ms
        compute = runner["compute"] + runner["readback"]
        normalize = runner["normalize"]
        return Inference(depth=reply.depth, timings_ms={"normalize": normalize, "compute": compute,
                                                        "transfer": max(round_trip - compute - normalize, 0.0)})

    def _ready_client(self, session: RunnerSession, phone: Phone) -> RunnerClient:
        """The runner's client after a health check; restarts a dead runner once for this request."""
        if session.healthy():
            assert session.client is not None
            return session.client
        state = adb.device_state(phone.client, phone.serial)
        if state != "device":
            raise DeviceGoneError(f"The Pixel {phone.serial} is not connected any more ({state}). "
                                  "Check the USB cable.")
        try:
            session.restart()
        except DeviceLinkError as exc:
            raise DeviceLinkError(f"The runner on the Pixel had stopped and could not be restarted: {exc}") from None
        self._restarts += 1
        assert session.client is not None
        return session.client

    @staticmethod
    def _request_failure(phone: Phone, exc: RunnerError) -> EngineError:
        state = adb.device_state(phone.client, phone.serial)
        if state != "device":
            return DeviceGoneError(f"The Pixel {phone.serial} was disconnected during the request "
                                   f"({state}): {exc}")
        return EngineError(f"The runner on the Pixel stopped during the request ({exc}). "
                           "It will be restarted with the next request.")

    def stop(self) -> None:
        """Stop the runner on the phone (files stay there for the next start)."""
        with self._lock:
            if self._session is not None:
                self._session.stop()
                self._session = None

    def close(self) -> None:
        """Stop the runner and refuse any later start or request."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._session is not None:
                self._session.stop()
                self._session = None
