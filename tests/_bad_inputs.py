"""The bad-input corpus: every file and every set of intrinsics a careless or hostile user may send.

Generated, not stored: each case builds its bytes in memory from a seeded recipe, so the
corpus costs nothing in the repository and a new case is one entry below. Each case says
what must happen: either words the error message must contain (a person must be able to
tell what was wrong), or, for files that are odd but valid, the upright size and a few
pixel probes the decoded image must show (independent oracles: numpy rotations, the
colours painted in, alpha composited on white by hand).
"""
from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from PIL.ExifTags import Base

Probe = tuple[int, int, tuple[int, int, int]]  # (x, y, expected RGB) in the upright image

RED, GREEN, BLUE, YELLOW, WHITE = (230, 20, 20), (20, 200, 40), (30, 40, 220), (240, 220, 30), (255, 255, 255)
QUADRANT_COLORS = (RED, GREEN, BLUE, YELLOW)  # top-left, top-right, bottom-left, bottom-right


@dataclass(frozen=True)
class ImageCase:
    name: str
    filename: str
    make: Callable[[], bytes]
    error: tuple[str, ...] = ()  # words the message must contain; empty: the file must load
    size: tuple[int, int] | None = None  # (width, height) of the upright image when it loads
    probes: tuple[Probe, ...] = ()
    tolerance: int = 0  # per channel, for lossy formats
    exif_orientation: int | None = None  # the EXIF Orientation tag the file carries, if any

    @property
    def valid(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class IntrinsicsCase:
    name: str
    values: tuple[float | None, float | None, float | None, float | None]  # fx, fy, cx, cy
    error: tuple[str, ...] = ()  # words of the app's message
    backend_error: tuple[str, ...] | None = None  # words of backend.intrinsics.validate's, when they differ
    json_safe: bool = field(default=True)  # False for NaN/inf: JSON clients cannot even send them


# ----------------------------------------------------------------------------- pictures


def quadrants(width: int, height: int) -> np.ndarray:
    """Four flat colours, so orientation and colour survive JPEG and can be probed."""
    rgb = np.empty((height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    rgb[:h2, :w2], rgb[:h2, w2:], rgb[h2:, :w2], rgb[h2:, w2:] = QUADRANT_COLORS
    return rgb


def quadrant_probes(rgb: np.ndarray) -> tuple[Probe, ...]:
    """The colour at the centre of each quadrant of an upright array."""
    h, w = rgb.shape[:2]
    points = ((w // 4, h // 4), (3 * w // 4, h // 4), (w // 4, 3 * h // 4), (3 * w // 4, 3 * h // 4))
    return tuple((x, y, tuple(int(c) for c in rgb[y, x])) for x, y in points)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def good_png(width: int = 64, height: int = 48) -> bytes:
    return encode(Image.fromarray(quadrants(width, height)), "PNG")


def good_jpeg(width: int = 64, height: int = 48) -> bytes:
    return encode(Image.fromarray(quadrants(width, height)), "JPEG", quality=95)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_header(width: int, height: int, rows: bytes | None = None) -> bytes:
    """An 8-bit gray PNG that declares width x height; `rows` (filtered scanlines) may be fake."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"\0" * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png_bomb_decodable(side: int = 7000) -> bytes:
    """A real side x side all-black PNG: ~50 KB on disk, 49 megapixels once decoded."""
    rows = zlib.compressobj(9)
    parts = [rows.compress(b"\0" * (side + 1)) for _ in range(side)]
    idat = b"".join(parts) + rows.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_with_declared_size(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims width x height."""
    data = bytearray(good_jpeg(16, 16))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def gif_with_declared_size(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.fromarray(quadrants(16, 16)).convert("P"), "GIF"))
    struct.pack_into("<HH", data, 6, width, height)
    return bytes(data)


def png_bad_crc() -> bytes:
    data = bytearray(good_png())
    ihdr = data.find(b"IHDR")
    data[ihdr + 7] ^= 0x01  # the width changes, the header's CRC no longer matches: bit rot
    return bytes(data)


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("photo.jpg", good_jpeg())
    return buf.getvalue()


def minimal_pdf() -> bytes:
    return (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
            b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")


def iso_bmff(brand: bytes) -> bytes:
    """The start of a HEIC/AVIF file: an ftyp box with the brand, then a meta box stub."""
    ftyp = struct.pack(">I", 24) + b"ftyp" + brand + b"\0\0\0\0" + b"mif1" + brand
    return ftyp + struct.pack(">I", 16) + b"meta" + b"\0" * 8


def exif_rotated_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[Base.Orientation] = orientation
    return encode(Image.fromarray(quadrants(64, 48)), "JPEG", quality=95, exif=exif.tobytes())


EXIF_ROT90_K = {3: 2, 6: -1, 8: 1}  # EXIF orientation -> np.rot90 k that makes the stored pixels upright


def exif_upright(orientation: int) -> np.ndarray:
    """Oracle for exif_rotated_jpeg: what the viewer must show (3: 180°, 6: 90° clockwise, 8: 90° counter-clockwise)."""
    return np.rot90(quadrants(64, 48), EXIF_ROT90_K[orientation])


def rgba_png() -> bytes:
    rgba = np.dstack([quadrants(64, 48), np.full((48, 64), 255, np.uint8)])
    rgba[:24, :32, 3] = 0  # the red quadrant fully transparent -> white
    rgba[24:, 32:, 3] = 128  # yellow half transparent -> halfway to white
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def luma(color: tuple[int, int, int]) -> int:
    """ITU-R 601-2 luma, the grey a colour photo becomes in mode L."""
    r, g, b = color
    return int(round(0.299 * r + 0.587 * g + 0.114 * b))


def _over_white(color: tuple[int, int, int], alpha: float) -> tuple[int, int, int]:
    return tuple(int(round(c * alpha + 255 * (1 - alpha))) for c in color)  # type: ignore[return-value]


def la_png() -> bytes:
    la = np.zeros((48, 64, 2), np.uint8)
    la[..., 0], la[..., 1] = 60, 255
    la[:, :32, 1] = 0
    return encode(Image.fromarray(la, "LA"), "PNG")


def palette_png(transparent: bool) -> bytes:
    im = Image.fromarray(quadrants(64, 48)).quantize(colors=4, dither=Image.Dither.NONE)
    params = {}
    if transparent:
        params["transparency"] = im.getpixel((0, 0))  # the red quadrant's palette index
    return encode(im, "PNG", **params)


def gray16_png() -> bytes:
    gray = np.zeros((48, 64), np.uint16)
    gray[:, :32], gray[:, 32:] = 65535, 32768
    return encode(Image.fromarray(gray), "PNG")  # uint16 -> mode I;16


def rgb48_png() -> bytes:
    """16 bits per channel RGB, written by hand (Pillow cannot encode it)."""
    rgb = quadrants(64, 48).astype(">u2") * 257
    raw = b"".join(b"\0" + rgb[y].tobytes() for y in range(48))
    ihdr = struct.pack(">IIBBBBB", 64, 48, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b"")


def float_tiff(values: np.ndarray) -> bytes:
    return encode(Image.fromarray(values.astype(np.float32), "F"), "TIFF")


def animated(fmt: str) -> bytes:
    frames = [Image.fromarray(np.full((48, 64, 3), c, np.uint8)) for c in (RED, BLUE, GREEN)]
    params = {"lossless": True} if fmt == "WEBP" else {}
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **params)


def cmyk_jpeg() -> bytes:
    cmyk = np.zeros((48, 64, 4), np.uint8)
    cmyk[:, :32] = (0, 255, 255, 0)  # red
    cmyk[:, 32:] = (255, 0, 255, 0)  # green
    return encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95)


def ppm() -> bytes:
    return encode(Image.fromarray(quadrants(64, 48)), "PPM")


def solid_png(width: int, height: int) -> bytes:
    return encode(Image.new("RGB", (width, height), GREEN), "PNG")


def random_bytes(n: int = 4096, seed: int = 11) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


NOT_AN_IMAGE = ("not an image this demo can read", "JPEG, PNG")
DAMAGED = ("damaged or incomplete",)


def image_cases() -> list[ImageCase]:
    """Every file case: broken files must be explained, odd-but-valid files must load right."""
    q = quadrant_probes(quadrants(64, 48))
    cases = [
        ImageCase("empty file", "empty.jpg", lambda: b"", ("empty", "0 bytes")),
        ImageCase("truncated JPEG", "cut.jpg", lambda: good_jpeg(256, 192)[:1500], DAMAGED),
        ImageCase("JPEG start-of-image marker only", "soi.jpg", lambda: b"\xff\xd8\xff", DAMAGED),
        ImageCase("truncated PNG", "cut.png", lambda: good_png(256, 192)[:300], DAMAGED),
        ImageCase("PNG signature only", "sig.png", lambda: b"\x89PNG\r\n\x1a\n", DAMAGED),
        ImageCase("PNG whose header fails its CRC", "crc.png", png_bad_crc, DAMAGED),
        ImageCase("text file renamed .png", "notes.png", lambda: b"Shopping list: milk, eggs\n" * 20, NOT_AN_IMAGE),
        ImageCase("PDF renamed .png", "scan.png", minimal_pdf, NOT_AN_IMAGE),
        ImageCase("zip renamed .png", "photos.png", zip_bytes, NOT_AN_IMAGE),
        ImageCase("SVG renamed .png", "logo.png",
                  lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="48"/>', NOT_AN_IMAGE),
        ImageCase("random bytes", "noise.jpg", random_bytes, NOT_AN_IMAGE),
        ImageCase("PPM (readable, not supported)", "old.png", ppm, NOT_AN_IMAGE),
        ImageCase("HEIC signature", "IMG_0001.heic", lambda: iso_bmff(b"heic"), ("HEIC", "Export it as JPEG")),
        ImageCase("AVIF signature", "photo.avif", lambda: iso_bmff(b"avif"), ("AVIF",)),
        ImageCase("1x1 image", "dot.png", lambda: solid_png(1, 1), ("only 1 x 1 pixels", "at least 16")),
        ImageCase("8x8 image", "tiny.png", lambda: solid_png(8, 8), ("only 8 x 8 pixels",)),
        ImageCase("4000x12 strip", "strip.png", lambda: solid_png(4000, 12), ("only 4000 x 12 pixels",)),
        ImageCase("PNG declaring 100000x100000", "bomb.png", lambda: png_with_header(100_000, 100_000),
                  ("too large",)),
        ImageCase("decodable 7000x7000 PNG bomb (49 MP)", "bomb49.png", png_bomb_decodable,
                  ("7000 x 7000", "megapixels", "limit is 40")),
        ImageCase("JPEG declaring 60000x60000", "bomb.jpg", lambda: jpeg_with_declared_size(60_000, 60_000),
                  ("too large",)),
        ImageCase("GIF declaring 65535x65535", "bomb.gif", lambda: gif_with_declared_size(65_535, 65_535),
                  ("too large",)),
        ImageCase("float TIFF with no finite value", "nan.tif", lambda: float_tiff(np.full((48, 64), np.nan)),
                  ("no finite pixel values",)),
        # odd but valid: must load, upright, with the right colours
        ImageCase("PNG renamed .jpg", "really_png.jpg", good_png, size=(64, 48), probes=q),
        ImageCase("RGBA PNG", "alpha.png", rgba_png, size=(64, 48),
                  probes=(q[0][:2] + (WHITE,), q[1], q[3][:2] + (_over_white(YELLOW, 128 / 255),)), tolerance=1),
        ImageCase("LA PNG", "gray_alpha.png", la_png, size=(64, 48),
                  probes=((8, 8, WHITE), (50, 30, (60, 60, 60)))),
        ImageCase("palette PNG", "palette.png", lambda: palette_png(False), size=(64, 48), probes=q, tolerance=8),
        ImageCase("palette PNG with a transparent colour", "palette_t.png", lambda: palette_png(True), size=(64, 48),
                  probes=(q[0][:2] + (WHITE,), q[3]), tolerance=8),
        ImageCase("grayscale PNG", "gray.png", lambda: encode(Image.fromarray(quadrants(64, 48)).convert("L"), "PNG"),
                  size=(64, 48), probes=((8, 8, (luma(RED),) * 3), (50, 40, (luma(YELLOW),) * 3)), tolerance=1),
        ImageCase("bilevel PNG", "bw.png", lambda: encode(Image.new("1", (64, 48), 1), "PNG"), size=(64, 48),
                  probes=((5, 5, WHITE),)),
        ImageCase("16-bit grayscale PNG", "depth16.png", gray16_png, size=(64, 48),
                  probes=((8, 8, (255,) * 3), (50, 8, (128,) * 3))),
        ImageCase("48-bit RGB PNG", "rgb48.png", rgb48_png, size=(64, 48), probes=q),
        ImageCase("float TIFF in [0, 1]", "float.tif", lambda: float_tiff(np.full((48, 64), 0.5)), size=(64, 48),
                  probes=((10, 10, (128,) * 3),)),
        ImageCase("CMYK JPEG", "print.jpg", cmyk_jpeg, size=(64, 48),
                  probes=((8, 24, (255, 0, 0)), (56, 24, (0, 255, 0))), tolerance=12),
        ImageCase("animated GIF", "anim.gif", lambda: animated("GIF"), size=(64, 48), probes=((10, 10, RED),),
                  tolerance=8),
        ImageCase("animated WebP", "anim.webp", lambda: animated("WEBP"), size=(64, 48), probes=((10, 10, RED),)),
        ImageCase("BMP", "old.bmp", lambda: encode(Image.fromarray(quadrants(64, 48)), "BMP"), size=(64, 48),
                  probes=q),
        ImageCase("extreme aspect 4000x20", "banner.png", lambda: solid_png(4000, 20), size=(4000, 20),
                  probes=((2000, 10, GREEN),)),
    ]
    for orientation in (3, 6, 8):
        upright = exif_upright(orientation)
        cases.append(ImageCase(f"EXIF orientation {orientation} JPEG", f"rot{orientation}.jpg",
                               lambda o=orientation: exif_rotated_jpeg(o),
                               size=(upright.shape[1], upright.shape[0]), probes=quadrant_probes(upright),
                               tolerance=12, exif_orientation=orientation))
    return cases


# ----------------------------------------------------------------------------- intrinsics

INTRINSICS_IMAGE_SIZE = (640, 480)  # a plain photo; diagonal 800 px, plausible focal 40-80000 px
GOOD_INTRINSICS = (600.0, 600.0, 319.5, 239.5)


def intrinsics_cases() -> list[IntrinsicsCase]:
    nan, inf = float("nan"), float("inf")
    return [
        IntrinsicsCase("fx zero", (0.0, 600.0, 319.5, 239.5), ("fx must be positive",)),
        IntrinsicsCase("fy negative", (600.0, -600.0, 319.5, 239.5), ("fy must be positive",)),
        IntrinsicsCase("fx NaN", (nan, 600.0, 319.5, 239.5), ("fx must be a finite number",), json_safe=False),
        IntrinsicsCase("fy +inf", (600.0, inf, 319.5, 239.5), ("fy must be a finite number",), json_safe=False),
        IntrinsicsCase("cx -inf", (600.0, 600.0, -inf, 239.5), ("cx must be a finite number",), json_safe=False),
        IntrinsicsCase("fx 1e12", (1e12, 1e12, 319.5, 239.5), ("implausible", "pixels, not millimetres")),
        IntrinsicsCase("fx in millimetres", (4.4, 4.4, 319.5, 239.5), ("implausible", "pixels, not millimetres")),
        IntrinsicsCase("fx 1e-9", (1e-9, 1e-9, 319.5, 239.5), ("implausible",)),
        IntrinsicsCase("cx outside the image", (600.0, 600.0, 5000.0, 239.5), ("cx = 5000", "outside the image")),
        IntrinsicsCase("cy negative", (600.0, 600.0, 319.5, -300.0), ("cy = -300", "outside the image")),
        IntrinsicsCase("fx/fy 10x apart", (500.0, 5000.0, 319.5, 239.5), ("fx / fy", "close")),
        IntrinsicsCase("fx missing", (None, 600.0, 319.5, 239.5), ("Please fill in fx",),
                       backend_error=("fx must be a number of pixels",)),
        IntrinsicsCase("slightly non-square pixels", (600.0, 630.0, 319.5, 239.5)),
        IntrinsicsCase("principal point off centre", (600.0, 600.0, 100.0, 400.0)),
    ]
