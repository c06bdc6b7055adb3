"""Depth maps as pictures, with a colorbar in meters.

Conventions: colour is linear in meters (so colorbar ticks are evenly spaced), near is the
warm / bright end of each map (red for turbo, yellow for viridis, white for gray) because the
eye goes to warm colours first and the near scene is usually the subject, and pixels with
no valid depth (non-finite or <= 0) are black. The default range is the 2nd-98th
percentile of the valid depths, so a few outliers (sky, flying pixels) do not wash out the
rest; values beyond the range take the end colours.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORMAPS: tuple[str, ...] = ("turbo", "viridis", "magma", "inferno", "plasma", "gray")


@lru_cache(maxsize=None)
def lut(cmap: str) -> np.ndarray:
    """uint8 [256, 3] table, index 0 = far end, 255 = near end."""
    if cmap not in COLORMAPS:
        raise ValueError(f"unknown colormap {cmap!r}; choose one of {', '.join(COLORMAPS)}")
    from matplotlib import colormaps  # imported lazily: only its tables are needed, once

    table = colormaps["gray" if cmap == "gray" else cmap](np.linspace(0.0, 1.0, 256))[:, :3]
    out = np.rint(table * 255.0).astype(np.uint8)
    out.setflags(write=False)
    return out


def robust_range(depth: np.ndarray) -> tuple[float, float]:
    """(p2, p98) of the valid depths; a non-empty interval even for flat or empty maps."""
    d = np.asarray(depth, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        values = d[np.isfinite(d) & (d > 0)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [2, 98]))
    if hi - lo < 1e-6 * max(abs(hi), 1.0):
        pad = max(abs(lo) * 0.01, 1e-3)
        lo, hi = max(lo - pad, 0.0), hi + pad
    return lo, hi


def colorize(depth: np.ndarray, cmap: str = "turbo", vmin: float | None = None,
             vmax: float | None = None) -> np.ndarray:
    """float [H, W] meters -> uint8 [H, W, 3]; near = warm end, invalid = black."""
    d = np.asarray(depth, dtype=np.float32)
    if d.ndim != 2:
        raise ValueError(f"depth must be 2-D, got shape {d.shape}")
    table = lut(cmap)
    if vmin is None or vmax is None:
        auto_lo, auto_hi = robust_range(d)
        vmin = auto_lo if vmin is None else vmin
        vmax = auto_hi if vmax is None else vmax
    if not (math.isfinite(vmin) and math.isfinite(vmax)) or vmax <= vmin:
        raise ValueError(f"colour range must be finite with vmin < vmax, got {vmin}..{vmax}")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(d) & (d > 0)
        t = (np.float32(vmax) - d) * np.float32(255.0 / (vmax - vmin))
        index = np.clip(np.where(valid, t, 0.0), 0.0, 255.0)
    out = table[np.rint(index).astype(np.uint8)]
    out[~valid] = 0
    return out


def nice_ticks(vmin: float, vmax: float, target: int = 6) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 x 10^k steps, at most `target` bins) inside [vmin, vmax].

    matplotlib's MaxNLocator picks the step; only the ticks inside the range are kept.
    """
    if not vmax - vmin > 0:
        return [vmin]
    from matplotlib.ticker import MaxNLocator  # lazily, like the colormap tables

    ticks = MaxNLocator(nbins=max(target, 1), steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax)
    slack = 1e-9 * (ticks[1] - ticks[0])
    return [round(float(t), 10) for t in ticks if vmin - slack <= t <= vmax + slack]


def _label(value: float, step: float, units: str) -> str:
    """As few decimals as the tick step needs (2.5 -> 1, 0.25 -> 2, 5 -> 0)."""
    decimals = next((d for d in range(7) if math.isclose(round(step, d), step, rel_tol=1e-6)), 6)
    return f"{value:.{decimals}f} {units}".strip()


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def with_colorbar(colored: np.ndarray, vmin: float, vmax: float, cmap: str = "turbo",
                  units: str = "m") -> np.ndarray:
    """The colored depth with a vertical colorbar and tick labels in `units` on its right.

    Far (vmax) is at the top, near (vmin) at the bottom, matching colorize().
    Drawn with Pillow (no matplotlib figure): a few milliseconds.
    """
    if colored.ndim != 3 or colored.shape[2] != 3 or colored.dtype != np.uint8:
        raise ValueError(f"expected uint8 [H, W, 3], got {colored.dtype} {colored.shape}")
    if not (math.isfinite(vmin) and math.isfinite(vmax)) or vmax <= vmin:
        raise ValueError(f"colour range must be finite with vmin < vmax, got {vmin}..{vmax}")
    height = colored.shape[0]
    font_size = max(10, min(24, height // 28))
    margin = max(6, font_size // 2)
    bar_width = max(10, font_size)
    bar_top, bar_bottom = margin, height - margin
    bar_height = max(bar_bottom - bar_top, 2)
    ticks = nice_ticks(vmin, vmax)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else (vmax - vmin)
    labels = [_label(t, step, units) for t in ticks]
    font = _font(font_size)
    text_width = max(int(math.ceil(font.getlength(s))) for s in labels) if labels else 0
    panel_width = margin + bar_width + 4 + text_width + margin
    panel = Image.new("RGB", (panel_width, height), (255, 255, 255))

    rows = np.linspace(0.0, 255.0, bar_height)  # top row = index 0 = far
    bar = np.repeat(lut(cmap)[np.rint(rows).astype(np.uint8)][:, None, :], bar_width, axis=1)
    panel.paste(Image.fromarray(np.ascontiguousarray(bar), "RGB"), (margin, bar_top))

    draw = ImageDraw.Draw(panel)
    draw.rectangle((margin - 1, bar_top - 1, margin + bar_width, bar_top + bar_height), outline=(0, 0, 0))
    x_text = margin + bar_width + 4
    for value, text in zip(ticks, labels):
        y = bar_top + (vmax - value) / (vmax - vmin) * (bar_height - 1)
        draw.line((margin + bar_width - 3, y, margin + bar_width + 2, y), fill=(0, 0, 0))
        y_text = min(max(y, font_size / 2), height - font_size / 2)  # keep end labels whole
        draw.text((x_text, y_text), text, fill=(0, 0, 0), font=font, anchor="lm")
    return np.concatenate([colored, np.asarray(panel, dtype=np.uint8)], axis=1)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two uint8 RGB images next to each other; `right` is scaled to `left`'s height."""
    for name, image in (("left", left), ("right", right)):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{name} must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    height = left.shape[0]
    if right.shape[0] != height:
        width = max(1, round(right.shape[1] * height / right.shape[0]))
        right = np.asarray(Image.fromarray(right, "RGB").resize((width, height), Image.Resampling.BILINEAR))
    return np.concatenate([left, right], axis=1)
