"""GPU-safe RAFTDepthNormalDPT5 decoder at a fixed grid, built from the faithful decoder's weights.

Value-preserving changes from upstream: ConvTranspose -> sub-pixel conv; nearest x3.5 ->
0/1 matrix products (after read_0's 1x1 conv, which commutes with pixel copying); F.unfold
-> one-hot convs; F.elu -> select-free; x**2 -> x*x; softmaxes on the last (channel)
axis; the 0.25 mask scale folded into the mask conv (exact: a power of two). The in-place
ReLU side effect of upstream's ConvBlock is reproduced explicitly: the DPT and the context
encoder see ReLU(read_3), ReLU(read_2), ReLU(read_1) and the untouched read_0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from conversion.export.ops import (LayerNormChannels, NearestResize, SubPixelConvTranspose,
                                   ConvexUpsample, avg_pool_3x3_s2_include_pad, elu_select_free,
                                   gelu_erf, resize_bilinear_ac)
from conversion.model import gru

MIN_DEPTH, MAX_DEPTH, REGRESS_SCALE = 0.1, 200.0, 100.0
MIN_KAPPA = 0.01
LN2D_EPS = 1e-5
NUM_REGISTERS = 4
ITERS = 4

State = dict[str, torch.Tensor]


def _conv(sd: State, key: str, padding: int = 0, scale: float = 1.0) -> nn.Conv2d:
    w, b = sd[f"{key}.weight"], sd[f"{key}.bias"]
    conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[-1], padding=padding)
    conv.weight.data.copy_(w * scale)
    conv.bias.data.copy_(b * scale)
    return conv


def clamp_depth(x: torch.Tensor) -> torch.Tensor:
    """Upstream's ReLU clamp to [0.1, 200] (rounds differently from torch.clamp)."""
    y = F.relu(x - MIN_DEPTH) + MIN_DEPTH
    return MAX_DEPTH - F.relu(MAX_DEPTH - y)


class Readout(nn.Module):
    """GELU(Linear(patch) + Linear_nobias(cls ++ registers)) -> NCHW feature map."""

    def __init__(self, sd: State, prefix: str, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.project_patch = nn.Linear(*sd[f"{prefix}.project_patch.weight"].shape[::-1])
        self.project_patch.weight.data.copy_(sd[f"{prefix}.project_patch.weight"])
        self.project_patch.bias.data.copy_(sd[f"{prefix}.project_patch.bias"])
        self.project_learn = nn.Linear(*sd[f"{prefix}.project_learn.weight"].shape[::-1], bias=False)
        self.project_learn.weight.data.copy_(sd[f"{prefix}.project_learn.weight"])

    def forward(self, patches: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
        x = gelu_erf(self.project_patch(patches) + self.project_learn(learned))  # [1, g*g, C]
        return x.transpose(1, 2).reshape(1, -1, self.grid, self.grid)


class ConvBlock(nn.Module):
    """relu(x) + conv2(relu(conv1(relu(x)))): upstream's residual sees its in-place ReLU."""

    def __init__(self, sd: State, prefix: str) -> None:
        super().__init__()
        self.conv1 = _conv(sd, f"{prefix}.conv1", padding=1)
        self.conv2 = _conv(sd, f"{prefix}.conv2", padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return x + self.conv2(F.relu(self.conv1(x)))


class FuseBlock(nn.Module):
    def __init__(self, sd: State, prefix: str, fuse: bool, out_size: int | None) -> None:
        super().__init__()
        self.way_trunk = ConvBlock(sd, f"{prefix}.way_trunk")
        self.way_branch = ConvBlock(sd, f"{prefix}.way_branch") if fuse else None
        self.out_conv = _conv(sd, f"{prefix}.out_conv")
        self.out_size = out_size

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.way_branch is not None:
            x = x + self.way_branch(skip)
        x = self.way_trunk(x)
        if self.out_size is not None:
            x = resize_bilinear_ac(x, self.out_size, self.out_size)
        return self.out_conv(x)


class ResidualBlock(nn.Module):
    """RAFT residual block with LayerNorm2d and a 1x1 conv + norm3 projection."""

    def __init__(self, sd: State, prefix: str) -> None:
        super().__init__()
        self.conv1 = _conv(sd, f"{prefix}.conv1", padding=1)
        self.conv2 = _conv(sd, f"{prefix}.conv2", padding=1)
        self.norm1 = LayerNormChannels(sd[f"{prefix}.norm1.weight"], sd[f"{prefix}.norm1.bias"], LN2D_EPS)
        self.norm2 = LayerNormChannels(sd[f"{prefix}.norm2.weight"], sd[f"{prefix}.norm2.bias"], LN2D_EPS)
        self.down = _conv(sd, f"{prefix}.downsample.0")
        self.norm3 = LayerNormChannels(sd[f"{prefix}.norm3.weight"], sd[f"{prefix}.norm3.bias"], LN2D_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu(self.norm3(self.down(x)) + y)


class ContextHead(nn.Module):
    def __init__(self, sd: State, prefix: str) -> None:
        super().__init__()
        self.block = ResidualBlock(sd, f"{prefix}.0")
        self.conv = _conv(sd, f"{prefix}.1", padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.block(x))


class ConvGRU(gru.ConvGRU):
    """The faithful ConvGRU (already GPU-safe), built from the state dict, context as a list."""

    def __init__(self, sd: State, prefix: str) -> None:
        hidden, total = sd[f"{prefix}.convz.weight"].shape[:2]
        super().__init__(int(hidden), int(total - hidden))
        self.load_state_dict({key[len(prefix) + 1:]: value for key, value in sd.items()
                              if key.startswith(f"{prefix}.conv")})

    def forward(self, h: torch.Tensor, ctx: list[torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        return super().forward(h, *ctx, *inputs)


def norm_normalize(out: torch.Tensor) -> torch.Tensor:
    """Unit xyz normal and kappa = elu + 1.01, without POW or SELECT.

    One broadcast division keeps the state's concatenation at 4 inputs: with the three
    components separate it had 6, which XNNPACK does not take, splitting the CPU graph.
    """
    nx, ny, nz, kappa = out[:, 0:1], out[:, 1:2], out[:, 2:3], out[:, 3:4]
    norm = torch.sqrt(nx * nx + ny * ny + nz * nz) + 1e-10
    return torch.cat([out[:, 0:3] / norm, elu_select_free(kappa) + 1.0 + MIN_KAPPA], dim=1)


class ExportDecoder(nn.Module):
    """Final-LayerNorm tokens [1, 5+g*g, 384] -> canonical depth [1,1,14g,14g]."""

    def __init__(self, sd: State, grid: int, bins: torch.Tensor, iters: int = ITERS) -> None:
        super().__init__()
        self.grid, self.iters = grid, iters
        g4, g7 = grid * 7 // 2, grid * 2  # 1/4 and 1/7 resolutions (112 and 64 at 448)
        self.g4, self.g7 = g4, g7
        t2f = "decoder.token2feature"
        self.readouts = nn.ModuleList(Readout(sd, f"{t2f}.read_{i}.readoper", grid) for i in range(4))
        deconv = nn.ConvTranspose2d(*sd[f"{t2f}.read_1.sample.weight"].shape[:2], 2, stride=2)
        deconv.weight.data.copy_(sd[f"{t2f}.read_1.sample.weight"])
        deconv.bias.data.copy_(sd[f"{t2f}.read_1.sample.bias"])
        self.sample_1 = SubPixelConvTranspose(deconv)
        self.sample_0 = _conv(sd, f"{t2f}.read_0.sample.0")
        self.nearest_0 = NearestResize(grid, grid, 3.5)
        dm = "decoder.decoder_mono"
        self.upconv_3 = FuseBlock(sd, f"{dm}.upconv_3", fuse=False, out_size=None)
        self.upconv_2 = FuseBlock(sd, f"{dm}.upconv_2", fuse=True, out_size=g7)
        self.upconv_1 = FuseBlock(sd, f"{dm}.upconv_1", fuse=True, out_size=g4)
        self.depth_conv0 = _conv(sd, "decoder.depth_regressor.0", padding=1)
        self.depth_conv2 = _conv(sd, "decoder.depth_regressor.2")
        self.register_buffer("bins", bins.detach().clone().view(1, -1))
        self.normal = nn.ModuleList(_conv(sd, f"decoder.normal_predictor.{i}", padding=1 if i == 0 else 0)
                                    for i in (0, 2, 4, 6))
        cfe = "decoder.context_feature_encoder"
        self.context = nn.ModuleList(
            nn.ModuleList(ContextHead(sd, f"{cfe}.outputs{s}.{j}") for j in (0, 1)) for s in ("04", "08", "16"))
        self.zqr = nn.ModuleList(_conv(sd, f"decoder.context_zqr_convs.{i}", padding=1) for i in range(3))
        ub = "decoder.update_block"
        self.gru08, self.gru16, self.gru32 = (ConvGRU(sd, f"{ub}.gru{s}") for s in ("08", "16", "32"))
        self.flow = nn.ModuleList(_conv(sd, f"{ub}.flow_head.{n}", padding=1)
                                  for n in ("conv1d", "conv2d", "conv1n", "conv2n"))
        self.mask0 = _conv(sd, f"{ub}.mask.0", padding=1)
        self.mask2 = _conv(sd, f"{ub}.mask.2", scale=0.25)
        self.upsample = ConvexUpsample(4)
        self.hidden = int(sd[f"{ub}.gru08.convz.weight"].shape[0])

    def _features(self, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        r = 1 + NUM_REGISTERS
        patches = tokens[:, r:]
        learned = tokens[:, :r].reshape(1, 1, -1)
        read_3 = self.readouts[3](patches, learned)
        read_2 = self.readouts[2](patches, learned)
        read_1 = self.sample_1(self.readouts[1](patches, learned))
        read_0 = self.nearest_0(self.sample_0(self.readouts[0](patches, learned)))
        # Upstream's ConvBlocks ReLU read_3, read_2 and read_1 in place; read_0 is never touched.
        return F.relu(read_3), F.relu(read_2), F.relu(read_1), read_0

    def _initial_state(self, ref: torch.Tensor) -> torch.Tensor:
        feat, depth_conf, normal_conf = ref[:, :-2], ref[:, -2:-1], ref[:, -1:]
        logits = self.depth_conv2(F.relu(self.depth_conv0(feat)))
        prob = torch.softmax(logits.permute(0, 2, 3, 1), dim=-1)  # bins on the channel axis
        depth = F.linear(prob, self.bins).permute(0, 3, 1, 2)
        depth_state = (clamp_depth(depth) - MAX_DEPTH) / REGRESS_SCALE
        n = F.relu(self.normal[0](feat))
        n = F.relu(self.normal[1](n))
        n = F.relu(self.normal[2](n))
        normal = norm_normalize(torch.cat([self.normal[3](n), normal_conf], dim=1))
        return torch.cat([depth_state, depth_conf, normal], dim=1)

    def _flow_head(self, h: torch.Tensor) -> torch.Tensor:
        depth = self.flow[1](F.relu(self.flow[0](h)))
        normal = self.flow[3](F.relu(self.flow[2](h)))
        return torch.cat([depth, normal], dim=1)

    def _step32(self, net: list[torch.Tensor], inp: list[list[torch.Tensor]]) -> None:
        net[2] = self.gru32(net[2], inp[2], avg_pool_3x3_s2_include_pad(net[1]))

    def _step16(self, net: list[torch.Tensor], inp: list[list[torch.Tensor]]) -> None:
        g7 = self.g7
        net[1] = self.gru16(net[1], inp[1], resize_bilinear_ac(avg_pool_3x3_s2_include_pad(net[0]), g7, g7),
                            resize_bilinear_ac(net[2], g7, g7))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x, x2, x1, x0 = self._features(tokens)
        ref = self.upconv_1(self.upconv_2(self.upconv_3(x), x2), x1)
        state = self._initial_state(ref)
        net, inp = [], []
        for heads, zqr, feat in zip(self.context, self.zqr, (x0, x1, x2)):
            net.append(torch.tanh(heads[0](feat)))
            cz, cr, cq = torch.split(zqr(F.relu(heads[1](feat))), self.hidden, dim=1)
            inp.append([cz, cr, cq])
        h = None
        for _ in range(self.iters):
            self._step32(net, inp)
            self._step32(net, inp)
            self._step16(net, inp)
            self._step32(net, inp)
            self._step16(net, inp)
            net[0] = self.gru08(net[0], inp[0], state, resize_bilinear_ac(net[1], self.g4, self.g4))
            h = net[0]
            state = state + self._flow_head(h)
        mask = self.mask2(F.relu(self.mask0(h)))
        up = self.upsample(state[:, :1], mask)
        return clamp_depth(up * REGRESS_SCALE + MAX_DEPTH)
