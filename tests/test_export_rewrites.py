"""Each GPU-safe rewrite in conversion/export against the PyTorch op or faithful module it replaces,
and the whole export form against the golden upstream depth."""
from __future__ import annotations

import copy
import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conversion.audit import audit_model
from conversion.export import ops
from conversion.export.ops import norm_normalize
from conversion.export.transform import gpu_safe_
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


@pytest.mark.parametrize("src,scale", [(32, 2.0), (64, 7 / 4)])
def test_fixed_size_bilinear_module_equals_upstream_upsample(src, scale):
    x = _randn(1, 8, src, src)
    ref = nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=True)(x)
    out = ops.ResizeBilinearAC(scale)(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_expected_depth_on_last_axis_matches_faithful():
    from conversion.model.heads import depth_bins, expected_depth

    logits, bins = _randn(1, 256, 12, 16, scale=4.0, seed=8), depth_bins()
    # The export's expectation is in units of 100 m (the GRU state's unit there).
    torch.testing.assert_close(ops.ExpectedDepth(bins)(logits) * 100.0, expected_depth(logits, bins),
                               rtol=2e-6, atol=1e-5)


def test_mask_scale_folds_exactly_into_the_mask_conv():
    from conversion.model.gru import BasicMultiUpdateBlock
    from conversion.random_weights import randomize_

    block = randomize_(BasicMultiUpdateBlock([48, 48, 48]), seed=9).eval()
    h = _randn(1, 48, 14, 14, seed=10)
    with torch.no_grad():
        folded = gpu_safe_(copy.deepcopy(block))
        assert torch.equal(folded.mask_scale(folded.mask(h)), block.mask_scale(block.mask(h)))  # 0.25: exact


def test_transform_keeps_the_faithful_model_and_leaves_no_unsafe_module():
    from conversion.export import ExportMetric3D
    from conversion.model import Metric3D, context, decoder, gru, heads, vit
    from conversion.random_weights import randomize_

    faithful = randomize_(Metric3D(), seed=11).eval()
    before = {k: v.clone() for k, v in faithful.state_dict().items()}
    export = ExportMetric3D(faithful, 224)
    after = faithful.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    unsafe = (nn.GELU, nn.LayerNorm, nn.ConvTranspose2d, nn.Upsample, nn.AvgPool2d, vit.Attention,
              vit.LayerScale, context.LayerNorm2d, heads.ExpectedDepth, heads.NormNormalize,
              gru.ConvexUpsample, gru.Scale, heads.DepthToState, gru.StateFeature, decoder.UpsampleDepth)
    assert not [m for m in export.modules() if isinstance(m, unsafe)]
    assert export.model.decoder.upsample_depth.upsample.padding.shape == (1, 9, 56, 56)  # 224 / 4
    block = export.model.decoder.context_feature_encoder.outputs04[0][0]
    assert block.norm3 is block.downsample[1]  # upstream's one LayerNorm under two names stays one
    with pytest.raises(ValueError, match="multiple of 28"):
        ExportMetric3D(faithful, 230)


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
    x = _randn(1, 1029, 384, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(gpu_safe_(copy.deepcopy(block))(x), block(x), rtol=1e-5, atol=2e-5)


class _AllRewrites(nn.Module):
    """Every rewrite in one small graph, to check the converter keeps them GPU-safe."""

    def __init__(self) -> None:
        super().__init__()
        self.deconv = ops.SubPixelConvTranspose(nn.ConvTranspose2d(8, 4, 2, stride=2))
        self.nearest = ops.NearestResize(8, 8, 3.5)
        self.norm = ops.LayerNormChannels(torch.ones(4), torch.zeros(4), 1e-5)
        self.upsample = ops.ConvexUpsample(4, pad_value=2.0, size=(28, 28))
        self.mask = nn.Conv2d(4, 144, 1)
        self.expectation = ops.BlockedDotProduct(torch.linspace(0.1, 2.0, 16), 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [1,8,8,8]
        y = self.deconv(ops.gelu_erf(x))  # [1,4,16,16]
        y = self.norm(ops.elu_select_free(y))
        y = ops.resize_bilinear_ac(ops.avg_pool_3x3_s2_include_pad(y), 28, 28)  # [1,4,28,28]
        z = self.nearest(x)[:, :4]  # [1,4,28,28]
        up = self.upsample(y[:, :1] + z[:, :1], self.mask(y + z))  # [1,1,112,112]
        u = self.expectation(torch.softmax(self.mask(y)[:, :16].permute(0, 2, 3, 1), dim=-1))  # [1,28,28,1]
        return ops.clamp_interior_exact(up, -0.5, 0.5) + u.mean()


def test_all_rewrites_convert_to_gpu_safe_ops_and_keep_their_values(tmp_path):
    module = _AllRewrites().eval()
    x = _randn(1, 8, 8, 8, seed=7)
    path = convert_small(module, x, tmp_path / "rewrites.tflite")
    report = audit_model(path)
    assert report.ok, report.problems
    assert {"MAXIMUM", "MINIMUM"} <= set(report.ops)  # the interior-exact clamp
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


# ---- fp16-robust rewrites (GPUs run the graph with fp16 tensors and fp16 sums)

def _upstream_clamp(x: torch.Tensor) -> torch.Tensor:
    """Upstream's formula (RAFTDepthNormalDPT5.clamp), written out here as the reference."""
    y = F.relu(x - 0.1) + 0.1
    return 200.0 - F.relu(200.0 - y)


def test_clamp_interior_exact_equals_upstream_clamp_to_float32_rounding():
    x = torch.cat([torch.linspace(-5.0, 250.0, 100_001), torch.tensor([0.1, 200.0, 0.0999, 200.01])])
    got = ops.clamp_interior_exact(x, 0.1, 200.0)
    torch.testing.assert_close(got, _upstream_clamp(x), rtol=0, atol=2e-5)  # 2e-5 m: ~1 ulp of 200
    assert got.min().item() == np.float32(0.1) and got.max().item() == 200.0  # the bounds exactly


def test_clamp_interior_exact_keeps_fp16_depths_that_upstream_formula_rounds_to_an_eighth():
    x = torch.linspace(0.2, 150.0, 5001).half()
    assert torch.equal(ops.clamp_interior_exact(x, 0.1, 200.0), x)
    # The reference formula in fp16 goes through 200 - d, whose spacing is 0.125 m.
    naive_err = (_upstream_clamp(x).float() - x.float()).abs().max().item()
    assert naive_err > 0.03


def test_blocked_dot_product_equals_plain_dot_product_in_float32():
    w = torch.exp(torch.linspace(math.log(0.1), math.log(200.0), 256))
    p = torch.softmax(_randn(2, 7, 5, 256, scale=3.0, seed=11), dim=-1)
    torch.testing.assert_close(ops.BlockedDotProduct(w, 16)(p), p @ w[:, None], rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="multiple"):
        ops.BlockedDotProduct(w[:250], 16)


def _fp16_running_sum(terms: np.ndarray) -> np.ndarray:
    """Sum over the last axis left to right, rounding every partial sum to float16 (a model of an
    fp16 GPU accumulator)."""
    acc = np.zeros(terms.shape[:-1], np.float16)
    for k in range(terms.shape[-1]):
        acc = (acc + terms[..., k].astype(np.float16)).astype(np.float16)
    return acc


def test_blocked_sum_has_less_fp16_accumulation_error_than_one_running_sum():
    w = np.exp(np.linspace(math.log(0.1), math.log(200.0), 256)) / 100.0  # bins in units of 100 m
    p = torch.softmax(_randn(4096, 256, scale=3.0, seed=12), dim=-1).double().numpy()
    exact = p @ w
    plain = _fp16_running_sum(p * w)
    blocked = _fp16_running_sum(_fp16_running_sum((p * w).reshape(4096, 16, 16)).astype(np.float64))
    err_plain = np.mean(np.abs(plain - exact) / exact)
    err_blocked = np.mean(np.abs(blocked - exact) / exact)
    assert err_blocked < err_plain / 2, (err_blocked, err_plain)


def test_convex_upsample_of_d_over_100_padded_with_2_equals_upstream_state_form():
    from conversion.model.gru import convex_upsample

    s = -2.0 + 1.9 * torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(13))  # (d-200)/100
    mask = _randn(1, 144, 28, 28, scale=2.0, seed=14)
    up_u = ops.ConvexUpsample(4, pad_value=2.0, size=(28, 28))(s + 2.0, mask)
    torch.testing.assert_close(up_u - 2.0, convex_upsample(s, mask), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="size"):
        ops.ConvexUpsample(4, pad_value=2.0)


def test_convex_upsample_of_d_over_100_keeps_small_depths_in_fp16():
    from conversion.model.gru import convex_upsample

    depth = 0.1 + 2.0 * torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    mask = _randn(1, 144, 28, 28, scale=2.0, seed=16).double()
    exact = convex_upsample((depth - 200.0) / 100.0, mask) * 100.0 + 200.0
    up_u = ops.ConvexUpsample(4, pad_value=2.0, size=(28, 28)).half()((depth / 100.0).half(), mask.half())
    via_u = up_u.double() * 100.0
    via_s = convex_upsample(((depth - 200.0) / 100.0).half(), mask.half()).double() * 100.0 + 200.0
    rel_u = ((via_u - exact).abs() / exact).mean().item()
    rel_s = ((via_s - exact).abs() / exact).mean().item()
    assert rel_u < 2e-3 and rel_u < rel_s / 5, (rel_u, rel_s)


def test_decode_swap_equals_faithful_decode_of_the_upstream_state():
    from conversion.model.decoder import UpsampleDepth

    s = -2.0 + 1.9 * torch.rand(1, 6, 28, 28, generator=torch.Generator().manual_seed(17))
    mask = _randn(1, 144, 28, 28, scale=2.0, seed=18)
    got = ops.UpsampleDepthOver100((28, 28))(s + ops.StateOffset(6).offset, mask)
    # Both forms round values near 2 (fp32 spacing 2.4e-7, i.e. 2.4e-5 m after x100) a few times.
    torch.testing.assert_close(got, UpsampleDepth()(s, mask), rtol=0, atol=1e-4)


def test_export_gru_state_is_d_over_100_and_follows_golden_iterations(golden_dir):
    """The export decoder's state, fed the golden encoder output, against upstream's per-iteration
    states (s = u - 2 on the depth channel; golden README: intermediates agree to 2e-4)."""
    from conversion.checkpoint import model_from_state_dict, state_dict_from_numpy
    from conversion.export import ExportMetric3D

    inter = np.load(golden_dir / "intermediates.npz")
    export = ExportMetric3D(model_from_state_dict(state_dict_from_numpy(_golden_weights(golden_dir))))
    record: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        export.model.depth_model.decoder(torch.from_numpy(inter["enc_out"]), 32, 32, record=record)
    offset = np.zeros((1, 6, 1, 1), np.float32)
    offset[0, 0] = 2.0
    np.testing.assert_allclose(record["depth_init"].numpy() - offset, inter["depth_init"], rtol=0, atol=2e-4)
    np.testing.assert_allclose(record["coords_after_iter"].numpy() - offset, inter["coords_after_iter"],
                               rtol=0, atol=2e-4)
    assert float(record["depth_init"][:, 0].min()) > 0  # d/100, not upstream's negative s
