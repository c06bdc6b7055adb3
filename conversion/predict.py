"""Canonical depth for a float32 NCHW input, from PyTorch (faithful model) or LiteRT (CPU).

Used to compare a conversion with its source: same input file, two backends, two .npy files.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


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


def predict_litert(model_path: str | Path, x: np.ndarray) -> np.ndarray:
    """LiteRT CompiledModel on the CPU (XNNPACK) with num_threads = all cores."""
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import CpuOptions, Options

    if not Path(model_path).is_file():
        raise PredictError(f"model file not found: {model_path}")
    options = Options(hardware_accelerators=HardwareAccelerator.CPU,
                      cpu_options=CpuOptions(num_threads=os.cpu_count() or 1))
    model = CompiledModel.from_file(str(model_path), options=options)
    try:
        sig = model.get_signature_list()
        key = next(iter(sig))
        in_names, out_names = sig[key]["inputs"], sig[key]["outputs"]
        if len(in_names) != 1 or len(out_names) != 1:
            raise PredictError(f"expected one input and one output, model has {in_names} -> {out_names}")
        in_shape = model.get_input_tensor_details(key)[in_names[0]]["shape"]
        if list(in_shape) != list(x.shape):
            raise PredictError(f"model expects input shape {list(in_shape)}, got {list(x.shape)}")
        out_shape = tuple(model.get_output_tensor_details(key)[out_names[0]]["shape"])
        inputs, outputs = model.create_input_buffers(0), model.create_output_buffers(0)
        inputs[0].write(x)
        model.run_by_index(0, inputs, outputs)
        return outputs[0].read(int(np.prod(out_shape)), np.float32).reshape(out_shape)
    finally:
        close = getattr(model, "close", None)
        if close is not None:
            close()


def run_predict(input_path: str | Path, output_path: str | Path, *, checkpoint: str | Path | None = None,
                model: str | Path | None = None) -> np.ndarray:
    if (checkpoint is None) == (model is None):
        raise PredictError("give exactly one of --checkpoint (PyTorch) or --model (LiteRT)")
    x = load_input(input_path)
    depth = predict_torch(checkpoint, x) if checkpoint is not None else predict_litert(model, x)
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    np.save(output_path, depth)
    return depth
