"""The GPU-safe export form of Metric3D v2 ViT-S: the faithful model, transformed (transform.py).

Same modules, weights and math as conversion.model.Metric3D, at one fixed input size, with
only ops the LiteRT GPU delegate runs (see ops.py). The caller's faithful model is not changed.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from backend.model_info import DEFAULT_INPUT_SIZE
from conversion.export.transform import gpu_safe_
from conversion.model import Metric3D
from conversion.model.metric3d import SIZE_MULTIPLE

INPUT_SIZE = DEFAULT_INPUT_SIZE


class ExportMetric3D(nn.Module):
    """image [1,3,S,S] (normalized RGB) -> {"depth": canonical depth [1,1,S,S]}.

    Raises ValueError for a size that is not a multiple of 28, or (in forward) another input shape.
    """

    def __init__(self, faithful: Metric3D, size: int = INPUT_SIZE) -> None:
        super().__init__()
        if size % SIZE_MULTIPLE:
            raise ValueError(f"input size must be a multiple of {SIZE_MULTIPLE}, got {size}")
        grid = size // faithful.encoder.patch_size
        self.model = gpu_safe_(copy.deepcopy(faithful).float(), grid=(grid, grid))
        self.size = size

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if tuple(image.shape) != (1, 3, self.size, self.size):
            raise ValueError(f"this export form takes [1,3,{self.size},{self.size}], got {list(image.shape)}")
        return {"depth": self.model(image)}
