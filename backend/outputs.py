"""Result files for one request, in a private temp folder that cleans up after itself.

Each request gets its own folder so concurrent users never overwrite each other's
downloads; only the newest `keep` folders survive, and none older than `max_age_s`,
which bounds disk use of a long-running demo and how long results stay readable.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from backend.ply import write_ply

MAX_PNG_MM = np.iinfo(np.uint16).max  # 65.535 m: the far limit of a 16-bit millimetre PNG


@dataclass(frozen=True)
class OutputFiles:
    folder: Path
    depth_npy: Path  # float32 [S, S] metric depth in meters
    depth_png: Path  # uint16 [S, S] millimetres, 0 = no depth, saturates at 65535
    ply: Path  # binary PLY, float32 xyz (m, OpenCV camera axes) + uchar rgb
    view_ply: Path  # the same cloud turned 180° about the optical axis, for y-up 3D viewers


def depth_to_mm16(depth_m: np.ndarray) -> np.ndarray:
    """Meters -> uint16 millimetres; non-finite or non-positive depth becomes 0 (the usual 'no data')."""
    mm = np.where(np.isfinite(depth_m) & (depth_m > 0), depth_m * 1000.0, 0.0)
    return np.clip(np.rint(mm), 0, MAX_PNG_MM).astype(np.uint16)


def write_depth(folder: Path, depth_m: np.ndarray) -> tuple[Path, Path]:
    """depth_m.npy (float32 meters) and depth_mm.png (16-bit millimetres) in `folder`."""
    npy, png = folder / "depth_m.npy", folder / "depth_mm.png"
    np.save(npy, np.ascontiguousarray(depth_m, dtype=np.float32))
    # zlib level 1: ~2x faster than the default for a few % more bytes on smooth depth maps
    Image.fromarray(depth_to_mm16(depth_m)).save(png, compress_level=1)
    return npy, png


def write_cloud(folder: Path, xyz: np.ndarray, rgb: np.ndarray) -> tuple[Path, Path]:
    """point_cloud.ply (OpenCV axes, the download) and view_cloud.ply (for the browser viewer).

    OpenCV's y points down; Gradio's viewer (Babylon.js) has y up, so the download shows
    upside down there. A 180° turn about z (x, y -> -x, -y) is a rotation, not a mirror,
    so the viewer shows the scene as the camera saw it without changing its shape.
    """
    ply, view_ply = folder / "point_cloud.ply", folder / "view_cloud.ply"
    write_ply(ply, xyz, rgb)
    write_ply(view_ply, xyz * np.array([-1.0, -1.0, 1.0], dtype=np.float32), rgb)
    return ply, view_ply


class OutputStore:
    """Owns a private temp root (mode 0700) and hands out one folder per request."""

    def __init__(self, root: Path | None = None, keep: int = 32, max_age_s: float | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="metric3d-", dir=root))
        self._keep = keep
        self._max_age_s = max_age_s
        self._folders: list[tuple[Path, float]] = []  # (folder, monotonic creation time), oldest first
        self._lock = threading.Lock()

    def new_folder(self) -> Path:
        folder = Path(tempfile.mkdtemp(prefix="req-", dir=self.root))
        with self._lock:
            self._folders.append((folder, time.monotonic()))
            stale, self._folders = self._folders[:-self._keep], self._folders[-self._keep:]
        for old, _ in stale:
            shutil.rmtree(old, ignore_errors=True)
        self.prune()
        return folder

    def prune(self, now: float | None = None) -> int:
        """Remove folders older than max_age_s (called per request and by a timer); returns how many."""
        if self._max_age_s is None:
            return 0
        limit = (time.monotonic() if now is None else now) - self._max_age_s
        with self._lock:
            expired = [f for f, created in self._folders if created < limit]
            self._folders = [(f, c) for f, c in self._folders if c >= limit]
        for old in expired:
            shutil.rmtree(old, ignore_errors=True)
        return len(expired)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
