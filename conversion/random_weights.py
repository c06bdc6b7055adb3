"""Deterministic random weights for the full Metric3D architecture (no checkpoint needed).

Used by `convert --random-weights SEED` so tests and benchmarks can build the real graph.
Value rules follow the golden vectors' generator, so activations stay O(1) and the depth
map is not flat or clamped (N = standard normal):
  Linear / Conv / ConvTranspose weight  N * gain / sqrt(fan_in)  (fan_in: input channels x kernel
                                        area; ConvTranspose: input channels, as the golden manifest)
  bias                                  0.02 N
  LayerNorm weight / bias               1 + 0.1 N / 0.05 N
  LayerScale gamma                      0.25 + 0.05 N
  cls / register tokens, pos_embed      0.5 N, 0.2 N;   mask_token  zeros
Each tensor has its own torch.Generator seeded with (seed << 32) ^ crc32(name), so values do
not depend on the order tensors are visited. The values are NOT those of the golden
make_weights.py (numpy's generator): use a checkpoint file for golden parity.
"""
from __future__ import annotations

import math
import zlib

import torch
from torch import nn

GAINS = (
    ("attn.qkv", 1.5),
    ("mlp.fc1", 1.4),
    ("depth_regressor.2", 2.5),
    ("flow_head.conv2d", 0.1),
    ("flow_head.conv2n", 0.1),
    ("update_block.mask.2", 2.0),
)
TOKEN_STD = {"cls_token": 0.5, "register_tokens": 0.5, "pos_embed": 0.2, "mask_token": 0.0}


def _gain(name: str) -> float:
    return next((g for pattern, g in GAINS if pattern in name), 1.0)


def _normal(name: str, shape: torch.Size, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed((seed << 32) ^ zlib.crc32(name.encode()))
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def _value(module: nn.Module, pname: str, full: str, p: torch.Tensor, seed: int) -> torch.Tensor:
    z = _normal(full, p.shape, seed)
    if pname in TOKEN_STD:
        return TOKEN_STD[pname] * z
    if pname == "gamma":
        return 0.25 + 0.05 * z
    if isinstance(module, nn.LayerNorm):
        return 1.0 + 0.1 * z if pname == "weight" else 0.05 * z
    if pname == "bias":
        return 0.02 * z
    if isinstance(module, nn.ConvTranspose2d):
        fan_in = p.shape[0]
    elif isinstance(module, (nn.Linear, nn.Conv2d)):
        fan_in = p[0].numel()
    else:
        raise ValueError(f"no value rule for parameter {full} of {type(module).__name__}")
    return z * (_gain(full) / math.sqrt(fan_in))


@torch.no_grad()
def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter of `model` in place by the rules above; returns the model."""
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            p.copy_(_value(module, pname, full, p, seed).to(p.dtype))
    return model
