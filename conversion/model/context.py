"""Context encoder: per-scale residual blocks that give the GRU its initial hidden state and context.

Upstream registers each ResidualBlock's third LayerNorm twice (as `norm3` and as `downsample.1`),
so the checkpoint holds both key names for one tensor; sharing the module here reproduces that.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW map (torch default eps 1e-5, unlike the ViT's 1e-6)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ResidualBlock(nn.Module):
    """RAFT residual block with LayerNorm2d and a 1x1 projection shortcut (in != out channels)."""

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
        self.norm1 = LayerNorm2d(planes)
        self.norm2 = LayerNorm2d(planes)
        self.norm3 = LayerNorm2d(planes)
        self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu(self.downsample(x) + y)


def _context_head(in_planes: int, planes: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(in_planes, planes), nn.Conv2d(planes, planes, 3, padding=1))


class ContextFeatureEncoder(nn.Module):
    """For each scale (1/4, 1/7, 1/14): [hidden-state head, context head]."""

    def __init__(self, in_dims: list[int], hidden_dims: list[int], context_dims: list[int]) -> None:
        super().__init__()
        out_dims = (hidden_dims, context_dims)
        self.outputs04 = nn.ModuleList(_context_head(in_dims[0], d[0]) for d in out_dims)
        self.outputs08 = nn.ModuleList(_context_head(in_dims[1], d[1]) for d in out_dims)
        self.outputs16 = nn.ModuleList(_context_head(in_dims[2], d[2]) for d in out_dims)

    def forward(self, x_4: torch.Tensor, x_8: torch.Tensor, x_16: torch.Tensor) -> list[list[torch.Tensor]]:
        """Returns [[hidden, context] at 1/4, at 1/7, at 1/14] (before tanh / relu)."""
        return [[head(x) for head in heads]
                for heads, x in ((self.outputs04, x_4), (self.outputs08, x_8), (self.outputs16, x_16))]
