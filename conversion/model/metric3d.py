"""Metric3D v2 ViT-S: the full network with the official checkpoint's parameter names.

Input: normalized RGB [B,3,H,W] (H, W multiples of 28). Output: canonical depth [B,1,H,W] in
meters for a 1000 px focal length at the network resolution, clamped to [0.1, 200].
"""
from __future__ import annotations

import torch
from torch import nn

from conversion.model.decoder import RAFTDepthNormalDPT5
from conversion.model.vit import DinoVisionTransformerReg

SIZE_MULTIPLE = 28  # patch 14, and the decoder's 1/7 -> 1/4 step needs an even patch grid


class DepthModel(nn.Module):
    """Holds encoder and decoder under the names the checkpoint uses (`depth_model.*`)."""

    def __init__(self, iters: int = 4) -> None:
        super().__init__()
        self.encoder = DinoVisionTransformerReg()
        self.decoder = RAFTDepthNormalDPT5(iters=iters)


class Metric3D(nn.Module):
    """Metric3D v2 ViT-S: DINOv2-reg ViT-S/14 encoder + RAFTDepthNormalDPT5 decoder (4 GRU steps)."""

    def __init__(self, iters: int = 4) -> None:
        super().__init__()
        self.depth_model = DepthModel(iters)

    @property
    def encoder(self) -> DinoVisionTransformerReg:
        return self.depth_model.encoder

    @property
    def decoder(self) -> RAFTDepthNormalDPT5:
        return self.depth_model.decoder

    def _run(self, image: torch.Tensor, record: dict[str, torch.Tensor] | None) -> torch.Tensor:
        shape = tuple(image.shape)
        if len(shape) != 4 or shape[1] != 3 or shape[2] % SIZE_MULTIPLE or shape[3] % SIZE_MULTIPLE:
            raise ValueError(f"expected a [B,3,H,W] image with H and W multiples of {SIZE_MULTIPLE}, "
                             f"got {list(shape)}")
        grid_h, grid_w = shape[2] // self.encoder.patch_size, shape[3] // self.encoder.patch_size
        tokens_in = self.encoder.prepare_tokens(image)
        tokens = self.encoder.forward_tokens(tokens_in)
        if record is not None:
            record.update(pos_embed_interp=self.encoder.pos_embed_for(grid_h, grid_w),
                          enc_tokens_in=tokens_in, enc_out=tokens)
        # ViT-S feeds the same final-LayerNorm tokens to all four readouts.
        return self.decoder(tokens, grid_h, grid_w, record)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self._run(image, None)

    def forward_with_intermediates(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Depth plus the tensors named in the golden README's intermediates.npz (for debugging parity)."""
        record: dict[str, torch.Tensor] = {}
        record["depth"] = self._run(image, record)
        return record
