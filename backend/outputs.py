"""Result files for one request, in a private temp folder that cleans up after itself.

Each request gets its own folder so concurrent users never overwrite each other's
downloads; only the newest `keep` folders survive, and none older than `max_age_s`,
which bounds disk use of a long-running demo and how long results stay readable.
"""
from __future__ import annotations

import json
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
    folder: Path  # where this result wrote files (a re-render may also hand out unchanged older ones)
    depth_npy: Path  # float32 [H, W] metric z-depth in meters on the download grid, NaN = no depth
    depth_png: Path  # uint16 [H, W] millimetres, 0 = no depth (none, or beyond 65.535 m)
    intrinsics_json: Path  # the K of the depth files' pixel grid, and what that grid is
    ply: Path  # binary PLY, float32 xyz (m, OpenCV camera axes) + uchar rgb
    view_ply: Path  # the same cloud turned 180° about the optical axis, for y-up 3D viewers
    beyond_png_range: int  # pixels with depth but written as 0 in the PNG (beyond 65.535 m)


def depth_to_mm16(depth_m: np.ndarray) -> np.ndarray:
    """Meters -> uint16 millimetres. 0 ("no depth", the usual convention of 16-bit depth PNGs)
    where the depth is non-finite, non-positive, or beyond MAX_PNG_MM mm: a far depth that
    saturated to 65535 would read as a real 65.535 m."""
    d = np.asarray(depth_m, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        mm = np.rint(np.where(np.isfinite(d) & (d > 0), d * 1000.0, 0.0))
    return np.where(mm <= MAX_PNG_MM, mm, 0.0).astype(np.uint16)


def count_beyond_png_range(depth_m: np.ndarray) -> int:
    """How many finite depths depth_to_mm16 writes as 0 because they exceed 65.535 m."""
    d = np.asarray(depth_m, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return int(np.count_nonzero(np.rint(d * 1000.0) > MAX_PNG_MM))  # NaN compares False


def write_depth(folder: Path, depth_m: np.ndarray, intrinsics_doc: dict) -> tuple[Path, Path, Path, int]:
    """depth_m.npy (float32 meters), depth_mm.png (16-bit millimetres) and intrinsics.json
    (`intrinsics_doc`, with the files' conventions added) in `folder`.

    Returns the three paths and the count of depths beyond the PNG's range (written as 0).
    """
    npy, png, meta = folder / "depth_m.npy", folder / "depth_mm.png", folder / "intrinsics.json"
    np.save(npy, np.ascontiguousarray(depth_m, dtype=np.float32))
    # zlib level 1: ~2x faster than the default for a few % more bytes on smooth depth maps
    Image.fromarray(depth_to_mm16(depth_m)).save(png, compress_level=1)
    beyond = count_beyond_png_range(depth_m)
    height, width = np.shape(depth_m)
    doc = {**intrinsics_doc, "width": width, "height": height, "beyond_png_range_pixels": beyond,
           "files": {npy.name: "float32 metric z-depth in meters, NaN = no depth",
                     png.name: f"uint16 z-depth in millimetres, 0 = no depth or beyond {MAX_PNG_MM / 1000:g} m"}}
    meta.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return npy, png, meta, beyond


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

    def refresh(self, folder: Path) -> bool:
        """Mark `folder` as just used (a re-render hands out its files again): it becomes the
        newest, so neither the count nor the age limit removes it soon. False when it is gone."""
        with self._lock:
            for i, (known, _) in enumerate(self._folders):
                if known == folder:
                    del self._folders[i]
                    self._folders.append((folder, time.monotonic()))
                    return folder.is_dir()
        return False

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
