"""Camera intrinsics: where they come from (EXIF, presets, sidecar files, the user) and how
they are checked. (How they follow the photo into the network image: backend.framing.)

Pixel convention (OpenCV): pixel (u, v) has its centre at integer coordinates (u, v); a ray
through it has direction ((u - cx) / fx, (v - cy) / fy, 1). The image spans
[-0.5, W - 0.5] x [-0.5, H - 0.5], so its geometric centre is ((W - 1) / 2, (H - 1) / 2),
which is what the presets and EXIF use for the principal point (half a pixel from the
popular W / 2; it makes the network-resolution principal point land exactly on the
centre of the network image).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backend.imageio import ExifCamera

FULL_FRAME_DIAGONAL_MM = 43.27  # diagonal of a 36 x 24 mm frame: what "35 mm-equivalent" refers to
MIN_FOCAL_PER_DIAGONAL = 0.05  # diagonal field of view ~169 degrees
MAX_FOCAL_PER_DIAGONAL = 100.0  # diagonal field of view ~0.6 degrees
PIXEL_8A_FOCAL_35MM = 26.0
ASSUMED_HFOV_DEG = 60.0

PIXEL_8A_PRESET = "Pixel 8a main camera"
ASSUMED_FOV_PRESET = f"Unknown camera (assumed {ASSUMED_HFOV_DEG:g}° horizontal FOV)"


class IntrinsicsError(ValueError):
    """Intrinsics that cannot describe this image; the message names the offending numbers."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels (OpenCV convention, see the module docstring)."""

    fx: float
    fy: float
    cx: float
    cy: float


@dataclass(frozen=True)
class IntrinsicsChoice:
    """Intrinsics plus the human-readable reason they were chosen (shown in the UI)."""

    intrinsics: Intrinsics
    source: str


def validate(intr: Intrinsics, width: int, height: int) -> Intrinsics:
    """Return `intr` if it can describe a width x height image, else raise IntrinsicsError."""
    if width <= 0 or height <= 0:
        raise IntrinsicsError(f"Image size {width} x {height} is not valid.")
    values = {}
    for name in ("fx", "fy", "cx", "cy"):
        raw = getattr(intr, name)
        try:
            values[name] = float(raw)
        except (TypeError, ValueError):
            raise IntrinsicsError(f"{name} must be a number of pixels, got {raw!r}.") from None
        if not math.isfinite(values[name]):
            raise IntrinsicsError(f"{name} must be a finite number of pixels, got {raw!r}.")
    diagonal = math.hypot(width, height)
    low, high = MIN_FOCAL_PER_DIAGONAL * diagonal, MAX_FOCAL_PER_DIAGONAL * diagonal
    for name in ("fx", "fy"):
        value = values[name]
        if value <= 0:
            raise IntrinsicsError(f"{name} must be positive (in pixels), got {value:g}.")
        if not low <= value <= high:
            raise IntrinsicsError(
                f"{name} = {value:g} px is implausible for a {width} x {height} image: expected "
                f"{low:.0f} to {high:.0f} px (0.05 to 100 times the {diagonal:.0f} px diagonal). "
                "Focal lengths must be in pixels, not millimetres.")
    ratio = values["fx"] / values["fy"]
    if not 0.2 <= ratio <= 5.0:
        raise IntrinsicsError(
            f"fx / fy = {ratio:.2f} ({values['fx']:g} / {values['fy']:g} px); real cameras have "
            "nearly square pixels, so fx and fy should be close.")
    for name, value, extent in (("cx", values["cx"], width), ("cy", values["cy"], height)):
        if not -0.5 <= value <= extent - 0.5:
            raise IntrinsicsError(
                f"{name} = {value:g} px lies outside the image (0 to {extent - 1} for a "
                f"{width} x {height} image); the principal point is usually near the centre "
                f"({(width - 1) / 2:g}, {(height - 1) / 2:g}).")
    return Intrinsics(values["fx"], values["fy"], values["cx"], values["cy"])


def centered(focal_px: float, width: int, height: int) -> Intrinsics:
    """Square pixels, principal point at the image centre (what EXIF and presets imply)."""
    return Intrinsics(focal_px, focal_px, (width - 1) / 2, (height - 1) / 2)


def focal_from_35mm(f35_mm: float, width: int, height: int) -> float:
    """35 mm-equivalent focal length to pixels: the frame diagonal maps to the image diagonal.

    The diagonal does not change with orientation, so width and height may be either way round.
    """
    return f35_mm * math.hypot(width, height) / FULL_FRAME_DIAGONAL_MM


def from_fov(width: int, height: int, hfov_deg: float) -> Intrinsics:
    """Intrinsics for a horizontal field of view across the full image width."""
    if not 1.0 <= hfov_deg <= 170.0:
        raise IntrinsicsError(f"A horizontal field of view of {hfov_deg:g}° is not plausible (1° to 170°).")
    focal = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
    return centered(focal, width, height)


def from_exif(exif: ExifCamera, width: int, height: int) -> IntrinsicsChoice | None:
    """Intrinsics from EXIF for the upright width x height image, or None if EXIF lacks them.

    Preference: FocalLengthIn35mmFilm (what phones write, robust to downscaling), then
    FocalLength x focal-plane resolution. The focal-plane resolution is defined for the
    image as the camera wrote it (PixelX/YDimension); if the file has since been resized,
    the resolution is scaled by width / PixelXDimension so the focal stays right.
    """
    camera = f" ({exif.camera_name})" if exif.camera_name else ""
    if exif.focal_35mm:
        focal = focal_from_35mm(exif.focal_35mm, width, height)
        return _checked(
            centered(focal, width, height), width, height,
            f"EXIF 35 mm-equivalent focal {exif.focal_35mm:g} mm{camera} → {focal:.0f} px")
    if exif.focal_mm and exif.focal_plane_unit_mm and (exif.focal_plane_x_res or exif.focal_plane_y_res):
        x_res = exif.focal_plane_x_res or exif.focal_plane_y_res
        y_res = exif.focal_plane_y_res or exif.focal_plane_x_res
        sx = width / exif.pixel_x_dimension if exif.pixel_x_dimension else 1.0
        sy = height / exif.pixel_y_dimension if exif.pixel_y_dimension else 1.0
        fx = exif.focal_mm * x_res / exif.focal_plane_unit_mm * sx
        fy = exif.focal_mm * y_res / exif.focal_plane_unit_mm * sy
        resized = " (rescaled to this image size)" if (sx != 1.0 or sy != 1.0) else ""
        return _checked(
            Intrinsics(fx, fy, (width - 1) / 2, (height - 1) / 2), width, height,
            f"EXIF focal length {exif.focal_mm:g} mm × sensor resolution{camera}{resized} → {fx:.0f} px")
    return None


def _checked(intr: Intrinsics, width: int, height: int, source: str) -> IntrinsicsChoice | None:
    """EXIF from odd software can be nonsense; treat implausible values as absent."""
    try:
        return IntrinsicsChoice(validate(intr, width, height), source)
    except IntrinsicsError:
        return None


def _pixel_8a(width: int, height: int) -> IntrinsicsChoice:
    focal = focal_from_35mm(PIXEL_8A_FOCAL_35MM, width, height)
    return IntrinsicsChoice(
        centered(focal, width, height),
        f"Preset: Pixel 8a main camera, {PIXEL_8A_FOCAL_35MM:g} mm 35 mm-equivalent → {focal:.0f} px")


def _assumed_fov(width: int, height: int) -> IntrinsicsChoice:
    intr = from_fov(width, height, ASSUMED_HFOV_DEG)
    return IntrinsicsChoice(
        intr, f"Assumed {ASSUMED_HFOV_DEG:g}° horizontal field of view → {intr.fx:.0f} px "
              "(camera unknown: metric scale is a guess)")


PRESETS: dict[str, Callable[[int, int], IntrinsicsChoice]] = {
    PIXEL_8A_PRESET: _pixel_8a,
    ASSUMED_FOV_PRESET: _assumed_fov,
}


def load_sidecar(image_path: str | os.PathLike) -> IntrinsicsChoice | None:
    """Intrinsics from `<stem>.json` next to the image, or None when there is no such file.

    Format: {"fx": .., "fy": .., "cx": .., "cy": .., "source": "...", optional "width",
    "height" (validated against when present)}. A malformed file raises IntrinsicsError.
    """
    path = Path(image_path).with_suffix(".json")
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        intr = Intrinsics(*(float(doc[k]) for k in ("fx", "fy", "cx", "cy")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IntrinsicsError(f"The intrinsics file {path.name} is malformed ({exc!r}); "
                              "it needs numbers fx, fy, cx, cy.") from exc
    if "width" in doc and "height" in doc:
        intr = validate(intr, int(doc["width"]), int(doc["height"]))
    source = str(doc.get("source") or f"Sidecar file {path.name}")
    return IntrinsicsChoice(intr, source)
