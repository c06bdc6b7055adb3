"""Metric scaling, back-projection, point-cloud filters, 3D distance and depth statistics."""
from __future__ import annotations

import math

import numpy as np
import pytest

from backend.geometry import (
    CloudFilter,
    GeometryError,
    backproject,
    depth_stats,
    distance_3d,
    edge_mask,
    metric_depth,
    point_cloud,
)
from backend.framing import CENTRE_SQUARE, framing_for
from backend.intrinsics import Intrinsics

INTR = Intrinsics(fx=400.0, fy=410.0, cx=223.5, cy=200.25)


def test_metric_depth_with_a_crop_uses_the_network_focal():
    # 640 x 480 photo, fx = 500 px: the network sees a 480 px square at 448, so fx448 = 500 x 448 / 480.
    fx448 = framing_for(640, 480, 448, CENTRE_SQUARE).network_intrinsics(Intrinsics(500, 500, 320, 240)).fx
    assert fx448 == pytest.approx(500 * 448 / 480)
    canonical = np.full((448, 448), 10.0, np.float32)
    metric = metric_depth(canonical, fx448)
    assert metric.dtype == np.float32
    np.testing.assert_allclose(metric, 10.0 * fx448 / 1000.0, rtol=1e-6)


def test_metric_depth_clamps_like_upstream_and_keeps_nan():
    canonical = np.array([[-1.0, 100.0, 200.0, np.nan]], np.float32)
    metric = metric_depth(canonical, 2000.0)
    np.testing.assert_array_equal(metric[0, :3], [0.0, 200.0, 300.0])
    assert np.isnan(metric[0, 3])
    with pytest.raises(GeometryError):
        metric_depth(canonical, 0.0)


def test_fronto_parallel_plane_back_projects_to_the_pinhole_model():
    depth = np.full((300, 448), 2.0, np.float32)
    points = backproject(depth, INTR)
    assert points.shape == (300, 448, 3) and points.dtype == np.float32
    np.testing.assert_array_equal(points[..., 2], 2.0)
    u = np.arange(448)
    v = np.arange(300)
    np.testing.assert_allclose(points[0, :, 0], (u - INTR.cx) / INTR.fx * 2.0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(points[:, 0, 1], (v - INTR.cy) / INTR.fy * 2.0, rtol=1e-6, atol=1e-6)
    # OpenCV axes: right of the principal point is +x, below it is +y.
    assert points[100, 300, 0] > 0 and points[250, 100, 1] > 0 and points[10, 10, 1] < 0


def test_a_box_of_known_size_has_exact_extents():
    """A 1.0 m x 0.5 m card at 2 m in front of a wall at 6 m."""
    intr = Intrinsics(fx=500.0, fy=500.0, cx=223.5, cy=223.5)
    depth = np.full((448, 448), 6.0, np.float32)
    # At 2 m, 1 m spans 250 px and 0.5 m spans 125 px (centre to centre: n + 1 pixels).
    u0, v0 = 100, 150
    depth[v0:v0 + 126, u0:u0 + 251] = 2.0
    rgb = np.zeros((448, 448, 3), np.uint8)
    xyz, colors = point_cloud(depth, rgb, intr, CloudFilter(edge_threshold=0.0))
    card = xyz[np.isclose(xyz[:, 2], 2.0)]
    assert len(card) == 126 * 251
    assert card[:, 0].max() - card[:, 0].min() == pytest.approx(1.0, abs=1e-6)
    assert card[:, 1].max() - card[:, 1].min() == pytest.approx(0.5, abs=1e-6)
    assert card[:, 0].min() == pytest.approx((u0 - 223.5) / 500 * 2.0, abs=1e-6)


def test_flying_pixels_at_a_depth_step_are_removed_but_flat_areas_kept():
    depth = np.full((20, 20), 2.0, np.float32)
    depth[:, 10:] = 4.0
    edges = edge_mask(depth, 0.05)
    assert edges[:, 9].all() and edges[:, 10].all()
    assert not edges[:, :9].any() and not edges[:, 11:].any()
    xyz, _ = point_cloud(depth, np.zeros((20, 20, 3), np.uint8), INTR, CloudFilter(edge_threshold=0.05))
    assert len(xyz) == 20 * 18
    assert not edge_mask(depth, 0.0).any()
    # A smooth slope (1 % per pixel) is not an edge at 5 %.
    slope = np.tile(np.float32(2.0) * (1.01 ** np.arange(20, dtype=np.float32)), (20, 1))
    assert not edge_mask(slope, 0.05).any()


def test_a_neighbour_without_depth_is_no_edge():
    """Padding (NaN) next to the photo's content must not cost the content its border points."""
    depth = np.full((6, 8), 2.0, np.float32)
    depth[:2] = np.nan  # two rows of letterbox padding
    edges = edge_mask(depth, 0.05)
    assert not edges.any()
    xyz, _ = point_cloud(depth, np.zeros((6, 8, 3), np.uint8), INTR, CloudFilter())
    assert len(xyz) == 4 * 8  # every content pixel, none of the padding


def test_range_filter_and_invalid_depths():
    depth = np.array([[0.05, 0.5, 5.0], [50.0, np.nan, np.inf]], np.float32)
    rgb = np.arange(18, dtype=np.uint8).reshape(2, 3, 3)
    xyz, colors = point_cloud(depth, rgb, INTR, CloudFilter(min_depth=0.1, max_depth=10.0, edge_threshold=0.0))
    np.testing.assert_array_equal(np.sort(xyz[:, 2]), [0.5, 5.0])
    assert xyz.dtype == np.float32 and colors.dtype == np.uint8
    np.testing.assert_array_equal(colors, rgb[0, 1:3])  # colours follow their points


def test_voxel_downsampling_keeps_one_point_per_voxel_and_the_colours():
    depth = np.full((100, 100), 1.0, np.float32)
    intr = Intrinsics(fx=1000.0, fy=1000.0, cx=49.5, cy=49.5)  # 1 mm spacing over 10 cm
    rgb = np.zeros((100, 100, 3), np.uint8)
    rgb[...] = (10, 200, 30)
    xyz, colors = point_cloud(depth, rgb, intr, CloudFilter(edge_threshold=0.0, voxel_size=0.02))
    assert 25 <= len(xyz) <= 36  # a 10 cm x 10 cm patch in 2 cm voxels: 5-6 per side
    assert xyz.dtype == np.float32 and colors.dtype == np.uint8
    np.testing.assert_allclose(xyz[:, 2], 1.0, atol=1e-6)
    assert (colors == (10, 200, 30)).all()


def test_distance_between_two_clicks_on_a_plane():
    depth = np.full((448, 448), 2.0, np.float32)
    distance = distance_3d(depth, INTR, (100, 50), (300, 50))
    assert distance == pytest.approx(200 / INTR.fx * 2.0, rel=1e-9)
    diagonal = distance_3d(depth, INTR, (0, 0), (400.4, 300.2))  # sub-pixel clicks round to pixels
    assert diagonal == pytest.approx(math.hypot(400 / INTR.fx * 2, 300 / INTR.fy * 2), rel=1e-9)


def test_distance_along_depth():
    depth = np.full((10, 10), 3.0, np.float32)
    depth[5, 5] = 7.0
    intr = Intrinsics(100.0, 100.0, 5.0, 5.0)
    assert distance_3d(depth, intr, (5, 5), (5, 4)) == pytest.approx(math.hypot(4.0, 0.03), rel=1e-9)


def test_distance_errors_are_clear():
    depth = np.full((10, 10), 2.0, np.float32)
    depth[3, 4] = np.nan
    with pytest.raises(GeometryError, match="outside"):
        distance_3d(depth, INTR, (0, 0), (12, 1))
    with pytest.raises(GeometryError, match=r"no valid depth at pixel \(4, 3\)"):
        distance_3d(depth, INTR, (4, 3), (1, 1))


def test_depth_stats():
    depth = np.concatenate([np.arange(1, 101, dtype=np.float32), [np.nan, 0.0, -1.0, np.inf]]).reshape(8, 13)
    stats = depth_stats(depth)
    values = np.arange(1, 101, dtype=np.float64)
    assert stats["min"] == 1.0 and stats["max"] == 100.0
    assert stats["mean"] == pytest.approx(50.5) and stats["median"] == pytest.approx(50.5)
    assert stats["p2"] == pytest.approx(np.percentile(values, 2))
    assert stats["p98"] == pytest.approx(np.percentile(values, 98))
    assert stats["valid_fraction"] == pytest.approx(100 / 104)
    empty = depth_stats(np.full((4, 4), np.nan, np.float32))
    assert empty["valid_fraction"] == 0.0 and math.isnan(empty["median"])
