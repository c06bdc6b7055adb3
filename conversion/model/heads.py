"""Initial depth / normal heads at 1/4 resolution and the shared depth clamp.

Depth is an expectation over 256 log-spaced bins (0.1..200 m). Upstream builds the bins on
"cuda"; here they are a non-persistent CPU buffer (same formula, so not in the state dict).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MIN_DEPTH = 0.1
MAX_DEPTH = 200.0
REGRESS_SCALE = 100.0  # the GRU state holds (depth - 200) / 100
NUM_BINS = 256
MIN_KAPPA = 0.01


def depth_bins(num_bins: int = NUM_BINS) -> torch.Tensor:
    """exp(linspace(log 0.1, log 200)) in float32, as upstream computes it."""
    return torch.exp(torch.linspace(math.log(MIN_DEPTH), math.log(MAX_DEPTH), num_bins))


def clamp_depth(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0.1, 200] with upstream's ReLU formula.

    It rounds differently from torch.clamp: in float32 the low bound comes out as
    200 - 199.9 = 0.1000061 and interior values pass through a +-0.1 / +-200 round trip.
    """
    y = F.relu(x - MIN_DEPTH) + MIN_DEPTH
    return MAX_DEPTH - F.relu(MAX_DEPTH - y)


def state_to_depth(state_depth: torch.Tensor) -> torch.Tensor:
    """GRU depth channel -> clamped depth in meters."""
    return clamp_depth(state_depth * REGRESS_SCALE + MAX_DEPTH)


class DepthToState(nn.Module):
    """Encode: depth (m) [B,1,H,W] -> the GRU state's depth channel (clamp(d) - 200) / 100.

    A module (no weights) so an exporter can hold the state in another unit.
    """

    def forward(self, depth: torch.Tensor) -> torch.Tensor:
        return (clamp_depth(depth) - MAX_DEPTH) / REGRESS_SCALE


def norm_normalize(norm_out: torch.Tensor) -> torch.Tensor:
    """Unit-normalize xyz and map the 4th channel to kappa = elu + 1 + 0.01."""
    norm_x, norm_y, norm_z, kappa = torch.split(norm_out, 1, dim=1)
    norm = torch.sqrt(norm_x ** 2.0 + norm_y ** 2.0 + norm_z ** 2.0) + 1e-10
    kappa = F.elu(kappa) + 1.0 + MIN_KAPPA
    return torch.cat([norm_x / norm, norm_y / norm, norm_z / norm, kappa], dim=1)


def expected_depth(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Softmax over the bin channel, then the expectation: [B,K,H,W] -> [B,1,H,W]."""
    prob = logits.softmax(dim=1)
    return torch.sum(prob * bins.view(1, -1, 1, 1), 1).unsqueeze(1)


class ExpectedDepth(nn.Module):
    """`expected_depth` over the 256 depth bins, which it holds as a non-persistent buffer."""

    def __init__(self, num_bins: int = NUM_BINS) -> None:
        super().__init__()
        self.register_buffer("bins", depth_bins(num_bins), persistent=False)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return expected_depth(logits, self.bins)


class NormNormalize(nn.Module):
    """`norm_normalize` as a module, so an exporter can swap it for a GPU-safe form."""

    def forward(self, norm_out: torch.Tensor) -> torch.Tensor:
        return norm_normalize(norm_out)


def depth_regressor(in_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, NUM_BINS, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(NUM_BINS, NUM_BINS, 1))


def normal_predictor(in_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, 128, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(128, 128, 1), nn.ReLU(),
                         nn.Conv2d(128, 128, 1), nn.ReLU(),
                         nn.Conv2d(128, 3, 1))
