"""Reading the app's point clouds back with Open3D: an independent PLY parser for the tests."""
from __future__ import annotations

import os

import numpy as np


def read_cloud(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [N, 3] xyz, uint8 [N, 3] rgb) of a PLY point cloud, as Open3D reads it.

    Open3D keeps points as float64 (exact for our float32 values) and colours as float64
    in [0, 1] (exact multiples of 1/255, so rounding recovers the bytes). Raises ValueError
    when Open3D cannot parse the file.
    """
    import open3d as o3d

    with open(path, "rb") as f:
        if f.read(4) != b"ply\n":
            raise ValueError(f"{path} is not a PLY file")
    cloud = o3d.io.read_point_cloud(os.fspath(path), format="ply")
    xyz = np.asarray(cloud.points).astype(np.float32)
    rgb = np.rint(np.asarray(cloud.colors) * 255.0).astype(np.uint8) if cloud.has_colors() else \
        np.zeros((len(xyz), 3), np.uint8)
    return xyz.reshape(-1, 3), rgb.reshape(-1, 3)
