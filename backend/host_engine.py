"""The host engine: the .tflite on this computer's CPU (or GPU) through LiteRT's CompiledModel.

Loaded once per process with buffers created once, so a request pays only for
normalize + write + run + read. LiteRT defaults to ONE thread; we ask for every core.
One lock serializes write/run/read because the buffers are shared between requests.
On the GPU it uses the wheel's WebGPU accelerator (Vulkan, Metal or D3D12 underneath) and
reports the adapter Dawn selected; a software adapter can be refused (Auto does).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from backend.engine import EngineError, EngineInfo, Inference
from backend.gpu_adapter import GpuAdapter, parse_selected_adapter
from backend.model_info import ModelInfo, ModelInfoError, read_model_info
from backend.preprocess import normalize

log = logging.getLogger(__name__)
ACCELERATORS = ("cpu", "gpu")
GPU_PRECISIONS = ("fp16", "fp32")


class SoftwareGpuError(EngineError):
    """LiteRT's GPU here is a CPU rasterizer (e.g. llvmpipe), far slower than the CPU path."""


def litert_options(accelerator: str = "cpu", threads: int | None = None, gpu_precision: str = "fp16"):
    """LiteRT compile options for the CPU (XNNPACK, `threads`) or the GPU (fp16 or fp32 arithmetic).

    On the GPU, benchmark_mode makes Run wait until the GPU has finished: without it Run only
    queues the work and the output read waits for it, at most ~120 s inside LiteRT, after which
    the buffer stays locked for the model's life (measured on lavapipe, ai-edge-litert 2.3.0).
    Raises ValueError for an unknown accelerator or precision.
    """
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import CpuOptions, GpuOptions, Options

    if accelerator == "cpu":
        return Options(hardware_accelerators=HardwareAccelerator.CPU,
                       cpu_options=CpuOptions(num_threads=max(1, threads or os.cpu_count() or 1)))
    if accelerator != "gpu":
        raise ValueError(f"accelerator must be one of {ACCELERATORS}, got {accelerator!r}")
    if gpu_precision not in GPU_PRECISIONS:
        raise ValueError(f"GPU precision must be one of {GPU_PRECISIONS}, got {gpu_precision!r}")
    return Options(hardware_accelerators=HardwareAccelerator.GPU,
                   gpu_options=GpuOptions(enforce_f32=gpu_precision == "fp32", benchmark_mode=True))


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[list[str]]:
    """Send fd 2 to a temp file while LiteRT's C++ code prints INFO lines; yield them after.

    LiteRT logs straight to file descriptor 2 with no Python switch to quiet it. The
    captured lines are kept so a load failure can still show LiteRT's own reason.
    """
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())


def _problems(lines: list[str]) -> str:
    """LiteRT's WARNING/ERROR lines, minus the plugin probes that always fail on a plain PC."""
    keep = [ln for ln in lines if not ln.startswith("INFO") and "plugin" not in ln and "NPU" not in ln]
    return "\n".join(keep[-8:])


def _matching_signature(model, size: int) -> tuple[str, str, str]:
    """(signature key, input name, output name) of a 1-in 1-out [1,3,S,S] -> [1,1,S,S] float32 signature."""
    found: list[str] = []
    want_in, want_out = [1, 3, size, size], [1, 1, size, size]
    for key in model.get_signature_list():
        inputs = model.get_input_tensor_details(key)
        outputs = model.get_output_tensor_details(key)
        described = ", ".join(f"{n} {d['shape']} {d['dtype']}" for n, d in inputs.items())
        described += " -> " + ", ".join(f"{n} {d['shape']} {d['dtype']}" for n, d in outputs.items())
        found.append(f"'{key}': {described}")
        if len(inputs) != 1 or len(outputs) != 1:
            continue
        (in_name, in_d), (out_name, out_d) = next(iter(inputs.items())), next(iter(outputs.items()))
        if (list(in_d["shape"]) == want_in and list(out_d["shape"]) == want_out
                and in_d["dtype"] == "float32" and out_d["dtype"] == "float32"):
            return key, in_name, out_name
    raise EngineError(
        f"This model does not have the Metric3D interface: expected one float32 input "
        f"{want_in} and one float32 output {want_out}, found "
        + ("; ".join(found) if found else "no signatures") + "."
    )


class HostEngine:
    """Engine protocol on the host CPU (XNNPACK) or, with accelerator="gpu", LiteRT's GPU accelerator.

    allow_software_gpu=False refuses a software adapter (SoftwareGpuError) right after the
    compile, before the warm-up run that would take minutes there.
    """

    def __init__(self, model_path: str | Path, threads: int | None = None, accelerator: str = "cpu",
                 gpu_precision: str = "fp16", allow_software_gpu: bool = True) -> None:
        from ai_edge_litert.compiled_model import CompiledModel

        self._threads = max(1, threads or os.cpu_count() or 1)
        self._accelerator, self._gpu_precision = accelerator, gpu_precision
        self.adapter: GpuAdapter | None = None
        self.fully_accelerated: bool | None = None
        try:
            self._model_info: ModelInfo = read_model_info(model_path)
            options = litert_options(accelerator, self._threads, gpu_precision)
        except (ModelInfoError, OSError, ValueError) as exc:
            raise EngineError(str(exc)) from exc
        started = time.perf_counter()
        load_error: Exception | None = None
        with native_stderr_captured() as native:
            try:
                model = CompiledModel.from_file(str(model_path), options=options)
            except (RuntimeError, ValueError) as exc:
                load_error = exc
        if load_error is None and accelerator == "gpu":
            self._check_gpu(model, native, allow_software_gpu)
        if load_error is None:
            with native_stderr_captured() as warm_native:
                try:
                    self._load(model)
                except (RuntimeError, ValueError) as exc:
                    load_error = exc
            native += warm_native
        if isinstance(load_error, EngineError):
            raise load_error
        if load_error is not None:
            detail = _problems(native)
            raise EngineError(f"LiteRT could not load {model_path}: {load_error}"
                              + (f"\n{detail}" if detail else "")) from load_error
        self._load_ms = (time.perf_counter() - started) * 1000.0

    def _check_gpu(self, model, native: list[str], allow_software: bool) -> None:
        """Record the adapter Dawn selected and full acceleration; refuse a software one if asked."""
        self.adapter = parse_selected_adapter(native)
        self.fully_accelerated = bool(model.is_fully_accelerated())
        refusal = ""
        if self.adapter is None:
            refusal = "LiteRT did not say which GPU adapter it selected"
        elif self.adapter.is_software:
            refusal = (f"LiteRT's GPU here is a software adapter ({self.adapter.label}), "
                       "about 30x slower than the CPU")
        if refusal and not allow_software:
            with native_stderr_captured():
                model.close()
            raise SoftwareGpuError(refusal)

    def _load(self, model) -> None:
        """Check the signature, create the buffers once, and warm up (XNNPACK packs weights on the first run)."""
        self._model = model
        size = self._model_info.input_size
        self._signature, self._input_name, self._output_name = _matching_signature(model, size)
        self._signature_index = list(model.get_signature_list()).index(self._signature)
        self._inputs = model.create_input_buffers(self._signature_index)
        self._outputs = model.create_output_buffers(self._signature_index)
        self._lock = threading.Lock()
        self._closed = False
        self.infer(np.zeros((size, size, 3), np.uint8))

    @property
    def input_size(self) -> int:
        return self._model_info.input_size

    def info(self) -> EngineInfo:
        details = {"signature": f"{self._signature}: {self._input_name} -> {self._output_name}",
                   "load_ms": f"{self._load_ms:.0f}"}
        if self._accelerator == "gpu":
            adapter = self.adapter.label if self.adapter else "adapter not reported"
            accelerator = f"GPU (LiteRT WebGPU on {adapter}; {self._gpu_precision} arithmetic)"
            details["fully_accelerated"] = str(self.fully_accelerated)
        else:
            accelerator = f"CPU (XNNPACK, {self._threads} thread{'s' if self._threads != 1 else ''})"
        return EngineInfo(engine="Host LiteRT", accelerator=accelerator, model=self._model_info, details=details)

    def infer(self, rgb: np.ndarray) -> Inference:
        size = self.input_size
        if rgb.shape != (size, size, 3) or rgb.dtype != np.uint8:
            raise EngineError(f"engine input must be uint8 [{size},{size},3], got {rgb.dtype} {list(rgb.shape)}")
        t0 = time.perf_counter()
        tensor = normalize(rgb, self._model_info.mean, self._model_info.std)
        t1 = time.perf_counter()
        with self._lock:
            if self._closed:
                raise EngineError("the host engine is closed")
            self._inputs[0].write(tensor)
            self._model.run_by_index(self._signature_index, self._inputs, self._outputs)
            flat = self._outputs[0].read(size * size, np.float32)
        t2 = time.perf_counter()
        depth = np.array(flat, dtype=np.float32, copy=True).reshape(size, size)
        return Inference(depth=depth, timings_ms={"normalize": (t1 - t0) * 1000.0, "compute": (t2 - t1) * 1000.0})

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with native_stderr_captured():
                self._inputs = self._outputs = []
                self._model.close()
                self._model = None
