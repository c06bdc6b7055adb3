"""Image decoding: every format and mode a user may upload, EXIF focal tags, and bad files."""
from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from PIL.ExifTags import IFD, Base
from PIL.TiffImagePlugin import IFDRational

from backend.camera import from_exif
from backend.exif import exiftool_path
from backend.imageio import ExifCamera, ImageError, LoadedImage, load_image

RNG = np.random.default_rng(7)
PATTERN = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def exif_block(orientation: int | None = None, **tags) -> Image.Exif:
    """EXIF with an Exif sub-IFD; tags given by name below."""
    names = {"focal_35mm": Base.FocalLengthIn35mmFilm, "focal_mm": Base.FocalLength,
             "x_res": Base.FocalPlaneXResolution, "y_res": Base.FocalPlaneYResolution,
             "unit": Base.FocalPlaneResolutionUnit, "px_x": Base.ExifImageWidth, "px_y": Base.ExifImageHeight}
    exif = Image.Exif()
    if orientation is not None:
        exif[Base.Orientation] = orientation
    exif[Base.Make] = "Google"
    exif[Base.Model] = "Pixel 8a"
    sub = exif.get_ifd(IFD.Exif)
    for name, value in tags.items():
        sub[names[name]] = IFDRational(value) if isinstance(value, float) else value
    return exif


@pytest.mark.parametrize("fmt, params", [
    ("PNG", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True}), ("TIFF", {"compression": "tiff_lzw"}),
])
def test_lossless_formats_round_trip_exactly(fmt, params):
    loaded = load_image(encode(Image.fromarray(PATTERN), fmt, **params))
    assert isinstance(loaded, LoadedImage)
    assert loaded.rgb.dtype == np.uint8 and loaded.rgb.shape == (30, 40, 3)
    np.testing.assert_array_equal(loaded.rgb, PATTERN)
    assert loaded.format == fmt and loaded.original_mode == "RGB"
    assert (loaded.width, loaded.height) == (40, 30)


def test_jpeg_decodes_close_to_the_original():
    smooth = np.zeros((64, 64, 3), np.uint8)
    smooth[..., 0] = np.arange(64)[None, :] * 4
    smooth[..., 2] = 200
    loaded = load_image(encode(Image.fromarray(smooth), "JPEG", quality=95))
    assert loaded.format == "JPEG"
    assert np.abs(loaded.rgb.astype(int) - smooth).mean() < 2.0


def test_path_and_bytes_give_the_same_image(tmp_path):
    path = tmp_path / "p.png"
    Image.fromarray(PATTERN).save(path)
    np.testing.assert_array_equal(load_image(path).rgb, load_image(str(path)).rgb)
    np.testing.assert_array_equal(load_image(path).rgb, load_image(path.read_bytes()).rgb)


def test_rgba_is_composited_on_white():
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere ...
    rgba[:10, :, 3] = 255  # ... opaque in the top half,
    rgba[10:, :, 3] = 0  # transparent in the bottom half,
    rgba[10:, :10, 3] = 128  # half transparent bottom-left.
    loaded = load_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert loaded.original_mode == "RGBA"
    assert tuple(loaded.rgb[0, 0]) == (255, 0, 0)
    assert tuple(loaded.rgb[15, 15]) == (255, 255, 255)
    r, g, b = (int(v) for v in loaded.rgb[15, 5])
    assert r == 255 and 120 <= g <= 135 and g == b


def test_gray_with_alpha_is_composited_on_white():
    la = Image.new("LA", (20, 20), (0, 0))
    la.paste((0, 255), (0, 0, 20, 10))
    loaded = load_image(encode(la, "PNG"))
    assert loaded.original_mode == "LA"
    assert tuple(loaded.rgb[0, 0]) == (0, 0, 0)
    assert tuple(loaded.rgb[19, 0]) == (255, 255, 255)


def test_grayscale_and_bilevel_become_three_equal_channels():
    gray = RNG.integers(0, 256, (20, 24), dtype=np.uint8)
    loaded = load_image(encode(Image.fromarray(gray, "L"), "PNG"))
    assert loaded.original_mode == "L"
    for c in range(3):
        np.testing.assert_array_equal(loaded.rgb[..., c], gray)
    bits = load_image(encode(Image.fromarray(gray > 128), "PNG"))
    assert bits.original_mode == "1"
    np.testing.assert_array_equal(bits.rgb[..., 1], np.where(gray > 128, 255, 0))


def test_palette_images_with_and_without_transparency():
    pal = Image.fromarray(PATTERN).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    expected = np.asarray(pal.convert("RGB"))
    loaded = load_image(encode(pal, "PNG"))
    assert loaded.original_mode == "P"
    np.testing.assert_array_equal(loaded.rgb, expected)
    index = int(np.asarray(pal)[0, 0])
    transparent = load_image(encode(pal, "PNG", transparency=index))
    mask = np.asarray(pal) == index
    assert (transparent.rgb[mask] == 255).all()
    np.testing.assert_array_equal(transparent.rgb[~mask], expected[~mask])


def test_16_bit_gray_is_scaled_not_clipped():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(16, axis=0).repeat(4, axis=1)
    loaded = load_image(encode(Image.fromarray(values), "PNG"))
    assert loaded.original_mode.startswith("I")
    np.testing.assert_array_equal(loaded.rgb[0, ::4, 0], [0, 1, 128, 255])


def test_32_bit_integer_in_16_bit_range_and_negative_range():
    values = np.array([[0, 65535]], dtype=np.int32).repeat(16, axis=0).repeat(8, axis=1)
    loaded = load_image(encode(Image.fromarray(values, "I"), "TIFF"))
    assert loaded.original_mode == "I"
    np.testing.assert_array_equal(loaded.rgb[0, [0, 8], 0], [0, 255])
    signed = np.array([[-1000, 0, 1000]], dtype=np.int32).repeat(16, axis=0).repeat(8, axis=1)
    stretched = load_image(encode(Image.fromarray(signed, "I"), "TIFF"))
    np.testing.assert_array_equal(stretched.rgb[0, [0, 8, 16], 0], [0, 128, 255])


def test_float_images_unit_range_and_arbitrary_range():
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32).repeat(16, axis=0).repeat(8, axis=1)
    loaded = load_image(encode(Image.fromarray(unit, "F"), "TIFF"))
    assert loaded.original_mode == "F"
    np.testing.assert_array_equal(loaded.rgb[0, [0, 8, 16], 0], [0, 128, 255])
    meters = np.array([[2.0, 6.0, 10.0]], dtype=np.float32).repeat(16, axis=0).repeat(8, axis=1)
    stretched = load_image(encode(Image.fromarray(meters, "F"), "TIFF"))
    np.testing.assert_array_equal(stretched.rgb[0, [0, 8, 16], 0], [0, 128, 255])


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # no cyan, full magenta + yellow: red
    loaded = load_image(encode(cmyk, "JPEG", quality=95))
    assert loaded.original_mode == "CMYK"
    r, g, b = loaded.rgb[16, 16].astype(int)
    assert r > 220 and g < 40 and b < 40


def test_animated_gif_and_webp_give_the_first_frame():
    frames = [Image.new("RGB", (24, 24), (255, 0, 0)), Image.new("RGB", (24, 24), (0, 0, 255))]
    for fmt, params in (("GIF", {}), ("WEBP", {"lossless": True})):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **params)
        assert Image.open(io.BytesIO(data)).n_frames == 2
        rgb = load_image(data).rgb
        assert tuple(rgb[12, 12]) == (255, 0, 0), fmt


def test_exif_orientation_is_applied():
    marked = np.zeros((30, 40, 3), np.uint8)
    marked[:10, :10] = (255, 0, 0)  # red block at the stored top-left
    data = encode(Image.fromarray(marked), "PNG", exif=exif_block(orientation=6))
    loaded = load_image(data)
    # Orientation 6: the stored image must be rotated 90° clockwise for display.
    assert loaded.rgb.shape == (40, 30, 3)
    assert tuple(loaded.rgb[2, 27]) == (255, 0, 0)
    assert tuple(loaded.rgb[37, 2]) == (0, 0, 0)


def test_exif_35mm_tag_from_a_jpeg():
    data = encode(Image.fromarray(PATTERN), "JPEG", exif=exif_block(focal_35mm=26))
    loaded = load_image(data)
    assert loaded.exif.focal_35mm == 26.0
    assert loaded.exif.make == "Google" and loaded.exif.model == "Pixel 8a"
    choice = from_exif(loaded.exif, loaded.width, loaded.height).choice
    assert choice.intrinsics.fx == pytest.approx(26 * 50 / 43.27)  # 40 x 30 -> 50 px diagonal
    assert "Google Pixel 8a" in choice.source


def test_exif_focal_length_with_focal_plane_resolution():
    data = encode(Image.new("RGB", (400, 300)), "JPEG",
                  exif=exif_block(focal_mm=4.0, x_res=250.0, y_res=250.0, unit=3, px_x=400, px_y=300))
    loaded = load_image(data)
    assert loaded.exif == ExifCamera(focal_mm=4.0, focal_plane_x_res=250.0, focal_plane_y_res=250.0,
                                     focal_plane_unit=3, make="Google", model="Pixel 8a",
                                     pixel_x_dimension=400, pixel_y_dimension=300,
                                     scale_35efl=loaded.exif.scale_35efl, note=loaded.exif.note)
    if exiftool_path():  # exiftool's scale factor from the same tags: 36 x 24 mm over a 16 x 12 mm sensor
        assert loaded.exif.scale_35efl == pytest.approx(math.hypot(36, 24) / 20.0) and loaded.exif.note is None
    else:
        assert loaded.exif.scale_35efl is None and "exiftool is not installed" in loaded.exif.note
    assert loaded.exif.focal_plane_unit_mm == 10.0
    intr = from_exif(loaded.exif, loaded.width, loaded.height).choice.intrinsics
    assert (intr.fx, intr.fy) == pytest.approx((100.0, 100.0))  # 4 mm x 25 px per mm (a 16 x 12 mm sensor)


def test_focal_plane_resolution_defaults_to_inches():
    data = encode(Image.new("RGB", (400, 300)), "JPEG", exif=exif_block(focal_mm=4.0, x_res=1270.0))
    loaded = load_image(data)
    assert loaded.exif.focal_plane_unit is None and loaded.exif.focal_plane_unit_mm == 25.4
    assert from_exif(loaded.exif, 400, 300).choice.intrinsics.fx == pytest.approx(200.0)  # 4 mm x 50 px/mm


def test_rotated_photo_swaps_width_height_and_focal_plane_axes():
    data = encode(Image.new("RGB", (400, 300)), "JPEG",
                  exif=exif_block(orientation=6, focal_35mm=26, focal_mm=4.0, x_res=50.0, y_res=40.0, unit=4,
                                  px_x=400, px_y=300))
    loaded = load_image(data)
    assert (loaded.width, loaded.height) == (300, 400)
    assert (loaded.exif.focal_plane_x_res, loaded.exif.focal_plane_y_res) == (40.0, 50.0)
    assert (loaded.exif.pixel_x_dimension, loaded.exif.pixel_y_dimension) == (300, 400)
    choice = from_exif(loaded.exif, loaded.width, loaded.height).choice
    assert choice.intrinsics.fx == pytest.approx(26 * 500 / 43.27)
    assert (choice.intrinsics.cx, choice.intrinsics.cy) == (149.5, 199.5)


def test_exif_in_png_and_webp_is_read():
    for fmt in ("PNG", "WEBP"):
        loaded = load_image(encode(Image.fromarray(PATTERN), fmt, exif=exif_block(focal_35mm=24)))
        assert loaded.exif.focal_35mm == 24.0, fmt


def test_zero_and_garbage_exif_values_are_ignored():
    data = encode(Image.new("RGB", (40, 30)), "JPEG",
                  exif=exif_block(focal_35mm=0, focal_mm=IFDRational(0, 0), x_res=IFDRational(5, 0)))
    exif = load_image(data).exif
    assert exif.focal_35mm is None and exif.focal_mm is None and exif.focal_plane_x_res is None
    assert from_exif(exif, 40, 30).choice is None


def test_no_exif_gives_empty_camera():
    assert load_image(encode(Image.fromarray(PATTERN), "PNG")).exif == ExifCamera()


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + struct.pack(">I", 0) + b"IEND"
            + struct.pack(">I", zlib.crc32(b"IEND")))


@pytest.mark.parametrize("make_data, words", [
    (lambda: b"", ["empty"]),
    (lambda: b"hello, this is a text file, not a picture\n" * 4, ["not an image", "JPEG"]),
    (lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, ["HEIC", "JPEG"]),
    (lambda: encode(Image.fromarray(PATTERN), "JPEG")[:300], ["damaged or incomplete"]),
    (lambda: encode(Image.fromarray(PATTERN), "PNG")[:120], ["damaged or incomplete"]),
    (lambda: _png_header_only(10_000, 5_000), ["50.0 megapixels", "limit is 40"]),
    (lambda: _png_header_only(30_000, 30_000), ["too large"]),
    (lambda: encode(Image.new("RGB", (10, 40)), "PNG"), ["10 x 40", "at least 16"]),
    (lambda: encode(Image.new("RGB", (1, 1)), "PNG"), ["1 x 1"]),
])
def test_bad_uploads_raise_clear_errors(make_data, words):
    with pytest.raises(ImageError) as info:
        load_image(make_data())
    for word in words:
        assert word in str(info.value)


def test_byte_and_pixel_limits_are_parameters(tmp_path):
    data = encode(Image.fromarray(PATTERN), "PNG")
    with pytest.raises(ImageError, match="MiB"):
        load_image(data, max_bytes=100)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(ImageError, match="MiB"):
        load_image(path, max_bytes=100)
    with pytest.raises(ImageError, match="megapixels"):
        load_image(data, max_pixels=1000)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ImageError, match="cannot be opened"):
        load_image(tmp_path / "nope.jpg")


def test_unsupported_but_pillow_readable_format_is_refused():
    with pytest.raises(ImageError, match="not an image this demo can read"):
        load_image(encode(Image.fromarray(PATTERN), "ICO"))
