"""Each GPU-safe rewrite in conversion/export against the PyTorch op or faithful module it replaces,
and the whole export form against the golden upstream depth."""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conversion.audit import audit_model
from conversion.export import ops
from conversion.export.decoder import norm_normalize
from conversion.export.encoder import ExportBlock
from _conversion_helpers import convert_small, run_litert

torch.manual_seed(0)


def _randn(*shape: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def test_gelu_erf_formula_error_is_below_1e6_over_a_wide_range():
    x = torch.linspace(-60.0, 60.0, 2_000_001, dtype=torch.float64)
    exact = 0.5 * x * (1.0 + torch.special.erf(x / math.sqrt(2.0)))
    err = (ops.gelu_erf(x) - exact).abs().max().item()
    assert err <= 1e-6, err


def test_gelu_erf_in_float32_is_within_1e6_of_exact_gelu():
    x = torch.linspace(-12.0, 12.0, 400_001)
    x64 = x.double()
    exact = 0.5 * x64 * (1.0 + torch.special.erf(x64 / math.sqrt(2.0)))
    err = (ops.gelu_erf(x).double() - exact).abs().max().item()
    assert err <= 1e-6, err
    tanh_err = (F.gelu(x, approximate="tanh").double() - exact).abs().max().item()
    assert err < tanh_err / 100  # far more accurate than tanh-GELU
    big = torch.tensor([-1e4, -300.0, 300.0, 1e4])
    assert torch.equal(ops.gelu_erf(big), F.gelu(big))  # no inf/nan, exact in the tails


def test_elu_select_free_matches_elu():
    x = torch.cat([torch.linspace(-30, 30, 100_001), torch.tensor([0.0, -1e-8, 1e-8])])
    assert (ops.elu_select_free(x) - F.elu(x)).abs().max().item() <= 2e-7


def test_norm_normalize_matches_faithful():
    from conversion.model.heads import norm_normalize as faithful

    x = _randn(1, 4, 16, 16, scale=3.0)
    torch.testing.assert_close(norm_normalize(x), faithful(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_layer_norm_last_matches_layer_norm(scale):
    x = _randn(1, 1029, 384, scale=scale) + 5.0 * scale
    w, b = 1 + 0.1 * _randn(384, seed=1), 0.05 * _randn(384, seed=2)
    ref = F.layer_norm(x, (384,), w, b, 1e-6)
    torch.testing.assert_close(ops.layer_norm_last(x, w, b, 1e-6), ref, rtol=1e-5, atol=2e-5)


def test_layer_norm_channels_matches_permuted_layer_norm():
    x = _randn(1, 48, 20, 24, scale=2.0)
    w, b = 1 + 0.1 * _randn(48, seed=1), 0.05 * _randn(48, seed=2)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (48,), w, b, 1e-5).permute(0, 3, 1, 2)
    torch.testing.assert_close(ops.LayerNormChannels(w, b, 1e-5)(x), ref, rtol=1e-5, atol=1e-5)


def test_sub_pixel_conv_transpose_matches_conv_transpose():
    deconv = nn.ConvTranspose2d(384, 192, 2, stride=2)
    x = _randn(1, 384, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ops.SubPixelConvTranspose(deconv)(x), deconv(x), rtol=1e-5, atol=1e-5)


def test_sub_pixel_conv_transpose_refuses_overlapping_kernels():
    with pytest.raises(ValueError, match="kernel == stride"):
        ops.SubPixelConvTranspose(nn.ConvTranspose2d(8, 4, 3, stride=2))


def test_one_hot_neighbours_equal_unfold():
    x = _randn(1, 1, 112, 112)
    assert torch.equal(ops.Neighbours3x3()(x), F.unfold(x, [3, 3], padding=1).view(1, 9, 112, 112))


@pytest.mark.parametrize("size,scale", [(32, 3.5), (4, 3.5), (9, 2.0)])
def test_nearest_resize_equals_interpolate_nearest(size, scale):
    x = _randn(1, 96, size, size)
    ref = F.interpolate(x, scale_factor=scale, mode="nearest")
    assert torch.equal(ops.NearestResize(size, size, scale)(x), ref)


def test_nearest_index_is_torch_choice_not_naive_rounding():
    # upstream's pick for 32 -> 112 is floor(dst / 3.5) as float computes it: 0,0,0,0,1,1,1,2,...
    idx = ops.nearest_index(32, 3.5)
    assert idx[:8].tolist() == [0, 0, 0, 0, 1, 1, 1, 2]
    assert idx.shape == (112,) and idx[-1].item() == 31


def test_avg_pool_counts_padding_like_upstream():
    x = _randn(1, 48, 112, 112) + 3.0
    torch.testing.assert_close(ops.avg_pool_3x3_s2_include_pad(x), F.avg_pool2d(x, 3, stride=2, padding=1),
                               rtol=1e-6, atol=1e-6)
    excl = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
    assert not torch.allclose(ops.avg_pool_3x3_s2_include_pad(x), excl)


@pytest.mark.parametrize("src,scale", [(32, 2.0), (64, 7 / 4)])
def test_fixed_size_bilinear_equals_upstream_scale_factor_resize(src, scale):
    x = _randn(1, 8, src, src)
    ref = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=True)
    out = ops.resize_bilinear_ac(x, *ref.shape[-2:])
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_convex_upsample_matches_faithful():
    from conversion.model.gru import convex_upsample

    flow, mask = _randn(1, 1, 28, 28, seed=3), _randn(1, 144, 28, 28, scale=2.0, seed=4)
    torch.testing.assert_close(ops.ConvexUpsample(4)(flow, mask), convex_upsample(flow, mask),
                               rtol=1e-6, atol=1e-6)


def _faithful_block() -> nn.Module:
    from conversion.model.vit import Block
    from conversion.random_weights import randomize_

    return randomize_(Block(384, 6, 4), seed=5).eval()


def test_vit_block_with_split_qkv_and_folded_layerscale_matches_faithful_block():
    block = _faithful_block()
    sd = {f"b.{k}": v.detach() for k, v in block.state_dict().items()}
    x = _randn(1, 1029, 384, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(ExportBlock(sd, "b")(x), block(x), rtol=1e-5, atol=2e-5)


class _AllRewrites(nn.Module):
    """Every rewrite in one small graph, to check the converter keeps them GPU-safe."""

    def __init__(self) -> None:
        super().__init__()
        self.deconv = ops.SubPixelConvTranspose(nn.ConvTranspose2d(8, 4, 2, stride=2))
        self.nearest = ops.NearestResize(8, 8, 3.5)
        self.norm = ops.LayerNormChannels(torch.ones(4), torch.zeros(4), 1e-5)
        self.upsample = ops.ConvexUpsample(4)
        self.mask = nn.Conv2d(4, 144, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [1,8,8,8]
        y = self.deconv(ops.gelu_erf(x))  # [1,4,16,16]
        y = self.norm(ops.elu_select_free(y))
        y = ops.resize_bilinear_ac(ops.avg_pool_3x3_s2_include_pad(y), 28, 28)  # [1,4,28,28]
        z = self.nearest(x)[:, :4]  # [1,4,28,28]
        up = self.upsample(y[:, :1] + z[:, :1], self.mask(y + z))  # [1,1,112,112]
        return up


def test_all_rewrites_convert_to_gpu_safe_ops_and_keep_their_values(tmp_path):
    module = _AllRewrites().eval()
    x = _randn(1, 8, 8, 8, seed=7)
    path = convert_small(module, x, tmp_path / "rewrites.tflite")
    report = audit_model(path)
    assert report.ok, report.problems
    assert {"GELU", "ELU", "GATHER", "GATHER_ND", "TRANSPOSE_CONV", "SELECT", "SELECT_V2",
            "RESIZE_NEAREST_NEIGHBOR", "POW"}.isdisjoint(report.ops)
    with torch.no_grad():
        ref = module(x).numpy()
    np.testing.assert_allclose(run_litert(path, x.numpy()), ref, rtol=1e-5, atol=1e-5)


def _golden_weights(golden_dir):
    spec = importlib.util.spec_from_file_location("golden_make_weights", golden_dir / "make_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_state_dict(mod.load_manifest(), 0)


def test_export_form_matches_golden_depth_like_the_faithful_model(golden_dir):
    from conversion.checkpoint import model_from_state_dict, state_dict_from_numpy
    from conversion.export import ExportMetric3D

    faithful = model_from_state_dict(state_dict_from_numpy(_golden_weights(golden_dir)))
    export = ExportMetric3D(faithful)
    x = torch.from_numpy(np.load(golden_dir / "input_nchw_f32.npy"))
    golden = np.load(golden_dir / "depth_canonical_f32.npy")
    with torch.no_grad():
        depth = export(x)["depth"].numpy()
    assert depth.shape == golden.shape == (1, 1, 448, 448)
    err = np.abs(depth - golden)
    assert np.all(err <= 1e-4 + 5e-5 * golden), float((err / golden).max())
    assert float((err / golden).mean()) <= 5e-6
