"""Real geometry check on Middlebury 2014 "Motorcycle" (ground-truth disparity, calibrated camera).

The product never back-projects at the photo's resolution: it resizes a centre crop to 448 and
maps the intrinsics with map_to_network. If that mapping is right, a 448 x 448 depth map that
was resampled exactly like the network input back-projects onto the same 3D surface as the
full-resolution ground truth. A half-pixel slip in the principal point shows up as a
systematic offset of ~0.05 network pixels, which these checks can see.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data as skimage_data
from PIL import Image

from backend.geometry import CloudFilter, backproject, metric_depth, point_cloud
from backend.intrinsics import CropResize, Intrinsics, crop_resize_for, load_sidecar, map_to_network
from backend.preprocess import crop_and_resize

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


def resize_like_the_network(channel: np.ndarray, crop: CropResize) -> np.ndarray:
    """The same Pillow filter and box as preprocess.crop_and_resize, on float32 data."""
    box = (crop.x0, crop.y0, crop.x0 + crop.side, crop.y0 + crop.side)
    image = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32), "F")
    return np.asarray(image.resize((crop.size, crop.size), Image.Resampling.BILINEAR, box=box, reducing_gap=None))


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


def test_float_resize_follows_the_network_input_grid(scene):
    left = scene[0]
    crop = crop_resize_for(left.shape[1], left.shape[0], SIZE)
    network_rgb = crop_and_resize(left, crop).astype(np.float64)
    float_rgb = np.stack([resize_like_the_network(left[..., c], crop) for c in range(3)], axis=-1)
    # Pillow's 8-bit path rounds after each of its two passes (horizontal, vertical): up to 1 level.
    # A grid offset of even 0.1 px would move textured pixels by several levels.
    difference = network_rgb - float_rgb
    assert np.abs(difference).max() <= 1.0 + 1e-3
    assert abs(difference.mean()) < 0.05


def test_network_resolution_points_land_on_the_full_resolution_surface(scene):
    _, _, depth, valid = scene
    height, width = depth.shape
    full = Intrinsics(FOCAL, FOCAL, CX, CY)
    crop = crop_resize_for(width, height, SIZE)
    assert crop == CropResize(x0=120, y0=0, side=500, size=SIZE)
    net = map_to_network(full, crop)

    # Ground truth at 448: the full-resolution 3D points, resampled by the network's filter,
    # at network pixels whose filter footprint holds no disparity hole.
    points_full = backproject(depth, full)
    truth = np.stack([resize_like_the_network(points_full[..., i], crop) for i in range(3)], axis=-1)
    usable = resize_like_the_network((~valid).astype(np.float32), crop) == 0
    assert usable.mean() > 0.8
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
    # ... whereas the common shortcut cx' = (cx - x0) * size / side would be 0.05 px off.
    shortcut = Intrinsics(net.fx, net.fy, (CX - crop.x0) * crop.scale, (CY - crop.y0) * crop.scale)
    shifted = backproject(metric, shortcut)
    offset_shortcut = np.mean((shifted[..., 0] - truth[..., 0])[usable] / z) * net.fx
    assert abs(offset_shortcut) > 0.03


def test_point_cloud_of_the_scene_is_plausible(scene):
    left, _, depth, valid = scene
    crop = crop_resize_for(left.shape[1], left.shape[0], SIZE)
    net = map_to_network(Intrinsics(FOCAL, FOCAL, CX, CY), crop)
    depth_448 = resize_like_the_network(np.where(valid, depth, np.nan), crop)
    network_rgb = crop_and_resize(left, crop)
    xyz, rgb = point_cloud(depth_448, network_rgb, net, CloudFilter())
    assert 0.5 * SIZE * SIZE < len(xyz) < SIZE * SIZE
    assert np.isfinite(xyz).all() and xyz[:, 2].min() >= 0.1
    # Every point projects back onto the network pixel it came from, and carries that pixel's colour.
    u = xyz[:, 0] / xyz[:, 2] * net.fx + net.cx
    v = xyz[:, 1] / xyz[:, 2] * net.fy + net.cy
    np.testing.assert_allclose(u, np.rint(u), atol=1e-3)
    np.testing.assert_allclose(v, np.rint(v), atol=1e-3)
    np.testing.assert_array_equal(rgb, network_rgb[np.rint(v).astype(int), np.rint(u).astype(int)])
