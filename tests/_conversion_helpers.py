"""Helpers for the conversion tests: convert a small torch module and run it with LiteRT."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn


class AsDepth(nn.Module):
    """Wrap a tensor function as a module with our I/O names (input `image`, output `depth`)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"depth": self.fn(image)}


def convert_small(module: nn.Module, sample: torch.Tensor, path: Path) -> Path:
    """litert-torch conversion of `module` (wrapped by AsDepth) to `path`."""
    from conversion.convert import export_to_tflite_sample

    return export_to_tflite_sample(AsDepth(module).eval(), sample, path)


def run_litert(path: Path, x: np.ndarray) -> np.ndarray:
    """One CPU inference of a single-input, single-output .tflite."""
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import CpuOptions, Options

    options = Options(hardware_accelerators=HardwareAccelerator.CPU,
                      cpu_options=CpuOptions(num_threads=os.cpu_count() or 1))
    model = CompiledModel.from_file(str(path), options=options)
    key = next(iter(model.get_signature_list()))
    shape = model.get_output_tensor_details(key)["depth"]["shape"]
    ins, outs = model.create_input_buffers(0), model.create_output_buffers(0)
    ins[0].write(np.ascontiguousarray(x, dtype=np.float32))
    model.run_by_index(0, ins, outs)
    return outs[0].read(int(np.prod(shape)), np.float32).reshape(shape)
