"""DPT-style readout (tokens -> multi-scale feature maps) and fusion, as in RAFTDepthNormalDPT5.

Parity notes (upstream `RAFTDepthNormalDPTDecoder5.py`):
* the readout adds a bias-free projection of [cls, 4 registers] (1920 features) to every patch;
* 1/7 is a ConvTranspose2d(k2, s2); 1/4 is *nearest* x3.5 then a 1x1 conv;
* fusion resizes are bilinear with align_corners=True (x2, then x7/4);
* every resize is an `nn.Upsample` submodule (no weights, so no checkpoint keys), so an
  exporter can swap it for a fixed-size form;
* ConvBlock's residual is relu(x) + conv(...): upstream's in-place ReLU. That same in-place
  ReLU also overwrites the caller's read_1/read_2 maps; `DecoderFeature.forward` leaves its
  inputs alone, and the decoder applies that ReLU explicitly where the context encoder reads them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Readout(nn.Module):
    """GELU(Linear(patch) + Linear_nobias(concat(cls, registers))) on [B,H,W,C] patch features."""

    def __init__(self, dim: int, num_register_tokens: int) -> None:
        super().__init__()
        self.project_patch = nn.Linear(dim, dim)
        self.project_learn = nn.Linear((1 + num_register_tokens) * dim, dim, bias=False)
        self.act = nn.GELU()

    def forward(self, patches: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
        x_patch = self.project_patch(patches)
        x_learn = self.project_learn(learned).expand_as(x_patch)
        return self.act(x_patch + x_learn)


class Token2Feature(nn.Module):
    """Readout then a resample to one decoder scale; `sample` is Identity at 1/14."""

    def __init__(self, dim: int, out_channels: int, scale: float, num_register_tokens: int) -> None:
        super().__init__()
        self.readoper = Readout(dim, num_register_tokens)
        self.resize: nn.Module = nn.Identity()  # holds no weights: checkpoint keys are unchanged
        if scale == 1:
            self.sample = nn.Identity()
        elif float(scale).is_integer():
            self.sample = nn.ConvTranspose2d(dim, out_channels, kernel_size=int(scale), stride=int(scale))
        else:
            self.resize = nn.Upsample(scale_factor=scale, mode="nearest")
            self.sample = nn.Sequential(nn.Conv2d(dim, out_channels, kernel_size=1))

    def forward(self, patches: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
        x = self.readoper(patches, learned).permute(0, 3, 1, 2).contiguous()
        return self.sample(self.resize(x))


class EncoderFeature(nn.Module):
    """Four readouts of the same tokens: read_3, read_2 at 1/14, read_1 at 1/7, read_0 at 1/4."""

    def __init__(self, dim: int, feature_channels: list[int], num_register_tokens: int) -> None:
        super().__init__()
        self.read_3 = Token2Feature(dim, feature_channels[3], 1, num_register_tokens)
        self.read_2 = Token2Feature(dim, feature_channels[2], 1, num_register_tokens)
        self.read_1 = Token2Feature(dim, feature_channels[1], 2, num_register_tokens)
        self.read_0 = Token2Feature(dim, feature_channels[0], 3.5, num_register_tokens)

    def forward(self, patches: torch.Tensor, learned: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Returns (x_1/14, x2_1/14, x1_1/7, x0_1/4)."""
        return (self.read_3(patches, learned), self.read_2(patches, learned),
                self.read_1(patches, learned), self.read_0(patches, learned))


class ConvBlock(nn.Module):
    """DPT residual unit: relu(x) + conv2(relu(conv1(relu(x))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return x + self.conv2(F.relu(self.conv1(x)))


class FuseBlock(nn.Module):
    """Optional branch fuse, trunk ConvBlock, optional bilinear (align_corners=True) resize, 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, fuse: bool = True, upsample: bool = True,
                 scale_factor: float = 2) -> None:
        super().__init__()
        self.fuse = fuse
        self.way_trunk = ConvBlock(in_channels)
        if fuse:
            self.way_branch = ConvBlock(in_channels)
        self.resize = (nn.Upsample(scale_factor=scale_factor, mode="bilinear", align_corners=True)
                       if upsample else nn.Identity())
        self.out_conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.way_branch(skip)
        return self.out_conv(self.resize(self.way_trunk(x)))


class DecoderFeature(nn.Module):
    """1/14 -> 1/7 -> 1/4 fusion; output has 96 feature + 2 confidence channels at 1/4."""

    def __init__(self, decoder_channels: list[int]) -> None:
        super().__init__()
        self.upconv_3 = FuseBlock(decoder_channels[4], decoder_channels[3], fuse=False, upsample=False)
        self.upconv_2 = FuseBlock(decoder_channels[3], decoder_channels[2])
        self.upconv_1 = FuseBlock(decoder_channels[2], decoder_channels[1] + 2, scale_factor=7 / 4)

    def forward(self, x: torch.Tensor, x2: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        x = self.upconv_3(x)
        x = self.upconv_2(x, x2)
        return self.upconv_1(x, x1)
