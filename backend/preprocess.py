"""Turn an upright RGB photo into the network's square input.

Resize: Pillow BILINEAR on the crop box (after an integer box reduction for big photos, see
REDUCING_GAP). When shrinking, Pillow widens
the triangle filter by the scale factor, so a 12 MP photo is averaged (antialiased) rather
than point-sampled as cv2.INTER_LINEAR would; when enlarging it is plain bilinear.
In both cases output pixel centres sit on input pixel centres:
src = x0 + (dst + 0.5) * side / size - 0.5, which is the mapping
backend.intrinsics.map_to_network assumes. (At non-integer shrink factors the sampled
triangle filter is slightly lopsided, so single output pixels wander by up to ~0.06 px
around that grid; the mean offset is zero - tests/test_middlebury.py measures 0.0004 px.)
The box keeps the filter whole at the crop edges: border pixels also see the pixels just
outside the crop, as they would in a larger resize.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from backend.intrinsics import CropResize

# Pillow first box-averages by an integer factor while the image stays >= 2x the target, then
# resamples bilinearly: 12 MP -> 448 in ~18 ms instead of ~41 ms, pixel values within a few
# levels, geometry unchanged (tests/test_middlebury.py holds it to sub-pixel accuracy).
REDUCING_GAP = 2.0


def crop_and_resize(rgb: np.ndarray, crop: CropResize) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3]: the crop box of `crop`, resized."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    if crop.x0 < 0 or crop.y0 < 0 or crop.x0 + crop.side > width or crop.y0 + crop.side > height:
        raise ValueError(f"crop {crop} does not fit a {width} x {height} image")
    if crop.side == crop.size:
        return np.ascontiguousarray(rgb[crop.y0:crop.y0 + crop.side, crop.x0:crop.x0 + crop.side])
    box = (crop.x0, crop.y0, crop.x0 + crop.side, crop.y0 + crop.side)
    resized = Image.fromarray(rgb, "RGB").resize(
        (crop.size, crop.size), Image.Resampling.BILINEAR, box=box, reducing_gap=REDUCING_GAP)
    return np.asarray(resized, dtype=np.uint8)


def normalize(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 [S, S, 3] -> float32 [1, 3, S, S] = (rgb - mean) / std, per channel.

    A uint8 channel has only 256 values, so each channel is one table lookup from a
    256-entry float32 table computed with the same float32 arithmetic as the direct
    formula: identical results (bit for bit) in a single pass, ~2.5x faster.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 [S, S, 3], got {rgb.dtype} {rgb.shape}")
    table = _lookup_table(tuple(float(m) for m in mean), tuple(float(s) for s in std))
    out = np.empty((1, 3, rgb.shape[0], rgb.shape[1]), dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], rgb[:, :, channel], out=out[0, channel])
    return out


_TABLES: dict[tuple[tuple[float, ...], tuple[float, ...]], np.ndarray] = {}


def _lookup_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    if len(mean) != 3 or len(std) != 3 or not all(v > 0 for v in std):
        raise ValueError(f"need 3 means and 3 positive stds, got mean={mean} std={std}")
    key = (mean, std)
    table = _TABLES.get(key)
    if table is None:
        m = np.asarray(mean, dtype=np.float32)[:, None]
        s = np.asarray(std, dtype=np.float32)[:, None]
        table = (np.arange(256, dtype=np.float32)[None, :] - m) / s
        table.setflags(write=False)
        _TABLES[key] = table
    return table
