"""Size and EXIF of an uploaded image from its header, without decoding its pixels.

Filling in the intrinsics needs only the upright width and height and the EXIF focal
facts; decoding a 16383 x 2000 lossless WebP of 1.3 KB for that raised the peak RSS of a
fresh process by ~570 MB (tests/test_hostile_units.py), reading its header by ~4 MB.
Pillow's Image.open reads only the header (and JPEG/TIFF/WebP EXIF) until pixels are asked
for; PNG's getexif() would load the whole image when the eXIf chunk follows the pixel data,
so for PNG only an EXIF chunk that came before the pixels is used. JPEGs (the usual phone
photo) are also decoded at 1/8 scale (Image.draft) so a cut-short upload is reported at once;
damaged data in other formats is reported when the depth run decodes the photo.
"""
from __future__ import annotations

import os
import re
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from PIL.ExifTags import Base

from backend.exif import AXIS_SWAPPING_ORIENTATIONS, ExifCamera, complete_with_exiftool, read_exif
from backend.imageio import (
    ACCEPTED_FORMATS, DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageError, _too_many_bytes, check_size,
    _unidentified_message,
)

_HEAD_BYTES = 64
_MAX_EXIF_BYTES = 65535  # EXIF's own limit for an APP1 segment; a larger chunk is cut
# JPEG can decode at 1/8 scale (DCT scaling, Image.draft): a 40 MP photo costs ~0.6 MP, and a
# cut-short file is still caught when it is uploaded rather than at "Estimate depth".
_DRAFT_FORMATS = ("JPEG", "MPO")
_DRAFT_SCALE = 8


@dataclass(frozen=True)
class ImageFacts:
    """What the intrinsics need: the upright size (pixels) and the EXIF camera facts."""

    width: int
    height: int
    exif: ExifCamera
    format: str


def probe_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
                max_bytes: int = DEFAULT_MAX_BYTES) -> ImageFacts:
    """Read the size and EXIF of the image file at `path`; raise ImageError like load_image.

    The same limits as backend.imageio.load_image (bytes, megapixels, MIN_SIDE) apply, so a
    photo refused here would be refused there; a file whose pixels are damaged passes here
    and is reported when it is decoded.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise ImageError(f"The image file {os.path.basename(path)!r} cannot be opened ({exc.strerror}).") from exc
    if size == 0:
        raise ImageError("The file is empty (0 bytes); please upload an image.")
    if size > max_bytes:
        raise ImageError(_too_many_bytes(size, max_bytes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path, formats=ACCEPTED_FORMATS)
        except Image.DecompressionBombError as exc:
            raise ImageError(f"The image is too large to process safely ({exc}).") from exc
        except UnidentifiedImageError as exc:
            with open(path, "rb") as f:
                raise ImageError(_unidentified_message(f.read(_HEAD_BYTES))) from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"The image file is damaged or incomplete: its header cannot be read ({exc}).") from exc
    with im:
        width, height = im.size
        check_size(width, height, max_pixels)
        if im.format in _DRAFT_FORMATS:
            _decode_reduced(im)
        if im.format == "PNG" and "exif" not in im.info:
            chunk = _png_exif_after_pixels(path)
            if chunk is not None:
                im.info["exif"] = chunk  # what Pillow's getexif() would load the whole image to find
        has_exif = im.format != "PNG" or "exif" in im.info
        xmp = im.info.get("xmp") if not has_exif else None  # a PNG's XMP (read before the pixels)
        if has_exif:
            exif = _read_exif(path, im)
        elif xmp:  # what the full decoder finds: exiftool reads camera facts from XMP
            with open(path, "rb") as f:
                exif = complete_with_exiftool(ExifCamera(), f.read())
        else:
            exif = ExifCamera()
        try:
            orientation = im.getexif().get(Base.Orientation) if has_exif else _xmp_orientation(xmp)
        except Exception:  # noqa: BLE001 - broken EXIF never stops a photo, as in load_image
            orientation = None
        if orientation in AXIS_SWAPPING_ORIENTATIONS:
            width, height = height, width
        return ImageFacts(width=width, height=height, exif=exif, format=im.format or "unknown")


def _png_exif_after_pixels(path: str) -> bytes | None:
    """The eXIf chunk of a PNG (PNG 1.2 extensions, eXIf) found by skipping from chunk header
    to chunk header, pixel data unread; None when there is none. Pillow keeps it as
    b"Exif\\x00\\x00" + TIFF data, so the same prefix is given here."""
    with open(path, "rb") as f:
        f.seek(8)  # the PNG signature
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind == b"eXIf":
                data = f.read(min(length, _MAX_EXIF_BYTES))
                return data if data.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + data
            if kind == b"IEND":
                return None
            f.seek(length + 4, os.SEEK_CUR)  # data and CRC


def _xmp_orientation(xmp: bytes | str | None) -> int | None:
    """tiff:Orientation from XMP, as Pillow's getexif() reads it for a PNG without EXIF."""
    if not xmp:
        return None
    text = xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else xmp
    match = re.search(r'tiff:Orientation(?:="|>)([0-9])', text)
    return int(match.group(1)) if match else None


def _read_exif(path: str, im: Image.Image) -> ExifCamera:
    """backend.exif's reading; the file's bytes are read only for exiftool (no pixels decoded)."""
    with open(path, "rb") as f:
        return read_exif(f.read(), im)


def _decode_reduced(im: Image.Image) -> None:
    """Decode a JPEG at 1/8 scale to check its data (raises ImageError when it is damaged)."""
    width, height = im.size
    try:
        im.draft("RGB", (max(1, width // _DRAFT_SCALE), max(1, height // _DRAFT_SCALE)))
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"The {im.format} file is damaged or incomplete ({exc}).") from exc
