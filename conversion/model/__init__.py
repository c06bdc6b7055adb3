"""Faithful PyTorch Metric3D v2 ViT-Small (upstream YvanYin/Metric3D @ eb5b6fa, `metric3d_vit_small`).

Structure (module attribute paths = official checkpoint keys, e.g.
`depth_model.encoder.blocks.0.3.attn.qkv.weight`):

    Metric3D                              metric3d.py   forward(image) -> canonical depth [B,1,H,W]
    └ depth_model
      ├ encoder: DinoVisionTransformerReg vit.py        prepare_tokens / forward_tokens / pos_embed_for
      └ decoder: RAFTDepthNormalDPT5      decoder.py    split_tokens, initial_state, context; swappable encode_depth, state_feature, upsample_depth
        ├ token2feature (EncoderFeature)  dpt.py        read_3, read_2 (1/14), read_1 (1/7), read_0 (1/4)
        ├ decoder_mono (DecoderFeature)   dpt.py        DPT fusion -> 98 channels at 1/4
        ├ depth_regressor, normal_predictor heads.py    256-bin expectation, unit normals
        ├ context_feature_encoder         context.py    GRU hidden init + context (LayerNorm2d eps 1e-5)
        ├ context_zqr_convs
        └ update_block                    gru.py        ConvGRUs, flow head, convex mask; ConvexUpsample

Weight-free stages (resizes, pooling, expected depth, normal normalisation, convex upsampling,
the mask's 0.25) are submodules without checkpoint keys, so conversion.export can swap them
for GPU-safe forms in place instead of re-declaring the network.

Entry points: `Metric3D()` (random init; load weights with `conversion.checkpoint`),
`Metric3D.forward_with_intermediates(image)` for parity debugging.
"""
from conversion.model.metric3d import Metric3D

__all__ = ["Metric3D"]
