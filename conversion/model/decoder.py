"""RAFTDepthNormalDPT5: DPT readout/fusion, initial depth+normal heads, ConvGRU refinement.

Every stage is its own method so an exporter can swap one (e.g. a GPU-safe convex upsample)
without touching the others. `record`, when given, collects the golden-README intermediates.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from conversion.model.context import ContextFeatureEncoder
from conversion.model.dpt import DecoderFeature, EncoderFeature
from conversion.model.gru import BasicMultiUpdateBlock, ConvexUpsample, StateFeature
from conversion.model.heads import (DepthToState, ExpectedDepth, NormNormalize, depth_regressor, normal_predictor,
                                    state_to_depth)

# vit.raft5.small.py (+ its dino_vit_small_reg.dpt_raft base): the ViT-S decoder sizes.
VIT_S_DECODER = {
    "in_channels": 384,
    "feature_channels": [96, 192, 384, 768],   # read_0 (1/4), read_1 (1/7), read_2, read_3 (1/14)
    "decoder_channels": [48, 96, 192, 384, 384],
    "hidden_channels": [48, 48, 48],           # 1/4, 1/7, 1/14
    "num_register_tokens": 4,
    "iters": 4,
}

Record = dict[str, torch.Tensor] | None


class UpsampleDepth(nn.Module):
    """Decode: GRU state [B,6,h,w] + convex mask [B,144,h,w] -> clamped depth (m) [B,1,4h,4w].

    Upstream upsamples all six state channels and keeps the first; the upsampling is per
    channel, so upsampling only the depth channel gives the same values.
    """

    def __init__(self) -> None:
        super().__init__()
        self.upsample = ConvexUpsample()

    def forward(self, state: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return state_to_depth(self.upsample(state[:, :1], mask))


class RAFTDepthNormalDPT5(nn.Module):
    """Tokens [B, 1+R+gh*gw, C] -> canonical depth [B,1,14gh,14gw] after `iters` GRU iterations."""

    def __init__(self, in_channels: int = 384, feature_channels: list[int] = VIT_S_DECODER["feature_channels"],
                 decoder_channels: list[int] = VIT_S_DECODER["decoder_channels"],
                 hidden_channels: list[int] = VIT_S_DECODER["hidden_channels"],
                 num_register_tokens: int = 4, iters: int = 4) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_register_tokens = num_register_tokens
        self.iters = iters
        used = decoder_channels[1]
        self.token2feature = EncoderFeature(in_channels, feature_channels, num_register_tokens)
        self.decoder_mono = DecoderFeature(decoder_channels)
        self.depth_regressor = depth_regressor(used)
        self.normal_predictor = normal_predictor(used)
        self.context_feature_encoder = ContextFeatureEncoder(feature_channels, hidden_channels, hidden_channels)
        self.context_zqr_convs = nn.ModuleList(
            nn.Conv2d(c, 3 * h, 3, padding=1) for c, h in zip(hidden_channels, hidden_channels))
        self.update_block = BasicMultiUpdateBlock(hidden_channels)
        # Weight-free stages as submodules (no checkpoint keys), each swappable by an exporter.
        self.expected_depth = ExpectedDepth()
        self.norm_normalize = NormNormalize()
        # The GRU state's depth unit in three swappable places: Encode (depth -> state),
        # Feature (state -> the 1/4 GRU's input), Decode (state -> full-resolution depth).
        self.encode_depth = DepthToState()
        self.state_feature = StateFeature()
        self.upsample_depth = UpsampleDepth()

    def split_tokens(self, tokens: torch.Tensor, grid_h: int, grid_w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[B,N,C] -> patch features [B,gh,gw,C] and cls+registers flattened to [B,1,1,(1+R)C]."""
        b, c, r = tokens.shape[0], self.in_channels, 1 + self.num_register_tokens
        return tokens[:, r:].reshape(b, grid_h, grid_w, c), tokens[:, :r].reshape(b, 1, 1, r * c)

    def initial_state(self, ref_feat: torch.Tensor) -> torch.Tensor:
        """Fused 1/4 features -> [(d-200)/100, depth conf, unit normal xyz, kappa] (6 channels)."""
        features, depth_conf, normal_conf = ref_feat[:, :-2], ref_feat[:, -2:-1], ref_feat[:, -1:]
        depth = self.expected_depth(self.depth_regressor(features))
        depth = self.encode_depth(depth)
        normal = self.norm_normalize(torch.cat([self.normal_predictor(features), normal_conf], dim=1))
        return torch.cat((depth, depth_conf, normal), dim=1)

    def context(self, x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor
                ) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """Initial GRU hidden states (tanh) and the per-scale context terms [cz, cr, cq].

        Upstream's in-place ReLU in the DPT fusion has already rectified read_1 and read_2 by the
        time the context encoder reads them (read_0 is not fused, so it stays as is).
        """
        cnet = self.context_feature_encoder(x0, F.relu(x1), F.relu(x2))
        net = [torch.tanh(hidden) for hidden, _ in cnet]
        inp = [list(conv(F.relu(ctx)).split(conv.out_channels // 3, dim=1))
               for (_, ctx), conv in zip(cnet, self.context_zqr_convs)]
        return net, inp

    def forward(self, tokens: torch.Tensor, grid_h: int, grid_w: int, record: Record = None) -> torch.Tensor:
        patches, learned = self.split_tokens(tokens, grid_h, grid_w)
        x, x2, x1, x0 = self.token2feature(patches, learned)
        ref_feat = self.decoder_mono(x, x2, x1)
        state = self.initial_state(ref_feat)
        net, inp = self.context(x0, x1, x2)
        if record is not None:
            record.update(readout_1_14=x, depth_init=state, net_init_1_4=net[0], net_init_1_7=net[1],
                          net_init_1_14=net[2], depth_bins=self.expected_depth.bins)
        states, depths = [], []
        for itr in range(self.iters):
            net, mask, delta = self.update_block(net, inp, self.state_feature(state))
            state = state + delta
            if record is not None or itr == self.iters - 1:
                states.append(state)
                depths.append(self.upsample_depth(state, mask))
        if record is not None:
            record.update(coords_after_iter=torch.cat(states), depth_after_iter=torch.cat(depths))
        return depths[-1]
