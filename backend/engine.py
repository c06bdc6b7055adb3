"""The engine interface: what the pipeline needs from whatever runs the network.

The host LiteRT engine (backend.host_engine) and the Pixel runner (device.engine)
both implement it, so the pipeline and the app never care where the model runs.
Engines take the network-resolution uint8 RGB image rather than a float tensor:
the phone link then carries 1 byte per channel, and each engine normalizes where
it is cheapest (host: numpy; runner: C, next to the GPU upload).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from backend.model_info import ModelInfo


class EngineError(RuntimeError):
    """A failure the user should read as is (unplugged phone, crashed runner, bad model)."""


@dataclass(frozen=True)
class EngineInfo:
    """What the info panel shows about the thing that computed the depth."""

    engine: str  # e.g. "Host LiteRT" or "Pixel 8a runner"
    accelerator: str  # e.g. "CPU (XNNPACK, 2 threads)" or "GPU (OpenCL, fp16)"
    model: ModelInfo
    details: dict[str, str] = field(default_factory=dict)  # device serial, compile time, ...


@dataclass(frozen=True)
class Inference:
    """Canonical depth for one image and where the time went."""

    depth: np.ndarray  # float32 [S, S], meters for the canonical camera (focal 1000 px at S)
    timings_ms: dict[str, float]  # subset of {"normalize", "transfer", "compute"}


class Engine(Protocol):
    """Runs the depth network on one S x S uint8 RGB image (S = input_size)."""

    @property
    def input_size(self) -> int: ...

    def info(self) -> EngineInfo: ...

    def infer(self, rgb: np.ndarray) -> Inference: ...

    def close(self) -> None: ...
