"""Real geometry check on Middlebury 2014 "Motorcycle" (ground-truth disparity, calibrated camera).

The product never back-projects at the photo's resolution from the network directly: it frames
the photo (full photo letterbox or centre square) at 448 and maps the intrinsics with the
framing. If that mapping is right, a 448 x 448 depth map that was resampled exactly like the
network input back-projects onto the same 3D surface as the full-resolution ground truth.
A half-pixel slip in the principal point shows up as a systematic offset of ~0.05 network
pixels, which these checks can see. The depth downloads (upsampled back to the photo's grid)
must land on that surface too.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data as skimage_data
from PIL import Image

from backend.framing import CENTRE_SQUARE, FULL_PHOTO, Framing, download_grid, framing_for, upsample_to_grid
from backend.geometry import CloudFilter, backproject, metric_depth, point_cloud
from backend.intrinsics import Intrinsics, load_sidecar
from backend.preprocess import frame_photo

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FOCAL, CX, CY = 994.978, 311.193, 254.877
DOFFS, BASELINE_M = 31.086, 0.193001
SIZE = 448


@pytest.fixture(scope="module")
def scene():
    left, _, disparity = skimage_data.stereo_motorcycle()
    valid = np.isfinite(disparity)
    depth = np.where(valid, BASELINE_M * FOCAL / (np.where(valid, disparity, 0) + DOFFS), 0.0).astype(np.float32)
    return left, disparity, depth, valid


def resize_like_the_network(channel: np.ndarray, framing: Framing) -> np.ndarray:
    """The same Pillow filter and boxes as preprocess.frame_photo, on float32 data; padding NaN."""
    box = (framing.x0, framing.y0, framing.x0 + framing.width, framing.y0 + framing.height)
    image = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32), "F")
    content = np.asarray(image.resize((framing.content_width, framing.content_height), Image.Resampling.BILINEAR,
                                      box=box, reducing_gap=None))
    out = np.full((framing.size, framing.size), np.nan, np.float32)
    out[framing.content] = content
    return out


def test_example_image_and_sidecar_are_this_scene(scene):
    left = scene[0]
    np.testing.assert_array_equal(np.asarray(Image.open(EXAMPLES / "motorcycle.png").convert("RGB")), left)
    choice = load_sidecar(EXAMPLES / "motorcycle.png")
    assert choice.intrinsics == Intrinsics(FOCAL, FOCAL, CX, CY)
    doc = json.loads((EXAMPLES / "motorcycle.json").read_text())
    assert (doc["baseline_mm"], doc["doffs_px"]) == (193.001, DOFFS)


def test_full_resolution_back_projection_is_stereo_triangulation(scene):
    _, disparity, depth, valid = scene
    points = backproject(depth, Intrinsics(FOCAL, FOCAL, CX, CY))
    v, u = np.nonzero(valid)
    denominator = disparity[valid] + DOFFS
    # Middlebury's own formulas: X = b (u - cx) / (d + doffs), Y = b (v - cy) / (d + doffs), Z = b f / (d + doffs).
    np.testing.assert_allclose(points[valid][:, 0], BASELINE_M * (u - CX) / denominator, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(points[valid][:, 1], BASELINE_M * (v - CY) / denominator, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(points[valid][:, 2], BASELINE_M * FOCAL / denominator, rtol=1e-5)
    assert 1.5 < np.median(depth[valid]) < 4.0  # a motorcycle a few meters from the rig


@pytest.mark.parametrize("mode", [CENTRE_SQUARE, FULL_PHOTO])
def test_float_resize_follows_the_network_input_grid(scene, mode):
    left = scene[0]
    framing = framing_for(left.shape[1], left.shape[0], SIZE, mode)
    network_rgb = frame_photo(left, framing)[framing.content].astype(np.float64)
    float_rgb = np.stack([resize_like_the_network(left[..., c], framing)[framing.content] for c in range(3)], axis=-1)
    # Pillow's 8-bit path rounds after each of its two passes (horizontal, vertical): up to 1 level.
    # A grid offset of even 0.1 px would move textured pixels by several levels.
    difference = network_rgb - float_rgb
    assert np.abs(difference).max() <= 1.0 + 1e-3
    assert abs(difference.mean()) < 0.05


@pytest.mark.parametrize("mode, box", [(CENTRE_SQUARE, (120, 0, 500, 500, 0, 0, SIZE, SIZE)),
                                       (FULL_PHOTO, (0, 0, 741, 500, 0, 73, SIZE, 302))])
def test_network_resolution_points_land_on_the_full_resolution_surface(scene, mode, box):
    _, _, depth, valid = scene
    height, width = depth.shape
    full = Intrinsics(FOCAL, FOCAL, CX, CY)
    framing = framing_for(width, height, SIZE, mode)
    assert (framing.x0, framing.y0, framing.width, framing.height,
            framing.left, framing.top, framing.content_width, framing.content_height) == box
    net = framing.network_intrinsics(full)

    # Ground truth at 448: the full-resolution 3D points, resampled by the network's filter,
    # at network pixels whose filter footprint holds no disparity hole (and no padding).
    points_full = backproject(depth, full)
    truth = np.stack([resize_like_the_network(points_full[..., i], framing) for i in range(3)], axis=-1)
    usable = resize_like_the_network((~valid).astype(np.float32), framing) == 0
    assert usable.sum() > 0.75 * framing.content_width * framing.content_height  # GT has holes, a left band too
    depth_448 = truth[..., 2]

    # What the product computes: canonical depth -> metric depth -> points with mapped intrinsics.
    canonical = depth_448 * np.float32(1000.0 / net.fx)  # what a perfect network would output
    metric = metric_depth(canonical, net.fx)
    np.testing.assert_allclose(metric[usable], depth_448[usable], rtol=2e-6)
    points_448 = backproject(metric, net)

    z = depth_448[usable]
    error = np.linalg.norm(points_448[usable] - truth[usable], axis=-1) / z
    assert np.median(error) < 1e-3 and np.percentile(error, 99) < 1e-2  # far below 1 % of depth

    # No systematic offset: in network pixels, the mean lateral error is ~0 ...
    offset_px = [np.mean((points_448[..., i] - truth[..., i])[usable] / z) * f for i, f in ((0, net.fx), (1, net.fy))]
    assert max(abs(o) for o in offset_px) < 0.005
    # ... whereas the common shortcut cx' = (cx - x0) * size / side + left would be 0.05+ px off.
    shortcut = Intrinsics(net.fx, net.fy, (CX - framing.x0) * framing.scale_x + framing.left,
                          (CY - framing.y0) * framing.scale_y + framing.top)
    shifted = backproject(metric, shortcut)
    offset_shortcut = np.mean((shifted[..., 0] - truth[..., 0])[usable] / z) * net.fx
    assert abs(offset_shortcut) > 0.03


def test_full_photo_download_grid_lands_on_the_full_resolution_back_projection(scene):
    """The perfect network's 448 output, upsampled to the photo's grid (the .npy download) and
    back-projected with the download K, gives the ground truth's own 3D points."""
    _, _, depth, valid = scene
    height, width = depth.shape
    full = Intrinsics(FOCAL, FOCAL, CX, CY)
    framing = framing_for(width, height, SIZE, FULL_PHOTO)
    grid = download_grid(width, height)
    assert (grid.width, grid.height) == (width, height) and grid.intrinsics(full) == full
    net = framing.network_intrinsics(full)
    depth_448 = resize_like_the_network(np.where(valid, depth, 0.0), framing)
    holes = resize_like_the_network((~valid).astype(np.float32), framing) > 0
    metric = metric_depth(depth_448 * np.float32(1000.0 / net.fx), net.fx)
    upsampled = upsample_to_grid(np.where(holes, np.nan, metric), framing, grid)
    assert np.isnan(upsampled).sum() > 0  # holes stay holes: no interpolation across them
    points = backproject(upsampled, grid.intrinsics(full))
    truth = backproject(depth, full)
    usable = valid & np.isfinite(upsampled)
    assert usable.mean() > 0.7
    error = np.linalg.norm(points[usable] - truth[usable], axis=-1) / depth[usable]
    # Down to 448 and back up blurs depth edges; on smooth surfaces the points coincide
    # (measured: median 7.7e-5; with cx half a pixel off it would be 5.1e-4).
    assert np.median(error) < 2e-4
    # No systematic lateral offset, in photo pixels (measured 0.003; a half-pixel slip: 0.5).
    lateral = np.mean((points[..., 0] - truth[..., 0])[usable] / depth[usable]) * FOCAL
    assert abs(lateral) < 0.02


def test_point_cloud_of_the_scene_is_plausible(scene):
    left, _, depth, valid = scene
    framing = framing_for(left.shape[1], left.shape[0], SIZE, FULL_PHOTO)
    net = framing.network_intrinsics(Intrinsics(FOCAL, FOCAL, CX, CY))
    depth_448 = resize_like_the_network(np.where(valid, depth, np.nan), framing)
    network_rgb = frame_photo(left, framing, (124, 116, 104))
    xyz, rgb = point_cloud(depth_448, network_rgb, net, CloudFilter())
    content = framing.content_width * framing.content_height
    assert 0.5 * content < len(xyz) < content
    assert np.isfinite(xyz).all() and xyz[:, 2].min() >= 0.1
    # Every point projects back onto the network pixel it came from, inside the content box,
    # and carries that pixel's colour.
    u = xyz[:, 0] / xyz[:, 2] * net.fx + net.cx
    v = xyz[:, 1] / xyz[:, 2] * net.fy + net.cy
    np.testing.assert_allclose(u, np.rint(u), atol=1e-3)
    np.testing.assert_allclose(v, np.rint(v), atol=1e-3)
    assert framing.valid_mask()[np.rint(v).astype(int), np.rint(u).astype(int)].all()
    np.testing.assert_array_equal(rgb, network_rgb[np.rint(v).astype(int), np.rint(u).astype(int)])
