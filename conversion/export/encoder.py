"""GPU-safe DINOv2-reg ViT-S/14 at a fixed input size, built from the faithful encoder's weights.

Differences from the faithful module, all value-preserving: the pos-embed is the faithful
bicubic (+0.1) resize run once and stored; cls + its pos-embed and the registers are one
constant prefix; the fused qkv is three Linears with q's 1/8 folded in (exact, a power of
two); LayerScale gammas are folded into attn.proj / mlp.fc2; GELU and LayerNorm are the
GPU-safe forms from ops.py; attention is plain 4D matmuls + softmax.
"""
from __future__ import annotations

import torch
from torch import nn

from conversion.export.ops import LayerNormLast, gelu_erf

LN_EPS = 1e-6
NUM_HEADS = 6
NUM_REGISTERS = 4
PATCH = 14


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight.data.copy_(weight)
    if bias is not None:
        layer.bias.data.copy_(bias)
    return layer


class ExportAttention(nn.Module):
    def __init__(self, sd: dict[str, torch.Tensor], prefix: str, gamma: torch.Tensor) -> None:
        super().__init__()
        qkv_w, qkv_b = sd[f"{prefix}.qkv.weight"], sd[f"{prefix}.qkv.bias"]
        dim = qkv_w.shape[1]
        self.head_dim = dim // NUM_HEADS
        scale = self.head_dim ** -0.5
        self.q = _linear(qkv_w[:dim] * scale, qkv_b[:dim] * scale)
        self.k = _linear(qkv_w[dim:2 * dim], qkv_b[dim:2 * dim])
        self.v = _linear(qkv_w[2 * dim:], qkv_b[2 * dim:])
        self.proj = _linear(sd[f"{prefix}.proj.weight"] * gamma[:, None], sd[f"{prefix}.proj.bias"] * gamma)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, NUM_HEADS, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        attn = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        out = (attn @ v).permute(0, 2, 1, 3).reshape(b, n, c)
        return self.proj(out)


class ExportBlock(nn.Module):
    def __init__(self, sd: dict[str, torch.Tensor], prefix: str) -> None:
        super().__init__()
        self.norm1 = LayerNormLast(sd[f"{prefix}.norm1.weight"], sd[f"{prefix}.norm1.bias"], LN_EPS)
        self.attn = ExportAttention(sd, f"{prefix}.attn", sd[f"{prefix}.ls1.gamma"])
        self.norm2 = LayerNormLast(sd[f"{prefix}.norm2.weight"], sd[f"{prefix}.norm2.bias"], LN_EPS)
        gamma2 = sd[f"{prefix}.ls2.gamma"]
        self.fc1 = _linear(sd[f"{prefix}.mlp.fc1.weight"], sd[f"{prefix}.mlp.fc1.bias"])
        self.fc2 = _linear(sd[f"{prefix}.mlp.fc2.weight"] * gamma2[:, None], sd[f"{prefix}.mlp.fc2.bias"] * gamma2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(gelu_erf(self.fc1(self.norm2(x))))


class ExportViT(nn.Module):
    """image [1,3,S,S] -> final-LayerNorm tokens [1, 5 + (S/14)^2, 384] (cls, registers, patches)."""

    def __init__(self, sd: dict[str, torch.Tensor], pos_embed: torch.Tensor) -> None:
        """`pos_embed` [1, 1+g*g, C] is the faithful encoder's resized table for this input size."""
        super().__init__()
        w = sd["encoder.patch_embed.proj.weight"]
        self.patch_embed = nn.Conv2d(w.shape[1], w.shape[0], PATCH, stride=PATCH)
        self.patch_embed.weight.data.copy_(w)
        self.patch_embed.bias.data.copy_(sd["encoder.patch_embed.proj.bias"])
        prefix = torch.cat((sd["encoder.cls_token"] + pos_embed[:, :1], sd["encoder.register_tokens"]), dim=1)
        self.register_buffer("prefix_tokens", prefix.detach().clone())
        self.register_buffer("patch_pos", pos_embed[:, 1:].detach().clone())
        depth = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("encoder.blocks.0."))
        self.blocks = nn.ModuleList(ExportBlock(sd, f"encoder.blocks.0.{i}") for i in range(depth))
        self.norm = LayerNormLast(sd["encoder.norm.weight"], sd["encoder.norm.bias"], LN_EPS)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image)  # [1, C, g, g]
        x = x.flatten(2).transpose(1, 2) + self.patch_pos
        x = torch.cat((self.prefix_tokens, x), dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
