"""Binary PLY point clouds: exact bytes, and what Open3D (an independent reader) reads back."""
from __future__ import annotations

import numpy as np
import pytest

from backend.ply import write_ply
from testing.clouds import read_cloud

EXPECTED_HEADER = (
    b"ply\nformat binary_little_endian 1.0\nelement vertex 3\n"
    b"property float x\nproperty float y\nproperty float z\n"
    b"property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
)


def sample_cloud(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)).astype(np.float32), rng.integers(0, 256, (n, 3), dtype=np.uint8)


def test_header_and_body_bytes(tmp_path):
    xyz = np.array([[1.0, -2.0, 3.5], [0.0, 0.0, 0.0], [1e-3, 2e3, -7.25]], np.float32)
    rgb = np.array([[255, 0, 1], [2, 3, 4], [128, 64, 32]], np.uint8)
    path = tmp_path / "c.ply"
    write_ply(path, xyz, rgb)
    data = path.read_bytes()
    assert data.startswith(EXPECTED_HEADER)
    body = data[len(EXPECTED_HEADER):]
    assert len(body) == 3 * 15
    first = body[:15]
    np.testing.assert_array_equal(np.frombuffer(first[:12], "<f4"), xyz[0])
    assert first[12:] == bytes([255, 0, 1])


def test_round_trip(tmp_path):
    xyz, rgb = sample_cloud(5000)
    path = tmp_path / "r.ply"
    write_ply(path, xyz, rgb)
    xyz2, rgb2 = read_cloud(path)
    np.testing.assert_array_equal(xyz2, xyz)
    np.testing.assert_array_equal(rgb2, rgb)
    assert xyz2.dtype == np.float32 and rgb2.dtype == np.uint8


def test_empty_cloud(tmp_path):
    path = tmp_path / "e.ply"
    write_ply(path, np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))
    xyz, rgb = read_cloud(path)
    assert xyz.shape == (0, 3) and rgb.shape == (0, 3)


def test_bad_inputs_are_refused(tmp_path):
    xyz, rgb = sample_cloud(4)
    with pytest.raises(ValueError, match="NaN"):
        write_ply(tmp_path / "n.ply", np.where(np.arange(12).reshape(4, 3) == 5, np.nan, xyz), rgb)
    with pytest.raises(ValueError, match="uint8"):
        write_ply(tmp_path / "u.ply", xyz, rgb.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        write_ply(tmp_path / "s.ply", xyz, rgb[:3])
