"""GPU-safe replacements for the PyTorch ops of Metric3D that LiteRT's GPU delegate cannot run.

Each function or module here computes the same values as the op or faithful module it
replaces (to fp32 rounding) using only ops the audit allows: no GELU, POW, WHERE/SELECT,
GATHER(_ND), TRANSPOSE_CONV or RESIZE_NEAREST_NEIGHBOR, and no tensor above 4D. transform.py
swaps them into the faithful model; each one is unit-tested against what it replaces in
tests/test_export_rewrites.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from conversion.model.heads import MAX_DEPTH, MIN_DEPTH, MIN_KAPPA, REGRESS_SCALE

# GELU(x) = x * Phi(x) = x * sigmoid(logit Phi(x)), and logit Phi is odd and smooth, so it is
# fitted as t * Q(t^2) with t = x/4 (degree 13; weighted minimax fit of log_ndtr(x) -
# log_ndtr(-x) on [0, 8], weights x * Phi * (1 - Phi), i.e. the error it causes in GELU).
# The 1/4 keeps every coefficient near 1, so fp16 GPUs neither flush nor overflow them.
# Max |error| vs exact GELU: 6.8e-8 in float64 over [-60, 60]. The leading coefficient is
# positive, so for large |x| the argument runs to +-inf and the result is x or -0 exactly.
_GELU_SCALE = 0.25
_GELU_LOGIT_COEFFS = (6.38307373, 4.65078829, -0.0678502072, -1.81010961, 2.08095667, -1.11942983,
                      0.242345808)


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    """Exact-erf GELU (to < 1e-7) as x * sigmoid(odd polynomial) from MUL/ADD/LOGISTIC only.

    The CPU cost is the op count on the [tokens, 1536] MLP tensor: 17 cheap ops here against
    21 (with ABS, DIV, EXP) for the Abramowitz-Stegun erf form, 18% less time per ViT block.
    tanh-GELU would be off by ~1e-3.
    """
    t = x * _GELU_SCALE
    s = t * t
    q = _GELU_LOGIT_COEFFS[-1]
    for coeff in reversed(_GELU_LOGIT_COEFFS[:-1]):
        q = coeff + s * q
    return x * torch.sigmoid(t * q)


class GeluErf(nn.Module):
    """nn.GELU() (exact erf form) as gelu_erf."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu_erf(x)


def clamp_interior_exact(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """clamp(x, low, high) as MAXIMUM/MINIMUM: interior values pass unrounded in any precision.

    A max/min only selects, so x inside [low, high] comes out bit for bit (also in fp16) and the
    bounds come out exactly (an ADD/SUB form of the clamp can land an ulp below `low`). Upstream's
    form, 200 - relu(200 - (relu(x - 0.1) + 0.1)), rounds x to the spacing of numbers near 200:
    0.125 m in fp16 (1.5e-5 m in fp32).
    """
    return torch.clamp(x, low, high)


class ClampInteriorExact(nn.Module):
    """`clamp_interior_exact` to fixed bounds, as a module transform.py can swap in."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return clamp_interior_exact(x, self.low, self.high)


def elu_select_free(x: torch.Tensor) -> torch.Tensor:
    """ELU(alpha=1) as relu(x) + exp(min(x, 0)) - 1 (PyTorch's F.elu lowers to SELECT)."""
    return F.relu(x) + (torch.exp(torch.clamp(x, max=0.0)) - 1.0)


def norm_normalize(out: torch.Tensor) -> torch.Tensor:
    """conversion.model.heads.norm_normalize (unit xyz normal, kappa = elu + 1.01) without POW or SELECT.

    One broadcast division keeps the state's concatenation at 4 inputs: with the three
    components separate it had 6, which XNNPACK does not take, splitting the CPU graph.
    """
    nx, ny, nz, kappa = out[:, 0:1], out[:, 1:2], out[:, 2:3], out[:, 3:4]
    norm = torch.sqrt(nx * nx + ny * ny + nz * nz) + 1e-10
    return torch.cat([out[:, 0:3] / norm, elu_select_free(kappa) + 1.0 + MIN_KAPPA], dim=1)


class NormNormalize(nn.Module):
    """heads.NormNormalize as norm_normalize."""

    def forward(self, out: torch.Tensor) -> torch.Tensor:
        return norm_normalize(out)


class BlockedDotProduct(nn.Module):
    """x @ weight over the last axis as a two-level sum: blocks of `block` terms, then the blocks.

    [..., K] -> [..., 1]. GPUs running in fp16 accumulate a dot product in fp16, so its rounding
    error grows with the length of the running sum; summing K = 256 terms as 16 sums of 16 and
    then one sum of 16 keeps every running sum short. In fp32 it is the same sum, reordered.
    The block-diagonal first stage is one FULLY_CONNECTED with zeros off the blocks (adding an
    exact zero does not round). Raises ValueError when K is not a multiple of `block`.
    """

    def __init__(self, weight: torch.Tensor, block: int = 16) -> None:
        super().__init__()
        k = weight.numel()
        if k % block:
            raise ValueError(f"length {k} is not a multiple of the block {block}")
        groups = k // block
        flat = weight.detach().reshape(-1)
        blocks = torch.zeros(groups, k)
        for g in range(groups):
            blocks[g, g * block:(g + 1) * block] = flat[g * block:(g + 1) * block]
        self.register_buffer("blocks", blocks)
        self.register_buffer("ones", torch.ones(1, groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.blocks), self.ones)


EXPECTATION_BLOCK = 16


class ExpectedDepth(nn.Module):
    """heads.ExpectedDepth / 100 with the softmax on the last axis and a blocked expectation.

    [B,K,H,W] logits -> d/100 [B,1,H,W]: the bins move to the last (the GPU's channel) axis,
    where SOFTMAX works natively, and sum(prob * bins/100) is a BlockedDotProduct (blocks of
    16). The output is in units of 100 m, the export's GRU-state unit (fine fp16 spacing at
    small depths); the Encode swap (transform.py) takes it from there.
    """

    def __init__(self, bins: torch.Tensor, scale: float = REGRESS_SCALE) -> None:
        super().__init__()
        self.register_buffer("bins", bins.detach().clone(), persistent=False)  # meters, as the faithful's
        self.expectation = BlockedDotProduct(bins.detach().reshape(-1) / scale, EXPECTATION_BLOCK)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        prob = torch.softmax(logits.permute(0, 2, 3, 1), dim=-1)
        return self.expectation(prob).permute(0, 3, 1, 2)


class Attention4D(nn.Module):
    """vit.Attention with the fused qkv split into three Linears and every tensor at most 4D.

    Upstream reshapes qkv to 5D [3,B,heads,N,hd]. Here q, k and v are their own Linears (rows
    of the qkv weight) and q's 1/sqrt(hd) scale is folded into q's weights (exact for hd = 64,
    a power of two); the output projection is the faithful module's own `proj`.
    """

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.num_heads = attn.num_heads
        weight, bias = attn.qkv.weight.detach(), attn.qkv.bias.detach()
        dim = weight.shape[1]
        self.q, self.k, self.v = (_linear(weight[i * dim:(i + 1) * dim], bias[i * dim:(i + 1) * dim])
                                  for i in range(3))
        fold_scale_(self.q, attn.scale)
        self.proj = attn.proj

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        attn = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        return self.proj((attn @ v).permute(0, 2, 1, 3).reshape(b, n, c))


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    layer.weight.data.copy_(weight)
    layer.bias.data.copy_(bias)
    return layer


def fold_scale_(layer: nn.Linear | nn.Conv2d, scale: torch.Tensor | float) -> None:
    """Make layer(x) equal the old layer(x) * scale (per output channel or scalar), in place.

    Exact when the scale is a power of two; otherwise one rounding per weight (LayerScale).
    """
    scale = torch.as_tensor(scale, dtype=layer.weight.dtype).detach()
    with torch.no_grad():
        layer.weight.mul_(scale.reshape(-1, *[1] * (layer.weight.dim() - 1)))
        if layer.bias is not None:
            layer.bias.mul_(scale)


def layer_norm_last(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last dim with reductions that cannot overflow in fp16.

    MEAN and the variance are sums of pre-scaled terms (x/N and (d/sqrt N)^2), so no partial
    sum exceeds the largest term: a plain fp16 SUM of 384 squares overflows on Mali GPUs.
    """
    n = x.shape[-1]
    mean = torch.sum(x * (1.0 / n), dim=-1, keepdim=True)
    d = x - mean
    ds = d * (1.0 / math.sqrt(n))
    var = torch.sum(ds * ds, dim=-1, keepdim=True)
    return d * torch.rsqrt(var + eps) * weight + bias


class LayerNormLast(nn.Module):
    """nn.LayerNorm(dim) with the fp16-safe reductions of layer_norm_last."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm_last(x, self.weight, self.bias, self.eps)


class LayerNormChannels(LayerNormLast):
    """Upstream's LayerNorm2d: LayerNorm over C of an NCHW tensor (permute, norm, permute back)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SubPixelConvTranspose(nn.Module):
    """ConvTranspose2d(kernel k, stride k, padding 0) without TRANSPOSE_CONV.

    With kernel == stride each output pixel (k*h+a, k*w+b) comes from exactly one input
    pixel: it is a 1x1 conv to Cout*k*k channels (channel o*k*k + a*k + b) followed by a
    pixel shuffle. Same sums as the transposed conv, no zero-stuffing waste.
    """

    def __init__(self, deconv: nn.ConvTranspose2d) -> None:
        super().__init__()
        k = deconv.kernel_size[0]
        if deconv.kernel_size != (k, k) or deconv.stride != (k, k) or deconv.padding != (0, 0) \
                or deconv.groups != 1 or deconv.dilation != (1, 1) or deconv.output_padding != (0, 0):
            raise ValueError(f"only kernel == stride, no padding is supported, got {deconv}")
        w = deconv.weight.detach()  # [Cin, Cout, k, k]
        cin, cout = w.shape[:2]
        self.k = k
        self.conv = nn.Conv2d(cin, cout * k * k, 1)
        self.conv.weight.data.copy_(w.permute(1, 2, 3, 0).reshape(cout * k * k, cin, 1, 1))
        bias = deconv.bias.detach() if deconv.bias is not None else torch.zeros(cout)
        self.conv.bias.data.copy_(bias.repeat_interleave(k * k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), self.k)


def neighbour_kernels() -> torch.Tensor:
    """[9,1,3,3] one-hot kernels: channel k = ki*3 + kj picks x[h+ki-1, w+kj-1] (F.unfold order)."""
    return torch.eye(9).reshape(9, 1, 3, 3)


class Neighbours3x3(nn.Module):
    """F.unfold(x, 3, padding=1) of a 1-channel map as a conv with constant one-hot kernels.

    F.unfold lowers to GATHER_ND; the kernels are a stored constant (building them in
    forward would put IOTA/EQUAL/CAST ops in the graph).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kernels", neighbour_kernels())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernels, padding=1)


def nearest_index(size_in: int, scale: float) -> torch.Tensor:
    """The source index PyTorch's own nearest resize picks for each output pixel along one axis.

    Taken from F.interpolate itself (on an arange) so the rounding of floor(dst / scale) in
    float is exactly upstream's, including the cases where dst / scale is an integer.
    """
    probe = torch.arange(size_in, dtype=torch.float32).view(1, 1, size_in, 1).expand(1, 1, size_in, size_in)
    picked = F.interpolate(probe.contiguous(), scale_factor=scale, mode="nearest")
    return picked[0, 0, :, 0].round().long()


class NearestResize(nn.Module):
    """F.interpolate(mode="nearest", scale_factor=s) of a fixed HxW map as two 0/1 matrix products.

    Each output is 1.0 * one input + 0.0 * the rest, so the result is exact, and the graph
    uses FULLY_CONNECTED + TRANSPOSE instead of GATHER / RESIZE_NEAREST_NEIGHBOR.
    """

    def __init__(self, height: int, width: int, scale: float) -> None:
        super().__init__()
        rows, cols = nearest_index(height, scale), nearest_index(width, scale)
        self.register_buffer("pick_rows", F.one_hot(rows, height).float())  # [Hout, H]
        self.register_buffer("pick_cols", F.one_hot(cols, width).float())  # [Wout, W]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.pick_cols)  # [B, C, H, Wout]
        x = F.linear(x.transpose(2, 3), self.pick_rows)  # [B, C, Wout, Hout]
        return x.transpose(2, 3)


def avg_pool_3x3_s2_include_pad(x: torch.Tensor) -> torch.Tensor:
    """F.avg_pool2d(x, 3, 2, 1) with count_include_pad=True: explicit zero pad, then VALID pool.

    TFLite's SAME-padded AVERAGE_POOL_2D would exclude the padding from the count.
    """
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=2)


class AvgPool3x3S2IncludePad(nn.Module):
    """nn.AvgPool2d(3, 2, 1) (count_include_pad=True) as avg_pool_3x3_s2_include_pad."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool_3x3_s2_include_pad(x)


def resize_bilinear_ac(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize with align_corners=True, as every upstream decoder resize uses.

    With align_corners=True PyTorch uses (in-1)/(out-1) whatever scale_factor says, so a
    fixed output size gives the same result as upstream's scale_factor calls.
    """
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=True)


class ResizeBilinearAC(nn.Module):
    """nn.Upsample(scale_factor=s, mode="bilinear", align_corners=True) as a resize to a fixed size.

    The size is PyTorch's floor(in * s), read from the (static) input shape when traced.
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return resize_bilinear_ac(x, math.floor(h * self.scale), math.floor(w * self.scale))


def border_neighbours(height: int, width: int) -> torch.Tensor:
    """[1,9,H,W]: 1 where 3x3 neighbour k of pixel (h, w) lies outside the map (the zero padding)."""
    return 1.0 - F.conv2d(torch.ones(1, 1, height, width), neighbour_kernels(), padding=1)


class ConvexUpsample(nn.Module):
    """RAFT convex upsampling of a 1-channel [1,1,H,W] map with mask logits [1,9*f*f,H,W].

    Mask channel k*f*f + i*f + j weighs neighbour k (3x3 padded with `pad_value`) for output
    pixel (f*h+i, f*w+j); softmax over k. Written with <= 4D tensors and the softmax on the last
    axis (the GPU's channel axis) instead of upstream's 7D views and F.unfold.

    Upstream pads its state s = (d - 200)/100 with zeros. Upsampling u = s + 2 = d/100 instead
    (fine fp16 spacing at small depths) needs pad_value 2 for the same result: the softmax
    weights sum to 1, so sum_k w_k (s_k + 2) = (sum_k w_k s_k) + 2. A non-zero pad needs the
    map's (height, width) to store the border pattern as a constant (ValueError without it).
    """

    def __init__(self, factor: int = 4, pad_value: float = 0.0, size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.factor = factor
        self.neighbours = Neighbours3x3()
        if pad_value and size is None:
            raise ValueError("a non-zero pad_value needs the map size")
        self.register_buffer("padding", pad_value * border_neighbours(*size) if pad_value else None)

    def forward(self, flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        _, _, h, w = flow.shape
        f = self.factor
        weights = torch.softmax(mask.reshape(9, f * f, h * w).permute(1, 2, 0), dim=-1)  # [ff, HW, 9]
        neigh = self.neighbours(flow)
        if self.padding is not None:
            neigh = neigh + self.padding
        neigh = neigh.reshape(9, h * w).transpose(0, 1)  # [HW, 9]
        up = torch.sum(weights * neigh, dim=-1)  # [ff, HW]
        up = up.reshape(f, f, h, w).permute(2, 0, 3, 1)  # [H, i, W, j]
        return up.reshape(1, 1, f * h, f * w)


# ---- The GRU state in units of 100 m (u = d/100) instead of upstream's s = (d - 200)/100 = u - 2.
# fp16 spaces numbers near |s| = 1..2 by ~1e-3 (0.1 m); u keeps fp16's fine spacing at small depths.
STATE_OFFSET = MAX_DEPTH / REGRESS_SCALE  # s = u - 2


class StateOffset(nn.Module):
    """Feature: the export's state [B,C,H,W] (channel 0 = d/100) -> upstream's state (channel 0 - 2).

    Only where the state feeds the 1/4 GRU as its input; the state itself stays d/100.
    """

    def __init__(self, channels: int, offset: float = STATE_OFFSET) -> None:
        super().__init__()
        shift = torch.zeros(1, channels, 1, 1)
        shift[0, 0] = offset
        self.register_buffer("offset", shift)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return state - self.offset


class UpsampleDepthOver100(nn.Module):
    """Decode: state [1,C,h,w] (channel 0 = d/100) + mask logits -> depth (m) [1,1,4h,4w], clamped.

    ConvexUpsample with pad 2 (= upstream's zero pad of s), then clamp_interior_exact(100 * up,
    0.1, 200): the same values as upstream's clamp((up_s * 100) + 200) to fp32 rounding.
    """

    def __init__(self, size: tuple[int, int], factor: int = 4) -> None:
        super().__init__()
        self.upsample = ConvexUpsample(factor, pad_value=STATE_OFFSET, size=size)

    def forward(self, state: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return clamp_interior_exact(self.upsample(state[:, :1], mask) * REGRESS_SCALE, MIN_DEPTH, MAX_DEPTH)
