"""Where the browser's 3D viewer puts its camera so the whole point cloud is in view.

Gradio's Model3D is Babylon.js's viewer: it aims an ArcRotateCamera at the centre of the
model's bounding box, and camera_position = (alpha, beta, radius) places the camera at
target + radius * (cos(alpha) sin(beta), cos(beta), sin(alpha) sin(beta)) (Babylon's
ArcRotateCamera convention, y up). Babylon's default field of view is 0.8 rad vertical
(Camera.fov, FOVMODE_VERTICAL_FIXED); the horizontal half-angle follows from the canvas
aspect, tan(h/2) = aspect * tan(v/2). The page is laid out so the canvas is at least as wide
as MIN_ASPECT times its height.
"""
from __future__ import annotations

import math

import numpy as np

VIEW_ANGLES_DEG = (-100.0, 80.0)  # just off the photo's own viewpoint (-90, 90), so the relief shows
BABYLON_VERTICAL_FOV_RAD = 0.8
MIN_ASPECT = 1.0
MARGIN = 1.08  # a little air around the cloud


def view_directions(alpha_deg: float, beta_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(forward, right, up) unit vectors of Babylon's ArcRotateCamera at these angles (y up)."""
    a, b = math.radians(alpha_deg), math.radians(beta_deg)
    offset = np.array([math.cos(a) * math.sin(b), math.cos(b), math.sin(a) * math.sin(b)])
    forward = -offset / np.linalg.norm(offset)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return forward, right, up


def framing_radius(xyz_view: np.ndarray, alpha_deg: float = VIEW_ANGLES_DEG[0],
                   beta_deg: float = VIEW_ANGLES_DEG[1], vertical_fov_rad: float = BABYLON_VERTICAL_FOV_RAD,
                   min_aspect: float = MIN_ASPECT, margin: float = MARGIN) -> float:
    """Smallest camera distance (m) from the bounding-box centre at which every point is in view.

    xyz_view: float [N, 3] points in the viewer's frame (the file the viewer loads). For a
    point q relative to the target, at distance d along the view: depth d + q.f, and it is
    in view when |q.r| <= tan(h/2) (d + q.f) and |q.u| <= tan(v/2) (d + q.f); the radius is
    the largest d any point needs, times `margin`. Returns 1.0 for an empty cloud.
    """
    xyz = np.asarray(xyz_view, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"need points [N, 3], got {xyz.shape}")
    if not len(xyz):
        return 1.0
    lo = np.array([xyz[:, i].min() for i in range(3)])
    hi = np.array([xyz[:, i].max() for i in range(3)])
    q = xyz - (lo + hi) / 2
    forward, right, up = view_directions(alpha_deg, beta_deg)
    tan_v = math.tan(vertical_fov_rad / 2)
    tan_h = tan_v * min_aspect
    along = q @ forward
    need = np.maximum(np.abs(q @ right) / tan_h, np.abs(q @ up) / tan_v) - along
    diagonal = float(np.linalg.norm(hi - lo))
    return float(max(need.max() * margin, 1e-3, 0.01 * diagonal))
