"""How the upright photo becomes the network's square image, and how pixels and intrinsics follow.

Two fields of view (the user's choice):
- FULL_PHOTO, a letterbox (what upstream Metric3D's hubconf.py demo does): the whole photo,
  resized with its aspect ratio kept so that its long side is the network size, the short side
  rounded to whole pixels (upstream truncates; rounding keeps the two scales closer), centred
  with the padding split as upstream does (pad // 2 before, the rest after) and filled with
  the normalization mean (PAD_RGB in backend.preprocess).
- CENTRE_SQUARE: the centre square of side min(W, H), resized to the network size.

Both resize an axis-aligned box of the photo, [x0, x0 + w) x [y0, y0 + h), onto a box of the
network image, [left, left + cw) x [top, top + ch), with pixel centres on pixel centres
(OpenCV convention, see backend.intrinsics; backend.preprocess resizes this way):
    x_net = (u - x0 + 0.5) * sx - 0.5 + left,    sx = cw / w    (the same in y)
hence at network resolution
    fx' = fx * sx,    cx' = (cx - x0 + 0.5) * sx - 0.5 + left.
For the centre square, left = top = 0 and sx = size / side. Network pixels outside the
content box are padding: they carry no depth (valid_mask).

Downloads are at the photo's own resolution, the long side capped at DOWNLOAD_LONG_SIDE_CAP
pixels (DownloadGrid); the same pixel-centre rule gives their intrinsics and the bilinear
upsampling from the network's content box (upsample_to_grid).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.intrinsics import Intrinsics

FULL_PHOTO = "full"
CENTRE_SQUARE = "square"
FIELDS_OF_VIEW: dict[str, str] = {FULL_PHOTO: "Full photo", CENTRE_SQUARE: "Centre square"}  # value -> label
DEFAULT_FIELD_OF_VIEW = FULL_PHOTO
DOWNLOAD_LONG_SIDE_CAP = 2048  # px: a 12 MP photo's depth downloads are 2048 x 1536 (12 MB .npy)


@dataclass(frozen=True)
class Framing:
    """The photo box [x0, x0 + width) x [y0, y0 + height) resized onto the network box
    [left, left + content_width) x [top, top + content_height) of a size x size image."""

    mode: str  # FULL_PHOTO or CENTRE_SQUARE
    photo_width: int
    photo_height: int
    x0: int
    y0: int
    width: int
    height: int
    left: int
    top: int
    content_width: int
    content_height: int
    size: int

    @property
    def scale_x(self) -> float:
        """Network pixels per photo pixel along x."""
        return self.content_width / self.width

    @property
    def scale_y(self) -> float:
        """Network pixels per photo pixel along y."""
        return self.content_height / self.height

    @property
    def content(self) -> tuple[slice, slice]:
        """(rows, columns) of the network image that show the photo: `array[framing.content]`."""
        return (slice(self.top, self.top + self.content_height), slice(self.left, self.left + self.content_width))

    def valid_mask(self) -> np.ndarray:
        """bool [size, size]: True on network pixels that show the photo, False on padding."""
        mask = np.zeros((self.size, self.size), dtype=bool)
        mask[self.content] = True
        return mask

    def network_intrinsics(self, intr: Intrinsics) -> Intrinsics:
        """Intrinsics of the size x size network image for photo intrinsics `intr` (module docstring)."""
        return Intrinsics(
            fx=intr.fx * self.scale_x,
            fy=intr.fy * self.scale_y,
            cx=(intr.cx - self.x0 + 0.5) * self.scale_x - 0.5 + self.left,
            cy=(intr.cy - self.y0 + 0.5) * self.scale_y - 0.5 + self.top,
        )

    def photo_to_network(self, u: float | np.ndarray, v: float | np.ndarray) -> tuple:
        """Photo pixel coordinates (x right, y down) -> network image coordinates."""
        return ((np.asarray(u, dtype=np.float64) - self.x0 + 0.5) * self.scale_x - 0.5 + self.left,
                (np.asarray(v, dtype=np.float64) - self.y0 + 0.5) * self.scale_y - 0.5 + self.top)

    def network_to_photo(self, x: float | np.ndarray, y: float | np.ndarray) -> tuple:
        """Network image coordinates -> photo pixel coordinates (inverse of photo_to_network)."""
        return ((np.asarray(x, dtype=np.float64) - self.left + 0.5) / self.scale_x - 0.5 + self.x0,
                (np.asarray(y, dtype=np.float64) - self.top + 0.5) / self.scale_y - 0.5 + self.y0)

    def content_to_photo(self, x: float | np.ndarray, y: float | np.ndarray) -> tuple:
        """Coordinates in the content box (e.g. a click on `colored[framing.content]`, the colormap
        without padding) -> photo pixel coordinates."""
        return self.network_to_photo(np.asarray(x, dtype=np.float64) + self.left,
                                     np.asarray(y, dtype=np.float64) + self.top)

    def info(self) -> dict[str, object]:
        """JSON-ready description for the info panel, the API and intrinsics.json."""
        return {"field_of_view": FIELDS_OF_VIEW[self.mode], "network_size": self.size,
                "photo_box": {"x0": self.x0, "y0": self.y0, "width": self.width, "height": self.height},
                "network_box": {"left": self.left, "top": self.top,
                                "width": self.content_width, "height": self.content_height}}


def framing_for(width: int, height: int, size: int, mode: str = DEFAULT_FIELD_OF_VIEW) -> Framing:
    """The framing of a width x height photo in a size x size network image.

    Raises ValueError for an unknown mode or a non-positive size.
    """
    if width <= 0 or height <= 0 or size <= 0:
        raise ValueError(f"sizes must be positive, got photo {width} x {height}, network {size}")
    if mode == CENTRE_SQUARE:
        side = min(width, height)
        return Framing(mode, width, height, (width - side) // 2, (height - side) // 2, side, side,
                       0, 0, size, size, size)
    if mode != FULL_PHOTO:
        raise ValueError(f"unknown field of view {mode!r}; choose one of {', '.join(FIELDS_OF_VIEW)}")
    long_side = max(width, height)
    content_w = max(1, _round_ratio(width * size, long_side))
    content_h = max(1, _round_ratio(height * size, long_side))
    return Framing(mode, width, height, 0, 0, width, height,
                   (size - content_w) // 2, (size - content_h) // 2, content_w, content_h, size)


def _round_ratio(numerator: int, denominator: int) -> int:
    """round(numerator / denominator), halves up, in exact integer arithmetic."""
    return (2 * numerator + denominator) // (2 * denominator)


@dataclass(frozen=True)
class DownloadGrid:
    """The pixel grid of the depth downloads: the upright photo, scaled down if its long side
    exceeds `cap`. Pixel (i, j) covers the same part of the scene as the photo's pixels
    around ((i + 0.5) / scale_x - 0.5, (j + 0.5) / scale_y - 0.5)."""

    width: int
    height: int
    photo_width: int
    photo_height: int
    cap: int

    @property
    def scale_x(self) -> float:
        return self.width / self.photo_width

    @property
    def scale_y(self) -> float:
        return self.height / self.photo_height

    @property
    def is_capped(self) -> bool:
        return (self.width, self.height) != (self.photo_width, self.photo_height)

    def intrinsics(self, photo: Intrinsics) -> Intrinsics:
        """The K that matches this grid, for photo intrinsics `photo` (pixel-centre convention)."""
        return Intrinsics(photo.fx * self.scale_x, photo.fy * self.scale_y,
                          (photo.cx + 0.5) * self.scale_x - 0.5, (photo.cy + 0.5) * self.scale_y - 0.5)

    def to_photo(self, i: float | np.ndarray, j: float | np.ndarray) -> tuple:
        """Grid pixel coordinates -> photo pixel coordinates."""
        return ((np.asarray(i, dtype=np.float64) + 0.5) / self.scale_x - 0.5,
                (np.asarray(j, dtype=np.float64) + 0.5) / self.scale_y - 0.5)

    def from_photo(self, u: float | np.ndarray, v: float | np.ndarray) -> tuple:
        """Photo pixel coordinates -> grid pixel coordinates."""
        return ((np.asarray(u, dtype=np.float64) + 0.5) * self.scale_x - 0.5,
                (np.asarray(v, dtype=np.float64) + 0.5) * self.scale_y - 0.5)


def download_grid(width: int, height: int, cap: int = DOWNLOAD_LONG_SIDE_CAP) -> DownloadGrid:
    """The photo's own grid, or its long side scaled to `cap` (short side rounded) when longer."""
    if width <= 0 or height <= 0 or cap <= 0:
        raise ValueError(f"sizes must be positive, got photo {width} x {height}, cap {cap}")
    long_side = max(width, height)
    if long_side <= cap:
        return DownloadGrid(width, height, width, height, cap)
    return DownloadGrid(max(1, _round_ratio(width * cap, long_side)), max(1, _round_ratio(height * cap, long_side)),
                        width, height, cap)


def upsample_to_grid(network: np.ndarray, framing: Framing, grid: DownloadGrid) -> np.ndarray:
    """float32 [size, size] network-grid values -> float32 [grid.height, grid.width], bilinear.

    Each grid pixel centre is mapped to the photo (grid.to_photo) and on into the network
    image (framing.photo_to_network); the value is interpolated from the content box only,
    so padding never mixes into a photo pixel: within half a network pixel of the content
    edge the edge value is held (like align_corners=False interpolation, which upstream uses).
    Grid pixels whose centres fall outside the framed photo box (the sides a centre square
    leaves out) are NaN.
    """
    values = np.asarray(network, dtype=np.float32)
    if values.shape != (framing.size, framing.size):
        raise ValueError(f"expected [{framing.size}, {framing.size}], got {values.shape}")
    if (grid.photo_width, grid.photo_height) != (framing.photo_width, framing.photo_height):
        raise ValueError("the download grid and the framing describe different photos")
    content = values[framing.content]
    u, v = grid.to_photo(np.arange(grid.width), np.arange(grid.height))
    x, y = framing.photo_to_network(u, v)
    cols, col_w = _taps(x - framing.left, u, framing.x0, framing.width, framing.content_width)
    rows, row_w = _taps(y - framing.top, v, framing.y0, framing.height, framing.content_height)
    out = np.full((grid.height, grid.width), np.nan, dtype=np.float32)
    if cols is None or rows is None:
        return out
    (c0, c1, cin), (r0, r1, rin) = cols, rows
    # Separable: interpolate rows first (few content columns), then columns.
    by_row = content[r0] * (1.0 - row_w)[:, None] + content[r1] * row_w[:, None]
    block = by_row[:, c0] * (1.0 - col_w)[None, :] + by_row[:, c1] * col_w[None, :]
    out[rin.start:rin.stop, cin.start:cin.stop] = block
    return out


def _taps(coord: np.ndarray, photo: np.ndarray, start: int, extent: int,
          content: int) -> tuple[tuple[np.ndarray, np.ndarray, slice], np.ndarray] | tuple[None, None]:
    """Neighbour indices and weights along one axis for the grid pixels inside the photo box.

    coord: each grid pixel's position in content-box pixels; photo: its position in photo
    pixels. Returns ((i0, i1, the slice of grid pixels inside), the weight of i1), or
    (None, None) when no grid pixel centre lies inside. The inside pixels are contiguous
    because the mapping is monotonic.
    """
    inside = np.flatnonzero((photo >= start - 0.5) & (photo <= start + extent - 0.5))
    if inside.size == 0:
        return None, None
    c = np.clip(coord[inside[0]:inside[-1] + 1], 0.0, content - 1)
    i0 = np.minimum(np.floor(c).astype(np.intp), content - 1)
    i1 = np.minimum(i0 + 1, content - 1)
    weight = (c - i0).astype(np.float32)
    return (i0, i1, slice(int(inside[0]), int(inside[-1]) + 1)), weight
