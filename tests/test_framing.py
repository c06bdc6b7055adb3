"""Framing: full photo (letterbox) and centre square, intrinsics through scale + offset, the
download grid and its K, upsampling from the content box; a tilted plane seen through every
mode and aspect ratio lands on the plane worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from backend.engine import EngineInfo
from backend.framing import (
    CENTRE_SQUARE,
    FULL_PHOTO,
    DownloadGrid,
    Framing,
    download_grid,
    framing_for,
    upsample_to_grid,
)
from backend.geometry import backproject
from backend.intrinsics import PIXEL_8A_PRESET, PRESETS, Intrinsics, centered
from backend.model_info import ModelInfo
from backend.pipeline import Estimate, PipelineOptions, rerender

SIZE = 448


def test_centre_square_for_landscape_portrait_and_odd_margins():
    f = framing_for(640, 480, SIZE, CENTRE_SQUARE)
    assert (f.x0, f.y0, f.width, f.height) == (80, 0, 480, 480)
    assert (f.left, f.top, f.content_width, f.content_height) == (0, 0, SIZE, SIZE)
    assert (framing_for(480, 640, SIZE, CENTRE_SQUARE).x0, framing_for(480, 640, SIZE, CENTRE_SQUARE).y0) == (0, 80)
    assert framing_for(641, 480, SIZE, CENTRE_SQUARE).x0 == 80
    assert framing_for(448, 448, SIZE, CENTRE_SQUARE).scale_x == 1.0
    assert f.valid_mask().all()


def test_centre_square_maps_intrinsics_by_the_crop_formula():
    net = framing_for(640, 480, SIZE, CENTRE_SQUARE).network_intrinsics(Intrinsics(500, 520, 330.0, 250.0))
    k = 448 / 480  # fx448 = fx * 448 / s, cx448 = (cx - x0 + 1/2) * 448 / s - 1/2
    assert net.fx == pytest.approx(500 * k) and net.fy == pytest.approx(520 * k)
    assert net.cx == pytest.approx((330.0 - 80 + 0.5) * k - 0.5)
    assert net.cy == pytest.approx((250.0 + 0.5) * k - 0.5)


def test_full_photo_of_the_motorcycle_worked_by_hand():
    # 741 x 500: the long side 741 -> 448, the short side 500 * 448 / 741 = 302.29 -> 302 rows,
    # 146 rows of padding: 73 above, 73 below.
    f = framing_for(741, 500, SIZE, FULL_PHOTO)
    assert (f.x0, f.y0, f.width, f.height) == (0, 0, 741, 500)
    assert (f.left, f.top, f.content_width, f.content_height) == (0, 73, 448, 302)
    net = f.network_intrinsics(Intrinsics(994.978, 994.978, 311.193, 254.877))
    assert net.fx == pytest.approx(994.978 * 448 / 741)
    assert net.fy == pytest.approx(994.978 * 302 / 500)
    assert net.cx == pytest.approx((311.193 + 0.5) * 448 / 741 - 0.5)
    assert net.cy == pytest.approx((254.877 + 0.5) * 302 / 500 - 0.5 + 73)
    mask = f.valid_mask()
    assert mask.sum() == 448 * 302 and mask[73:375].all() and not mask[:73].any() and not mask[375:].any()


@pytest.mark.parametrize("mode", [CENTRE_SQUARE, FULL_PHOTO])
@pytest.mark.parametrize("width, height", [(640, 480), (4080, 3072), (741, 500), (300, 451), (1920, 1080)])
def test_image_centre_maps_to_the_centre_of_the_content_box(mode, width, height):
    f = framing_for(width, height, SIZE, mode)
    net = f.network_intrinsics(PRESETS[PIXEL_8A_PRESET](width, height).intrinsics)
    centre_x, centre_y = f.left + (f.content_width - 1) / 2, f.top + (f.content_height - 1) / 2
    # Exact when the crop margin is even; off by half a photo pixel when it is odd (centre square).
    tolerance = 0.5 * max(f.scale_x, f.scale_y) + 1e-9 if mode == CENTRE_SQUARE else 1e-9
    assert abs(net.cx - centre_x) <= tolerance and abs(net.cy - centre_y) <= tolerance


def test_photo_and_network_coordinates_are_inverse():
    f = framing_for(3000, 4000, SIZE, FULL_PHOTO)
    u, v = np.array([0.0, 1234.5, 2999.0]), np.array([0.0, 17.25, 3999.0])
    x, y = f.photo_to_network(u, v)
    back = f.network_to_photo(x, y)
    np.testing.assert_allclose(back[0], u, atol=1e-9)
    np.testing.assert_allclose(back[1], v, atol=1e-9)
    # Photo pixel centre (0, 0) sits half a network pixel's worth of photo inside the content corner.
    assert x[0] == pytest.approx(f.left + 0.5 * f.scale_x - 0.5)
    # A click on the colormap without its padding: content pixel (0, 0) is network pixel (left, top).
    assert f.content_to_photo(0.0, 0.0) == pytest.approx(f.network_to_photo(f.left, f.top))
    assert f.content_to_photo(x[1] - f.left, y[1] - f.top) == pytest.approx((u[1], v[1]))


def test_unknown_mode_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="Full photo|full"):
        framing_for(10, 10, 8, "wide")
    with pytest.raises(ValueError, match="positive"):
        framing_for(0, 10, 8)
    with pytest.raises(ValueError, match="positive"):
        download_grid(10, 10, 0)


def test_download_grid_caps_the_long_side_and_scales_k_by_hand():
    assert download_grid(741, 500) == DownloadGrid(741, 500, 741, 500, 2048)
    grid = download_grid(4032, 3024)
    assert (grid.width, grid.height, grid.is_capped) == (2048, 1536, True)
    assert (download_grid(3000, 4000).width, download_grid(3000, 4000).height) == (1536, 2048)
    assert (download_grid(5000, 100).width, download_grid(5000, 100).height) == (2048, 41)  # 40.96 -> 41
    k = grid.intrinsics(Intrinsics(3100.0, 3100.0, 2015.5, 1511.5))
    s = 2048 / 4032
    assert k.fx == pytest.approx(3100 * s) and k.cy == pytest.approx((1511.5 + 0.5) * s - 0.5)
    assert k.cx == pytest.approx((2048 - 1) / 2)  # the photo's centre is the grid's centre
    assert download_grid(741, 500).intrinsics(Intrinsics(1, 2, 3, 4)) == Intrinsics(1, 2, 3, 4)


def _reference_upsample(values: np.ndarray, f: Framing, grid: DownloadGrid) -> np.ndarray:
    """scipy's linear map_coordinates on the content box, edges held ("nearest"), same pixel centres."""
    content = values[f.content].astype(np.float64)
    i, j = np.meshgrid(np.arange(grid.width), np.arange(grid.height))
    u = (i + 0.5) * f.photo_width / grid.width - 0.5
    v = (j + 0.5) * f.photo_height / grid.height - 0.5
    x = (u - f.x0 + 0.5) * f.content_width / f.width - 0.5
    y = (v - f.y0 + 0.5) * f.content_height / f.height - 0.5
    out = ndimage.map_coordinates(content, [y, x], order=1, mode="nearest")
    outside = (u < f.x0 - 0.5) | (u > f.x0 + f.width - 0.5) | (v < f.y0 - 0.5) | (v > f.y0 + f.height - 0.5)
    return np.where(outside, np.nan, out)


@pytest.mark.parametrize("mode", [CENTRE_SQUARE, FULL_PHOTO])
@pytest.mark.parametrize("width, height, cap", [(741, 500, 2048), (300, 451, 2048), (4032, 3024, 1000),
                                                (1920, 1080, 2048), (500, 500, 2048)])
def test_upsampling_matches_scipy_and_never_reads_the_padding(mode, width, height, cap):
    f = framing_for(width, height, SIZE, mode)
    grid = download_grid(width, height, cap)
    values = np.full((SIZE, SIZE), 1e6, np.float32)  # padding: a value that would show anywhere it leaked
    values[f.content] = np.random.default_rng(3).uniform(1.0, 5.0, (f.content_height, f.content_width))
    out = upsample_to_grid(values, f, grid)
    assert out.shape == (grid.height, grid.width) and out.dtype == np.float32
    expected = _reference_upsample(values, f, grid)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_allclose(out[~np.isnan(out)], expected[~np.isnan(expected)], rtol=1e-5)
    assert np.nanmax(out) <= 5.0
    if mode == FULL_PHOTO:
        assert not np.isnan(out).any()  # every photo pixel gets depth
    else:
        side = min(width, height)
        outside = 1 - side / max(width, height)
        assert np.isnan(out).mean() == pytest.approx(outside, abs=2 / min(grid.width, grid.height))


# ----------------------------------------------------------------------------- a tilted plane

NORMAL = np.array([0.15, -0.25, 1.0])  # camera-frame plane n . X = D: tilted right side away, top side away
D = 2.5


def _resize_like_the_network(channel: np.ndarray, f: Framing) -> np.ndarray:
    """frame_photo's Pillow filter and boxes on float32 data; padding NaN."""
    box = (f.x0, f.y0, f.x0 + f.width, f.y0 + f.height)
    image = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32), "F")
    content = np.asarray(image.resize((f.content_width, f.content_height), Image.Resampling.BILINEAR, box=box,
                                      reducing_gap=None))
    out = np.full((f.size, f.size), np.nan, np.float32)
    out[f.content] = content
    return out


def _plane_inverse_depth(intr: Intrinsics, width: int, height: int) -> np.ndarray:
    """1 / Z of the plane at every photo pixel: n . (Z r) = D with r = ((u - cx) / fx, (v - cy) / fy, 1),
    so 1 / Z = (n . r) / D, linear in u and v (a bilinear resize reproduces it exactly)."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    return (NORMAL[0] * (u - intr.cx) / intr.fx + NORMAL[1] * (v - intr.cy) / intr.fy + NORMAL[2]) / D


def _estimate_of_a_perfect_network(photo: Intrinsics, width: int, height: int, mode: str) -> Estimate:
    """What a network that is exactly right would leave behind: canonical depth = Z * 1000 / fx'
    on the network grid (the float image pipeline, no use of the intrinsics mapping)."""
    f = framing_for(width, height, SIZE, mode)
    inverse = _resize_like_the_network(_plane_inverse_depth(photo, width, height), f)
    fx_net = photo.fx * f.content_width / f.width  # the definition of canonical depth, independent of cx, cy
    canonical = (1.0 / inverse * (1000.0 / fx_net)).astype(np.float32)
    grid = download_grid(width, height, cap=600)
    canonical_grid = upsample_to_grid(np.nan_to_num(canonical), f, grid)
    model = ModelInfo(path="plane", sha256="0", input_size=SIZE, mean=(0, 0, 0), std=(1, 1, 1),
                      canonical_focal_px=1000.0, precision="fp32", source="a plane worked by hand",
                      converter="none", published=False, metadata=None)
    return Estimate(canonical, canonical_grid, np.zeros((SIZE, SIZE, 3), np.uint8), f, grid, 1000.0,
                    EngineInfo("none", "none", model), {})


def _plane_residual(points: np.ndarray) -> np.ndarray:
    """(n . X - D) / D for every finite point: 0 on the plane."""
    points = points.reshape(-1, 3)
    points = points[np.isfinite(points).all(axis=1)]
    return (points.astype(np.float64) @ NORMAL - D) / D


@pytest.mark.parametrize("mode", [FULL_PHOTO, CENTRE_SQUARE])
@pytest.mark.parametrize("width, height", [(600, 800), (800, 600), (1280, 720), (500, 500), (741, 500)],
                         ids=["portrait", "landscape", "16:9", "1:1", "motorcycle"])
def test_a_plane_lands_on_the_same_plane_through_every_framing(mode, width, height):
    photo = Intrinsics(0.9 * max(width, height), 0.9 * max(width, height), width * 0.47, height * 0.53)
    est = _estimate_of_a_perfect_network(photo, width, height, mode)
    result = rerender(est, photo, PipelineOptions(field_of_view=mode))
    assert result.rerendered and result.framing.mode == mode

    # Network grid: the product's metric depth and network K. Away from the content border,
    # where Pillow renormalizes its truncated kernel, every point is on the plane to 1e-4 of
    # D (single pixels wander by Pillow's sampled filter, see backend.preprocess) and on
    # average to float precision.
    inner = np.zeros((SIZE, SIZE), bool)
    rows, cols = result.framing.content
    inner[rows.start + 3:rows.stop - 3, cols.start + 3:cols.stop - 3] = True
    residual = _plane_residual(backproject(result.depth, result.network_intrinsics)[inner])
    assert np.abs(residual).max() < 1e-4 and abs(residual.mean()) < 2e-7
    assert np.isnan(result.depth[~result.valid]).all()

    # A half-pixel slip in the principal point would be seen: the shortcut cx' = (cx - x0) * s + left
    # moves every point off the plane, on average by ~100x more than the right mapping.
    f, k = result.framing, result.network_intrinsics
    shortcut = Intrinsics(k.fx, k.fy, (photo.cx - f.x0) * f.scale_x + f.left, k.cy)
    assert abs(_plane_residual(backproject(result.depth, shortcut)[inner]).mean()) > 1e-5

    # Download grid (capped at 600 px here, so its K differs from the photo's) with its own K.
    grid_residual = _plane_residual(backproject(result.grid_depth, result.grid_intrinsics)[2:-2, 2:-2])
    # Bilinear interpolation of depth (not of 1 / depth) bends a tilted plane, here by < 1e-4.
    assert np.abs(grid_residual).max() < 1.5e-4 and abs(np.median(grid_residual)) < 1e-6
    if mode == FULL_PHOTO:
        assert np.isfinite(result.grid_depth).all()


def test_grid_and_network_points_of_one_pixel_agree():
    """The same scene point from the download grid (its K) and from the network grid (its K)."""
    width, height = 1280, 720
    photo = centered(1100.0, width, height)
    est = _estimate_of_a_perfect_network(photo, width, height, FULL_PHOTO)
    result = rerender(est, photo, PipelineOptions())
    f, grid = result.framing, result.grid
    for x, y in [(100, 150), (224, 224), (400, 290)]:
        u, v = f.network_to_photo(x, y)  # the photo point under network pixel (x, y) ...
        i, j = grid.from_photo(u, v)  # ... and where it falls on the download grid
        net_point = backproject(result.depth, result.network_intrinsics)[y, x]
        grid_points = backproject(result.grid_depth, result.grid_intrinsics)
        stacked = np.stack([ndimage.map_coordinates(grid_points[..., c], [[j], [i]], order=1)[0] for c in range(3)])
        np.testing.assert_allclose(stacked, net_point, rtol=5e-4)
