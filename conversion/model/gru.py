"""Multi-scale ConvGRU refinement (RAFT-Stereo style) and the convex x4 upsampling.

Parity notes: pooling is avg_pool2d(3, 2, 1) with count_include_pad=True; `interp` is bilinear
with align_corners=True; the convex mask is 0.25 * conv, laid out as channel k*16 + i*4 + j
(k: 3x3 neighbour, i/j: sub-row/col), and neighbours are taken with zero padding, which pulls
borders toward the 200 m that a zero state means. The state is not scaled by 4 when upsampled.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

UPSAMPLE = 4  # 2 ** n_downsample
STATE_CHANNELS = 6  # depth, depth confidence, normal xyz, kappa
MASK_SCALE = 0.25  # upstream: mask = .25 * self.mask(net[0])


def interp(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, like.shape[2:], mode="bilinear", align_corners=True)


class Scale(nn.Module):
    """Multiply by a constant; a module (no weights) so an exporter can fold it into the conv before."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class StateFeature(nn.Module):
    """Feature: the GRU state [B,6,H,W] as the 1/4 GRU reads it (upstream: the state itself).

    The identity here; a module so an exporter that holds the state in another unit can map
    it back to upstream's before the GRU sees it.
    """

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return state


class ConvGRU(nn.Module):
    """Convolutional GRU; cz, cr, cq are the precomputed context terms."""

    def __init__(self, hidden_dim: int, input_dim: int) -> None:
        super().__init__()
        self.convz = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=1)
        self.convr = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=1)
        self.convq = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=1)

    def forward(self, h: torch.Tensor, cz: torch.Tensor, cr: torch.Tensor, cq: torch.Tensor,
                *inputs: torch.Tensor) -> torch.Tensor:
        x = torch.cat(inputs, dim=1)
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(self.convz(hx) + cz)
        r = torch.sigmoid(self.convr(hx) + cr)
        q = torch.tanh(self.convq(torch.cat([r * h, x], dim=1)) + cq)
        return (1 - z) * h + z * q


class FlowHead(nn.Module):
    """State update: 2 depth channels and 4 normal channels from the 1/4 hidden state."""

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.conv1d = nn.Conv2d(input_dim, hidden_dim // 2, 3, padding=1)
        self.conv2d = nn.Conv2d(hidden_dim // 2, 2, 3, padding=1)
        self.conv1n = nn.Conv2d(input_dim, hidden_dim // 2, 3, padding=1)
        self.conv2n = nn.Conv2d(hidden_dim // 2, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth = self.conv2d(F.relu(self.conv1d(x)))
        normal = self.conv2n(F.relu(self.conv1n(x)))
        return torch.cat((depth, normal), dim=1)


class BasicMultiUpdateBlock(nn.Module):
    """Three GRUs (1/4 `gru08`, 1/7 `gru16`, 1/14 `gru32`), the flow head and the convex mask."""

    def __init__(self, hidden_dims: list[int]) -> None:
        super().__init__()
        self.gru08 = ConvGRU(hidden_dims[2], STATE_CHANNELS + hidden_dims[1])
        self.gru16 = ConvGRU(hidden_dims[1], hidden_dims[0] + hidden_dims[2])
        self.gru32 = ConvGRU(hidden_dims[0], hidden_dims[1])
        self.flow_head = FlowHead(hidden_dims[2], 2 * hidden_dims[2])
        self.mask = nn.Sequential(nn.Conv2d(hidden_dims[2], hidden_dims[2], 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(hidden_dims[2], UPSAMPLE * UPSAMPLE * 9, 1))
        self.mask_scale = Scale(MASK_SCALE)
        self.pool2x = nn.AvgPool2d(3, stride=2, padding=1)  # count_include_pad=True, as upstream

    def step32(self, net: list[torch.Tensor], inp: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        return [net[0], net[1], self.gru32(net[2], *inp[2], self.pool2x(net[1]))]

    def step16(self, net: list[torch.Tensor], inp: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        h16 = self.gru16(net[1], *inp[1], interp(self.pool2x(net[0]), net[1]), interp(net[2], net[1]))
        return [net[0], h16, net[2]]

    def step08(self, net: list[torch.Tensor], inp: list[list[torch.Tensor]],
               state: torch.Tensor) -> list[torch.Tensor]:
        return [self.gru08(net[0], *inp[0], state, interp(net[1], net[0])), net[1], net[2]]

    def forward(self, net: list[torch.Tensor], inp: list[list[torch.Tensor]],
                state: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """One refinement iteration with the slow-fast schedule: gru32 x3, gru16 x2, gru08 x1.

        Returns (new hidden states, convex mask logits, state delta).
        """
        net = self.step32(net, inp)
        net = self.step16(self.step32(net, inp), inp)
        net = self.step08(self.step16(self.step32(net, inp), inp), inp, state)
        return net, self.mask_scale(self.mask(net[0])), self.flow_head(net[0])


def convex_upsample(state: torch.Tensor, mask: torch.Tensor, factor: int = UPSAMPLE) -> torch.Tensor:
    """[N,D,H,W] -> [N,D,fH,fW]: each output pixel is a softmax-weighted mix of its 3x3 neighbours."""
    n, d, h, w = state.shape
    weights = torch.softmax(mask.view(n, 1, 9, factor, factor, h, w), dim=2)
    neighbours = F.unfold(state, [3, 3], padding=1).view(n, d, 9, 1, 1, h, w)
    up = torch.sum(weights * neighbours, dim=2)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(n, d, factor * h, factor * w)


class ConvexUpsample(nn.Module):
    """`convex_upsample` by a fixed factor, as a module so an exporter can swap it for a GPU-safe form."""

    def __init__(self, factor: int = UPSAMPLE) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, state: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return convex_upsample(state, mask, self.factor)
