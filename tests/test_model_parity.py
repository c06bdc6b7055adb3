"""The PyTorch Metric3D v2 ViT-S against upstream's golden outputs (seed-0 synthetic weights).

One test per stage, so a regression points at the stage that broke. The forward runs once per
module (~1.5 s on 2 cores).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _model_helpers import seed0_arrays
from conversion.checkpoint import state_dict_from_numpy
from conversion.model import Metric3D
from conversion.model.gru import convex_upsample
from conversion.model.heads import clamp_depth
from conversion.model.vit import interpolate_pos_embed

INTERMEDIATE_ATOL = 2e-4  # golden README: measured fp64-vs-fp32 gap is <= 1.7e-5
DEPTH_ATOL, DEPTH_RTOL, DEPTH_MEAN_REL = 1e-4, 5e-5, 5e-6
TOKEN_AND_FEATURE_STAGES = ["pos_embed_interp", "enc_tokens_in", "enc_out", "readout_1_14", "depth_init",
                            "net_init_1_4", "net_init_1_7", "net_init_1_14", "coords_after_iter", "depth_bins"]


@pytest.fixture(scope="module")
def model(golden_dir) -> Metric3D:
    m = Metric3D().eval()
    m.load_state_dict(state_dict_from_numpy(seed0_arrays(golden_dir)), strict=True)
    return m


@pytest.fixture(scope="module")
def golden_input(golden_dir) -> torch.Tensor:
    return torch.from_numpy(np.load(golden_dir / "input_nchw_f32.npy"))


@pytest.fixture(scope="module")
def outputs(model, golden_input) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {k: v.numpy() for k, v in model.forward_with_intermediates(golden_input).items()}


@pytest.fixture(scope="module")
def golden(golden_dir):
    return np.load(golden_dir / "intermediates.npz")


def assert_depth_close(depth: np.ndarray, ref: np.ndarray) -> None:
    err = np.abs(depth - ref)
    bad = err > DEPTH_ATOL + DEPTH_RTOL * ref
    assert not bad.any(), f"{bad.sum()} pixels off; worst abs {err.max():.3g} m, worst rel {(err / ref).max():.3g}"


def test_state_dict_matches_manifest_names_order_and_shapes(golden_dir):
    entries = json.loads((golden_dir / "manifest.json").read_text())["entries"]
    state = Metric3D().state_dict()
    assert list(state) == [e["name"] for e in entries]
    assert [list(v.shape) for v in state.values()] == [e["shape"] for e in entries]


@pytest.mark.parametrize("stage", TOKEN_AND_FEATURE_STAGES)
def test_intermediate_matches_upstream(stage, outputs, golden):
    got, ref = outputs[stage], golden[stage]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=INTERMEDIATE_ATOL)


def test_depth_after_each_iteration_matches_upstream(outputs, golden):
    # Depth in meters (up to ~134 m): judged by the depth rule, as float32 ulps there are ~8e-6.
    got, ref = outputs["depth_after_iter"], golden["depth_after_iter"]
    assert got.shape == ref.shape == (4, 1, 448, 448)
    for itr in range(4):
        assert_depth_close(got[itr], ref[itr])


def test_final_depth_per_pixel(outputs, golden_dir):
    ref = np.load(golden_dir / "depth_canonical_f32.npy")
    assert outputs["depth"].shape == ref.shape == (1, 1, 448, 448)
    assert_depth_close(outputs["depth"], ref)


def test_final_depth_mean_relative_error(outputs, golden_dir):
    ref = np.load(golden_dir / "depth_canonical_f32.npy")
    assert float(np.mean(np.abs(outputs["depth"] - ref) / ref)) <= DEPTH_MEAN_REL


def test_forward_equals_forward_with_intermediates(model, golden_input, outputs):
    # forward() skips the per-iteration upsampling; the last iteration must be untouched by that.
    with torch.no_grad():
        depth = model(golden_input).numpy()
    np.testing.assert_array_equal(depth, outputs["depth"])


def test_input_size_not_multiple_of_28_is_refused(model):
    with pytest.raises(ValueError, match="multiples of 28"):
        model(torch.zeros(1, 3, 448, 434))


def test_pos_embed_at_native_grid_is_the_table_itself():
    table = torch.randn(1, 37 * 37 + 1, 8)
    assert interpolate_pos_embed(table, 37, 37) is table


def test_pos_embed_resize_uses_offset_scale_factor_not_size():
    table = torch.randn(1, 37 * 37 + 1, 8, generator=torch.Generator().manual_seed(1))
    got = interpolate_pos_embed(table, 32, 32)
    grid = table[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    by_size = F.interpolate(grid, size=(32, 32), mode="bicubic").permute(0, 2, 3, 1).reshape(1, -1, 8)
    assert got.shape == (1, 1025, 8)
    assert torch.equal(got[:, :1], table[:, :1])
    assert (got[:, 1:] - by_size).abs().max() > 1e-2


def _convex_upsample_reference(state: np.ndarray, mask: np.ndarray, f: int) -> np.ndarray:
    """Loop form of the documented rule: out[4h+i, 4w+j] = sum_k softmax_k(mask[k*16+i*4+j]) * nb_k."""
    n, d, h, w = state.shape
    padded = np.pad(state, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, d, f * h, f * w), np.float64)
    for i in range(f):
        for j in range(f):
            logits = np.stack([mask[:, k * f * f + i * f + j] for k in range(9)], axis=1)
            wts = np.exp(logits - logits.max(axis=1, keepdims=True))
            wts /= wts.sum(axis=1, keepdims=True)
            for k in range(9):
                dy, dx = divmod(k, 3)
                out[:, :, i::f, j::f] += wts[:, k:k + 1] * padded[:, :, dy:dy + h, dx:dx + w]
    return out


def test_convex_upsample_channel_order_and_zero_padding():
    gen = torch.Generator().manual_seed(2)
    state, mask = torch.randn(1, 2, 3, 5, generator=gen), 3 * torch.randn(1, 9 * 16, 3, 5, generator=gen)
    got = convex_upsample(state, mask).numpy()
    np.testing.assert_allclose(got, _convex_upsample_reference(state.numpy(), mask.numpy(), 4), atol=1e-5)


def test_clamp_depth_follows_upstream_relu_formula():
    # 200 - relu(200 - y) rounds in float32: the low bound comes out as 200 - 199.9, not 0.1.
    x = torch.tensor([-5.0, 0.05, 0.1, 1.0, 150.0, 200.0, 1e4])
    got = clamp_depth(x).numpy()
    low = np.float32(200.0) - np.float32(199.9)
    assert low != np.float32(0.1)
    np.testing.assert_array_equal(got[:3], low)
    np.testing.assert_allclose(got[3:], [1.0, 150.0, 200.0, 200.0], rtol=0, atol=2e-5)


def test_batched_non_square_input_matches_single_runs(model, golden_input):
    # 224 x 280 (16 x 20 patches): non-square grids and B > 1 go through the same reshapes.
    crops = torch.cat([golden_input[:, :, :224, :280], golden_input[:, :, 100:324, 150:430]])
    with torch.no_grad():
        batched = model(crops)
        singles = torch.cat([model(crops[:1]), model(crops[1:])])
    assert batched.shape == (2, 1, 224, 280)
    assert not torch.equal(batched[0], batched[1])
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-4)
