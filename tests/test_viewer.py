"""The 3D viewer's opening camera distance keeps every point inside Babylon's view frustum."""
from __future__ import annotations

import math

import numpy as np
import pytest

from backend.viewer import BABYLON_VERTICAL_FOV_RAD, framing_radius, view_directions


def _in_view(xyz: np.ndarray, radius: float, alpha: float, beta: float, aspect: float) -> np.ndarray:
    """Project with Babylon's camera model, written out independently: position from the
    ArcRotateCamera formula, then a pinhole with the vertical fov and the canvas aspect."""
    lo, hi = xyz.min(axis=0), xyz.max(axis=0)
    target = (lo + hi) / 2
    a, b = math.radians(alpha), math.radians(beta)
    position = target + radius * np.array([math.cos(a) * math.sin(b), math.cos(b), math.sin(a) * math.sin(b)])
    forward = (target - position) / np.linalg.norm(target - position)
    right = np.cross(forward, [0, 1, 0]); right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    rel = xyz - position
    z = rel @ forward
    tan_v = math.tan(BABYLON_VERTICAL_FOV_RAD / 2)
    return (z > 0) & (np.abs(rel @ right) <= tan_v * aspect * z + 1e-9) & (np.abs(rel @ up) <= tan_v * z + 1e-9)


def test_a_square_seen_head_on_needs_half_width_over_tan_half_fov():
    # a 2 m x 2 m square at z = 5, viewed straight along +z: d = 1 / tan(0.4) from its centre (by hand)
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, 21), np.linspace(-1, 1, 21)), -1).reshape(-1, 2)
    square = np.column_stack([grid, np.full(len(grid), 5.0)])
    assert framing_radius(square, -90.0, 90.0, margin=1.0) == pytest.approx(1 / math.tan(0.4), rel=1e-6)
    forward, _, _ = view_directions(-90.0, 90.0)
    assert forward == pytest.approx([0, 0, 1], abs=1e-12)


@pytest.mark.parametrize("width, height", [(4032, 3024), (3024, 4032), (1920, 1080), (1000, 1000)])
def test_every_point_of_a_photo_cloud_is_in_view_and_the_fit_is_tight(width, height):
    # the view cloud of a photo with a 70 degree horizontal field of view: a slanted floor and a wall
    rng = np.random.default_rng(0)
    f = width / 2 / math.tan(math.radians(35))
    u, v = rng.uniform(0, width, 20_000), rng.uniform(0, height, 20_000)
    z = np.where(v > height * 0.6, 2 + 8 * (height - v) / height, 6.0) * rng.uniform(0.95, 1.05, len(u))
    camera = np.column_stack([(u - width / 2) / f * z, (v - height / 2) / f * z, z])
    view = camera * np.array([-1, -1, 1])  # the viewer copy (backend.outputs.write_cloud)
    for aspect in (1.0, 1.6):
        radius = framing_radius(view, min_aspect=1.0, margin=1.0)
        assert _in_view(view, radius * 1.0001, -100.0, 80.0, aspect).all()
    assert not _in_view(view, radius * 0.97, -100.0, 80.0, 1.0).all()  # no needless distance
