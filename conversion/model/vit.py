"""DINOv2-with-registers ViT-S/14, the Metric3D v2 encoder.

Written to reproduce upstream `mono/model/backbones/ViT_DINO_reg.py` bit for bit at inference
(exact erf GELU, LayerNorm eps 1e-6, q scaled before q @ k^T, LayerScale on both branches,
registers inserted after the pos-embed is added). Attribute names give the checkpoint's keys.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

VIT_S = {"embed_dim": 384, "depth": 12, "num_heads": 6, "mlp_ratio": 4}
PATCH_SIZE = 14
NUM_REGISTERS = 4
POS_GRID = 37  # pos_embed was trained for 518 px inputs: a 37x37 patch grid
INTERPOLATE_OFFSET = 0.1  # DINOv2's work-around for float error in scale_factor interpolation
LN_EPS = 1e-6


class PatchEmbed(nn.Module):
    """14x14 stride-14 conv, flattened to tokens [B, N, C]."""

    def __init__(self, embed_dim: int, patch_size: int = PATCH_SIZE, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (upstream's non-xFormers path)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    """Per-channel residual-branch scale (`gamma`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """fc1 -> exact (erf) GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, dim * mlp_ratio)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class BlockChunk(nn.ModuleList):
    """One chunk of blocks; upstream wraps all 12 in a single chunk, hence keys `blocks.0.{i}`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self:
            x = block(x)
        return x


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Resize the 37x37 patch pos-embed table to a grid_h x grid_w grid, exactly as DINOv2 does.

    DINOv2 resizes by scale_factor ((grid+0.1)/37), not by size: bicubic weights then differ from
    a resize to (grid_h, grid_w), and the trained model depends on it. Returns [1, 1+gh*gw, C]
    with the cls position first.
    """
    n = pos_embed.shape[1] - 1
    side = int(math.sqrt(n))
    if n == grid_h * grid_w and grid_h == grid_w:
        return pos_embed
    dim = pos_embed.shape[-1]
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    scale = ((grid_h + INTERPOLATE_OFFSET) / side, (grid_w + INTERPOLATE_OFFSET) / side)
    patch_pos = F.interpolate(
        patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2),
        scale_factor=scale, mode="bicubic", antialias=False,
    )
    if patch_pos.shape[-2:] != (grid_h, grid_w):
        raise ValueError(f"pos-embed resize gave {tuple(patch_pos.shape[-2:])}, expected {(grid_h, grid_w)}")
    return torch.cat((cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)


class DinoVisionTransformerReg(nn.Module):
    """ViT-S/14 with 4 register tokens; returns the final-LayerNorm tokens [cls, regs, patches]."""

    def __init__(self, embed_dim: int = 384, depth: int = 12, num_heads: int = 6, mlp_ratio: int = 4,
                 num_register_tokens: int = NUM_REGISTERS, pos_grid: int = POS_GRID) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = PATCH_SIZE
        self.num_register_tokens = num_register_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_grid * pos_grid + 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # training only; kept for exact keys
        self.patch_embed = PatchEmbed(embed_dim)
        self.blocks = nn.ModuleList([BlockChunk(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))])
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)

    def pos_embed_for(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """The pos-embed at this patch grid (a constant per input size: exporters may bake it)."""
        return interpolate_pos_embed(self.pos_embed, grid_h, grid_w)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[cls + pos[0], registers, patches + pos[1:]]: registers are inserted after the pos-embed.

        The same sums as upstream's cat-add-split, written so that with a constant pos-embed
        the whole prefix is a constant and only the patch tokens see an ADD.
        """
        grid_h, grid_w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.patch_embed(x)
        pos = self.pos_embed_for(grid_h, grid_w)
        batch = tokens.shape[0]
        cls = (self.cls_token + pos[:, :1]).expand(batch, -1, -1)
        registers = self.register_tokens.expand(batch, -1, -1)
        return torch.cat((cls, registers, tokens + pos[:, 1:]), dim=1)

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Transformer blocks then the final LayerNorm."""
        for chunk in self.blocks:
            tokens = chunk(tokens)
        return self.norm(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(self.prepare_tokens(x))
