"""Canonical depth for a float32 NCHW input, from PyTorch (faithful model) or LiteRT (CPU or GPU).

Used to compare a conversion with its source: same input file, two backends, two .npy files.
On the GPU it runs LiteRT's GPU accelerator (WebGPU; on a machine without a GPU, Mesa's
software Vulkan driver lavapipe) with fp16 or fp32 arithmetic, the phone's numerics path.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend.gpu_adapter import parse_selected_adapter
from backend.host_engine import native_stderr_captured


class PredictError(ValueError):
    """Bad input for `predict`; the message says what to fix."""


def load_input(path: str | Path) -> np.ndarray:
    """A [1,3,H,W] float32 array from .npy, or a clear error."""
    path = Path(path)
    if not path.is_file():
        raise PredictError(f"input file not found: {path}")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise PredictError(f"{path} is not a readable .npy array ({exc})") from exc
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise PredictError(f"input must be a normalized NCHW image [1,3,H,W]; got shape {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise PredictError(f"input must be float32 (normalized RGB), got {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def predict_torch(checkpoint: str | Path, x: np.ndarray) -> np.ndarray:
    """Faithful PyTorch model on the CPU with all cores."""
    import torch

    from conversion.checkpoint import load_checkpoint

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_checkpoint(checkpoint).eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy().astype(np.float32)


@dataclass(frozen=True)
class LiteRtRun:
    """One LiteRT inference: the depth [1,1,H,W] float32 (m) and how it was made."""

    depth: np.ndarray
    accelerator: str  # "cpu" or "gpu"
    gpu_precision: str | None  # "fp16" or "fp32" arithmetic on the GPU, None on the CPU
    fully_accelerated: bool  # LiteRT: every op on the chosen accelerator, nothing left on the CPU
    compile_s: float
    run_s: float  # write + run + read of the run whose depth this is
    first_run_s: float  # the first run (pipeline creation, weight upload)
    native_log: list[str] = field(default_factory=list, repr=False)
    outputs: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # every output by name


def wait_until_cpu_idle(max_s: float = 3600.0, quiet_s: float = 5.0, busy: float = 0.02) -> None:
    """Block until this process stops using the CPU (less than `busy` of a core for `quiet_s`).

    A software GPU (lavapipe) compiles and runs the shaders on this process's own threads, so
    once their CPU time stops growing the result is ready, and LiteRT's read, which waits at
    most ~120 s and then leaves the buffer locked, returns at once. Gives up after `max_s`.
    """
    deadline = time.monotonic() + max_s
    last, quiet_since = time.process_time(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = time.process_time()  # CPU time of all threads of this process
        if now - last > busy * 0.5:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        last = now


def run_litert(model_path: str | Path, x: np.ndarray, accelerator: str = "cpu", gpu_precision: str = "fp16",
               runs: int = 1) -> LiteRtRun:
    """Compile `model_path` for `accelerator` and run `x` through it `runs` times (the last one counts).

    CPU: XNNPACK with all cores. GPU: GPU only (a graph with an op the GPU cannot run fails to
    compile), with `gpu_precision` arithmetic. LiteRT's output read waits at most ~120 s and a
    timed-out read leaves that buffer locked; a run (the first one also compiles the shaders)
    can take longer on a software GPU, so there the read waits until the GPU's CPU threads go
    idle, and a failed first read is retried once on fresh buffers.
    Raises PredictError for a missing file, a model with more than one input or output, or a
    shape mismatch.
    """
    return run_litert_inputs(model_path, [x], accelerator, gpu_precision, runs, single_io=True)


def run_litert_inputs(model_path: str | Path, xs: list[np.ndarray], accelerator: str = "cpu",
                      gpu_precision: str = "fp16", runs: int = 1, single_io: bool = False) -> LiteRtRun:
    """`run_litert` for a model with several inputs and outputs (e.g. one stage of a network).

    `xs` are the inputs in the converted module's positional order (litert-torch names them
    args_<i>; with 11+ inputs the signature lists them in another order, so they are matched by
    name). The run's `outputs` holds every output by signature name; `depth` is the first one.
    """
    from ai_edge_litert.compiled_model import CompiledModel

    from backend.host_engine import litert_options

    if not Path(model_path).is_file():
        raise PredictError(f"model file not found: {model_path}")
    try:
        options = litert_options(accelerator, os.cpu_count(), gpu_precision)
    except ValueError as exc:
        raise PredictError(str(exc)) from None
    started = time.perf_counter()
    error: Exception | None = None
    with native_stderr_captured() as native:
        try:
            model = CompiledModel.from_file(str(model_path), options=options)
        except (RuntimeError, ValueError) as exc:
            error = exc
    if error is not None:
        problems = [ln for ln in native if ln.startswith(("ERROR", "WARNING", "E0")) and "plugin" not in ln]
        raise PredictError(f"LiteRT could not compile {model_path} for the {accelerator.upper()}: {error}"
                           + "".join(f"\n{ln}" for ln in problems[-6:])) from error
    compile_s = time.perf_counter() - started
    try:
        sig = model.get_signature_list()
        key = next(iter(sig))
        in_names, out_names = sig[key]["inputs"], sig[key]["outputs"]
        if single_io and (len(in_names) != 1 or len(out_names) != 1):
            raise PredictError(f"expected one input and one output, model has {in_names} -> {out_names}")
        if len(in_names) != len(xs):
            raise PredictError(f"model has {len(in_names)} inputs {in_names}, got {len(xs)} arrays")
        positional = all(name.startswith("args_") for name in in_names)
        feeds = {name: np.ascontiguousarray(xs[int(name.rsplit("_", 1)[1]) if positional else i], dtype=np.float32)
                 for i, name in enumerate(in_names)}
        in_details, out_details = model.get_input_tensor_details(key), model.get_output_tensor_details(key)
        for name, x in feeds.items():
            if list(in_details[name]["shape"]) != list(x.shape):
                raise PredictError(f"model expects input shape {list(in_details[name]['shape'])}"
                                   f"{'' if single_io else f' for {name}'}, got {list(x.shape)}")
        out_shapes = {name: tuple(out_details[name]["shape"]) for name in out_names}
        timings, retried = [], False
        adapter = parse_selected_adapter(native) if accelerator == "gpu" else None

        def buffers() -> tuple[dict, dict]:
            return ({n: model.create_input_buffer_by_name(key, n) for n in in_names},
                    {n: model.create_output_buffer_by_name(key, n) for n in out_names})

        inputs, outputs = buffers()
        while len(timings) < runs:
            t0 = time.perf_counter()
            for name, buf in inputs.items():
                buf.write(feeds[name])
            model.run_by_name(key, inputs, outputs)
            if adapter is not None and adapter.is_software:
                wait_until_cpu_idle()
            try:
                results = {n: np.array(outputs[n].read(int(np.prod(shape)), np.float32).reshape(shape), copy=True)
                           for n, shape in out_shapes.items()}
            except RuntimeError:
                if accelerator != "gpu" or timings or retried:
                    raise
                retried = True  # LiteRT's read gave up on the first GPU run: fresh buffers, run again
                inputs, outputs = buffers()
                continue
            timings.append(time.perf_counter() - t0)
        return LiteRtRun(results[out_names[0]], accelerator, gpu_precision if accelerator == "gpu" else None,
                         bool(model.is_fully_accelerated()), compile_s, timings[-1], timings[0], native, results)
    finally:
        with native_stderr_captured():
            model.close()


def predict_litert(model_path: str | Path, x: np.ndarray, accelerator: str = "cpu",
                   gpu_precision: str = "fp16") -> np.ndarray:
    """LiteRT depth on the CPU (XNNPACK, all cores) or the GPU (see run_litert)."""
    return run_litert(model_path, x, accelerator, gpu_precision).depth


def depth_errors(depth: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Agreement of a depth map with a reference of the same shape (both in m, reference > 0).

    corr: Pearson correlation; mean_rel / p99_rel / max_rel: mean, 99th percentile and max of
    |depth - reference| / reference over all pixels (the issue's fidelity measures).
    """
    if depth.shape != reference.shape:
        raise ValueError(f"shapes differ: {depth.shape} vs {reference.shape}")
    d, r = depth.astype(np.float64).ravel(), reference.astype(np.float64).ravel()
    rel = np.abs(d - r) / r
    return {"corr": float(np.corrcoef(d, r)[0, 1]), "mean_rel": float(rel.mean()),
            "p99_rel": float(np.percentile(rel, 99)), "max_rel": float(rel.max())}


def run_predict(input_path: str | Path, output_path: str | Path, *, checkpoint: str | Path | None = None,
                model: str | Path | None = None, accelerator: str = "cpu", gpu_precision: str = "fp16") -> np.ndarray:
    if (checkpoint is None) == (model is None):
        raise PredictError("give exactly one of --checkpoint (PyTorch) or --model (LiteRT)")
    if checkpoint is not None and accelerator != "cpu":
        raise PredictError("--accelerator applies to --model (LiteRT); PyTorch runs on the CPU")
    x = load_input(input_path)
    depth = (predict_torch(checkpoint, x) if checkpoint is not None
             else predict_litert(model, x, accelerator, gpu_precision))
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    np.save(output_path, depth)
    return depth
