"""Synthetic photos for load tests and the soak benchmark."""
from __future__ import annotations

import numpy as np
from PIL import Image


def distinct_photo(seed: int, width: int = 320, height: int = 240) -> np.ndarray:
    """A different picture per seed, so no cache can serve one request's answer to another:
    coarse random colour blocks (a resize keeps them apart) plus a gradient turned by the seed."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    rgb = np.asarray(Image.fromarray(blocks).resize((width, height), Image.Resampling.BILINEAR), np.float32)
    angle = seed * 0.7
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height) * 60.0
    return np.clip(rgb + ramp[..., None], 0, 255).astype(np.uint8)
