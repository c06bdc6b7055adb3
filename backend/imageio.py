"""Decode an uploaded image into upright 8-bit RGB plus the EXIF facts that give its focal length.

Everything a user may drop on the page goes through here, so every failure becomes an
ImageError whose message says what was wrong and what to do. Decisions:
- Orientation: the EXIF Orientation tag is applied first (ImageOps.exif_transpose), so the
  array, its width and height, and the EXIF focal-plane resolutions all describe the upright
  image the user sees. The focal facts are read by backend.exif.
- Transparency (RGBA, LA, palette with transparency): composited on white. Dropping alpha
  would expose whatever colour the encoder left under transparent pixels (often black or
  noise), which the network would read as scene content.
- High bit depth: 16-bit integer modes are scaled by 255/65535 (full range kept, not clipped);
  32-bit integer and float images are scaled from their own range (floats already in [0, 1]
  are scaled by 255).
- Animated files (GIF, WebP, APNG, multi-page TIFF): the first frame.
- Size: files over max_bytes and images over max_pixels are refused before decoding
  (decompression bombs); sides under MIN_SIDE pixels are refused, since the network sees a
  448 x 448 crop and a tiny image carries no depth cues.
"""
from __future__ import annotations

import io
import os
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from backend.exif import ExifCamera, read_exif

MIN_SIDE = 16
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
# Full decodes running at once, over every caller (depth requests, API, anything else): a
# 40 MP image takes ~120 MB as RGB plus Pillow's own buffer, so this bounds the decoders'
# memory whatever the request concurrency. Light steps read headers instead (backend.probe).
FULL_DECODE_SLOTS = 2
_full_decodes = threading.BoundedSemaphore(FULL_DECODE_SLOTS)
# Pillow's JPEG opener also handles the multi-picture JPEGs many phones write (format "MPO").
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")

# Magic numbers of the accepted formats: a file that starts with one but cannot be opened is
# a cut-short copy of a real image, which deserves a different hint than "not an image".
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


class ImageError(ValueError):
    """The upload cannot be used; the message is written for the person who sent it."""


@dataclass(frozen=True)
class LoadedImage:
    """An upright 8-bit RGB image and where it came from."""

    rgb: np.ndarray  # uint8 [H, W, 3], EXIF orientation applied
    exif: ExifCamera
    format: str  # Pillow format name, e.g. "JPEG", "PNG"
    original_mode: str  # Pillow mode before conversion, e.g. "RGBA", "I;16", "CMYK"

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def load_image(
    source: bytes | str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> LoadedImage:
    """Decode `source` (file bytes or a path) into an upright RGB image; raise ImageError."""
    data = _read_source(source, max_bytes)
    with warnings.catch_warnings():
        # Our own max_pixels check below is the authority; Pillow's global limit stays
        # as a backstop (DecompressionBombError) for absurd headers.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except Image.DecompressionBombError as exc:
            raise ImageError(f"The image is too large to process safely ({exc}).") from exc
        except UnidentifiedImageError as exc:
            raise ImageError(_unidentified_message(data)) from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"The image file is damaged or incomplete: its header cannot be read ({exc}).") from exc
        with im, _full_decodes:
            return _decode(im, data, max_pixels)


def _read_source(source: bytes | str | os.PathLike, max_bytes: int) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = os.fspath(source)
        try:
            size = os.path.getsize(path)
        except OSError as exc:
            raise ImageError(f"The image file {path!r} cannot be opened ({exc.strerror}).") from exc
        if size > max_bytes:
            raise ImageError(_too_many_bytes(size, max_bytes))
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ImageError(f"The image file {path!r} cannot be read ({exc.strerror}).") from exc
    if not data:
        raise ImageError("The file is empty (0 bytes); please upload an image.")
    if len(data) > max_bytes:
        raise ImageError(_too_many_bytes(len(data), max_bytes))
    return data


def _too_many_bytes(size: int, max_bytes: int) -> str:
    return f"The file is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB."


def _unidentified_message(data: bytes) -> str:
    head = data[:32]
    if b"ftypheic" in head or b"ftypheix" in head or b"ftypmif1" in head or b"ftyphevc" in head:
        return ("This is a HEIC/HEIF photo, which this demo cannot decode. "
                "Export it as JPEG (keeps the EXIF focal length) and upload that.")
    if b"ftypavif" in head:
        return "This is an AVIF image, which this demo cannot decode. Please upload JPEG, PNG or WebP."
    fmt = _signature_format(head)
    if fmt:
        return (f"The file starts like a {fmt} image but is damaged or incomplete "
                "(was the upload or download cut short?). Please upload the complete file.")
    return ("The file is not an image this demo can read. "
            f"Supported formats: {', '.join(ACCEPTED_FORMATS)}.")


def _signature_format(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for signature, fmt in _SIGNATURES if head.startswith(signature)), None)


def check_size(width: int, height: int, max_pixels: int) -> None:
    """Raise ImageError for an image over `max_pixels` (a decompression bomb) or with a side
    under MIN_SIDE; what the decoder and the header probe both refuse."""
    if width * height > max_pixels:
        raise ImageError(
            f"The image is {width} x {height} = {width * height / 1e6:.1f} megapixels; "
            f"the limit is {max_pixels / 1e6:.0f} megapixels. Please downscale it.")
    if min(width, height) < MIN_SIDE:
        raise ImageError(
            f"The image is only {width} x {height} pixels; each side needs at least {MIN_SIDE} pixels.")


def _decode(im: Image.Image, data: bytes, max_pixels: int) -> LoadedImage:
    check_size(*im.size, max_pixels)
    fmt = im.format or "unknown"
    exif = read_exif(data, im)
    try:
        im.seek(0)
        im.load()
        ImageOps.exif_transpose(im, in_place=True)  # in place: no copy of a 12 MP frame
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"The {fmt} file is damaged or incomplete ({exc}).") from exc
    original_mode = im.mode
    try:
        rgb = _to_rgb8(im)
    except ImageError:
        raise
    except (OSError, ValueError) as exc:
        raise ImageError(f"Images in colour mode {original_mode} cannot be converted to RGB ({exc}).") from exc
    return LoadedImage(rgb=rgb, exif=exif, format=fmt, original_mode=original_mode)


def _to_rgb8(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8).copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _high_depth_to_uint8(np.asarray(im), mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _high_depth_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map a 16/32-bit or float gray image onto 0-255 without clipping its range."""
    v = values.astype(np.float64)
    if mode.startswith("I;16"):
        scaled = v * (255.0 / 65535.0)
    else:
        finite = v[np.isfinite(v)]
        if finite.size == 0:
            raise ImageError("The image contains no finite pixel values.")
        lo, hi = float(finite.min()), float(finite.max())
        if mode == "F" and lo >= 0.0 and hi <= 1.0:
            scaled = v * 255.0
        elif mode == "I" and lo >= 0.0 and hi <= 65535.0 and hi > 255.0:
            scaled = v * (255.0 / 65535.0)
        elif mode == "I" and lo >= 0.0 and hi <= 255.0:
            scaled = v
        else:
            scaled = (v - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(v)
        scaled = np.where(np.isfinite(scaled), scaled, 0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
