"""The export transformation: the faithful modules made GPU-safe in place, at one fixed input size.

Nothing is re-declared: the network stays conversion.model's, with its weights. Weight-free
stages the LiteRT GPU delegate cannot run (or that lower to banned ops) are swapped for their
replacements in ops.py, and constant scales are folded into the layer before them:

    nn.GELU                   -> GeluErf (x * sigmoid(odd polynomial): MUL/ADD/LOGISTIC)
    nn.LayerNorm, LayerNorm2d -> LayerNormLast / LayerNormChannels (fp16-safe reductions)
    vit.Attention             -> Attention4D (fused qkv split, q scale folded, no 5D tensor)
    nn.ConvTranspose2d        -> SubPixelConvTranspose (1x1 conv + pixel shuffle)
    Token2Feature's nearest   -> NearestResize (0/1 matrix products), moved after the 1x1 conv
    bilinear nn.Upsample      -> ResizeBilinearAC (fixed output size)
    nn.AvgPool2d(3, 2, 1)     -> AvgPool3x3S2IncludePad (explicit zero pad)
    heads.ExpectedDepth       -> ExpectedDepth (softmax on the last axis, blocked sum; outputs d/100)
    heads.NormNormalize       -> NormNormalize (no POW, select-free ELU)
    gru.ConvexUpsample        -> ConvexUpsample (one-hot conv instead of unfold, <= 4D)
    heads.DepthToState        -> ClampInteriorExact(0.001, 2) (Encode: the GRU state holds d/100)
    gru.StateFeature          -> StateOffset (Feature: the 1/4 GRU still reads upstream's d/100 - 2)
    decoder.UpsampleDepth     -> UpsampleDepthOver100 (Decode: pad d/100 with 2, x100, exact clamp)
    LayerScale, mask's 0.25   -> folded into attn.proj / mlp.fc2 / the mask conv (then Identity)
    pos-embed table           -> resized once (upstream's bicubic, +0.1) for the fixed grid

The last three (with the ExpectedDepth's d/100) are the fp16-robust depth path: GPUs run the
graph with fp16 tensors and sums, and upstream's state s = (d - 200)/100 lives near |s| = 1..2
where fp16's spacing is ~1e-3 (0.1 m); d/100 keeps fine spacing at small depths. Clamps pass
interior values through unrounded and the 256-bin expectation is summed in blocks of 16.

The faithful modules that are already GPU-safe (convs, ConvGRU, clamps, the in-place-ReLU
reproduction, align_corners resizes in the GRU) run unchanged.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from conversion.export import ops
from conversion.model import context, decoder, dpt, gru, heads, vit

Grid = tuple[int, int]


def _is_pool_3x3_s2_include_pad(m: nn.Module) -> bool:
    return (type(m) is nn.AvgPool2d and m.kernel_size == 3 and m.stride == 2 and m.padding == 1
            and m.count_include_pad and not m.ceil_mode and m.divisor_override is None)


def _replacement(m: nn.Module) -> nn.Module | None:
    """The GPU-safe module that computes what leaf stage `m` computes, or None to keep `m`."""
    if type(m) is nn.GELU:
        if m.approximate != "none":
            raise ValueError(f"only the exact erf GELU is exported, got {m}")
        return ops.GeluErf()
    if type(m) is nn.LayerNorm:
        return ops.LayerNormLast(m.weight, m.bias, m.eps)
    if type(m) is context.LayerNorm2d:
        return ops.LayerNormChannels(m.weight, m.bias, m.eps)
    if type(m) is vit.Attention:
        return ops.Attention4D(m)
    if type(m) is nn.ConvTranspose2d:
        return ops.SubPixelConvTranspose(m)
    if type(m) is nn.Upsample and m.mode == "bilinear" and m.align_corners and m.size is None:
        return ops.ResizeBilinearAC(m.scale_factor)
    if _is_pool_3x3_s2_include_pad(m):
        return ops.AvgPool3x3S2IncludePad()
    if type(m) is heads.ExpectedDepth:
        return ops.ExpectedDepth(m.bins)
    if type(m) is heads.NormNormalize:
        return ops.NormNormalize()
    if type(m) is gru.ConvexUpsample:
        return ops.ConvexUpsample(m.factor)
    if type(m) is heads.DepthToState:
        return ops.ClampInteriorExact(heads.MIN_DEPTH / heads.REGRESS_SCALE, heads.MAX_DEPTH / heads.REGRESS_SCALE)
    if type(m) is gru.StateFeature:
        return ops.StateOffset(gru.STATE_CHANNELS)
    return None


def _fold_scales_(m: nn.Module) -> None:
    """Fold LayerScale (vit.Block) and the convex mask's 0.25 (gru update block) into the layer before."""
    if isinstance(m, vit.Block):
        ops.fold_scale_(m.attn.proj, m.ls1.gamma)
        ops.fold_scale_(m.mlp.fc2, m.ls2.gamma)
        m.ls1, m.ls2 = nn.Identity(), nn.Identity()
    elif isinstance(m, gru.BasicMultiUpdateBlock):
        ops.fold_scale_(m.mask[-1], m.mask_scale.factor)
        m.mask_scale = nn.Identity()


def _fixed_grid_(m: nn.Module, grid: Grid | None) -> None:
    """Stages that become constants for one patch grid: the pos-embed and the nearest x3.5 resize."""
    if isinstance(m, vit.DinoVisionTransformerReg):
        gh, gw = _need_grid(grid, "the pos-embed")
        if gh != gw:
            raise ValueError(f"only a square patch grid can be baked, got {gh}x{gw}")
        # Upstream's resize, run once; at its own grid the faithful resize is then the identity.
        m.pos_embed = nn.Parameter(m.pos_embed_for(gh, gw).detach().clone(), requires_grad=False)
    elif isinstance(m, dpt.Token2Feature) and type(m.resize) is nn.Upsample:
        if m.resize.mode != "nearest" or not all(_is_pointwise_conv(layer) for layer in m.sample):
            raise ValueError(f"expected nearest resize then 1x1 convs, got {m.resize} and {m.sample}")
        gh, gw = _need_grid(grid, "the nearest resize")
        # A 1x1 conv commutes with copying pixels: convolve the 32x32 map, then copy (4x fewer channels).
        m.sample = nn.Sequential(*m.sample, ops.NearestResize(gh, gw, m.resize.scale_factor))
        m.resize = nn.Identity()
    elif isinstance(m, decoder.RAFTDepthNormalDPT5) and type(m.upsample_depth) is decoder.UpsampleDepth:
        gh, gw = _need_grid(grid, "the convex upsampling's border")
        scale = m.token2feature.read_0.resize.scale_factor  # the 1/4 map: the nearest x3.5 of the grid
        m.upsample_depth = ops.UpsampleDepthOver100((math.floor(gh * scale), math.floor(gw * scale)),
                                                    m.upsample_depth.upsample.factor)


def _is_pointwise_conv(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding == (0, 0)
            and m.groups == 1 and m.dilation == (1, 1))


def _need_grid(grid: Grid | None, what: str) -> Grid:
    if grid is None:
        raise ValueError(f"{what} is baked for one input size: pass the patch grid")
    return grid


def gpu_safe_(module: nn.Module, grid: Grid | None = None) -> nn.Module:
    """Make `module` (the faithful Metric3D or any part of it) GPU-safe in place; returns it.

    `grid` is the (rows, cols) patch grid of the one input size the result will run at,
    needed only where the module holds a pos-embed or the nearest resize. Every swap keeps
    the values (see ops.py); LayerScale folding rounds once per weight. Shared modules (the
    context encoder's norm3 = downsample.1) stay shared.
    """
    with torch.no_grad():
        for m in list(module.modules()):
            _fold_scales_(m)
            _fixed_grid_(m, grid)
        swapped: dict[int, nn.Module] = {}
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if id(child) not in swapped:
                    swapped[id(child)] = _replacement(child) or child
                setattr(parent, name, swapped[id(child)])
    return module.requires_grad_(False).eval()
