"""The GPU-safe export form of Metric3D v2 ViT-S, built from a loaded faithful model.

Same weights, same math as conversion.model.Metric3D at one fixed input size, written with
ops the LiteRT GPU delegate runs (see ops.py). The faithful model is only read: its state
dict, its own pos-embed resize for this grid and its depth bins.
"""
from __future__ import annotations

import torch
from torch import nn

from conversion.export.decoder import ExportDecoder
from conversion.export.encoder import PATCH, ExportViT

INPUT_SIZE = 448


def official_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with the checkpoint's `depth_model.` prefix removed (encoder.*, decoder.*)."""
    return {k.removeprefix("depth_model."): v.detach().float() for k, v in model.state_dict().items()}


class ExportMetric3D(nn.Module):
    """image [1,3,S,S] (normalized RGB) -> {"depth": canonical depth [1,1,S,S]}."""

    def __init__(self, faithful: nn.Module, size: int = INPUT_SIZE) -> None:
        super().__init__()
        if size % 28:
            raise ValueError(f"input size must be a multiple of 28, got {size}")
        from conversion.model.heads import depth_bins

        grid = size // PATCH
        sd = official_state_dict(faithful)
        with torch.no_grad():
            pos_embed = faithful.encoder.pos_embed_for(grid, grid).detach().float()
            self.encoder = ExportViT(sd, pos_embed)
            self.decoder = ExportDecoder(sd, grid, depth_bins())
        self.size = size
        self.requires_grad_(False)
        self.eval()

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"depth": self.decoder(self.encoder(image))}
