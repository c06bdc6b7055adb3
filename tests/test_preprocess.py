"""Network input: the framing geometry (pixel centres, padding) and the normalization values."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from backend.framing import CENTRE_SQUARE, FULL_PHOTO, framing_for
from backend.intrinsics import Intrinsics
from backend.model_info import IMAGENET_MEAN, IMAGENET_STD
from backend.preprocess import frame_photo, normalize, pad_rgb


def ramp_image(width: int, height: int, axis: int) -> np.ndarray:
    """Pixel value = its own x (axis 1) or y (axis 0) coordinate: a resize reveals its sampling grid."""
    coords = np.arange(width if axis == 1 else height, dtype=np.uint8)
    plane = np.broadcast_to(coords[None, :] if axis == 1 else coords[:, None], (height, width))
    return np.repeat(plane[:, :, None], 3, axis=2).copy()


@pytest.mark.parametrize("width, height, size", [
    (256, 200, 64),  # shrink x3.125 (antialiased)
    (256, 200, 448),  # enlarge x2.24
    (200, 256, 64),  # portrait: crop along y
    (256, 240, 100),
])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("mode", [CENTRE_SQUARE, FULL_PHOTO])
def test_output_pixel_centres_sit_where_the_framing_says(width, height, size, axis, mode):
    framing = framing_for(width, height, size, mode)
    out = frame_photo(ramp_image(width, height, axis), framing).astype(np.float64)[..., 0]
    assert out.shape == (size, size)
    origin, extent, start, count = ((framing.x0, framing.width, framing.left, framing.content_width) if axis == 1
                                    else (framing.y0, framing.height, framing.top, framing.content_height))
    out = out[framing.content]
    dst = np.arange(count)
    expected = origin + (dst + 0.5) * extent / count - 0.5  # the pixel-centre mapping, written out by hand
    # The bilinear (triangle) filter reproduces a linear ramp exactly away from the borders,
    # where Pillow renormalizes the truncated kernel.
    margin = int(np.ceil(2 * extent / count)) + 2
    measured = (out.mean(axis=0) if axis == 1 else out.mean(axis=1))[margin:-margin]
    inner = expected[margin:-margin]
    assert np.abs(measured - inner).max() <= 0.5 + 1e-6  # uint8 rounding only
    # Compared with the rounded prediction, the mean error is ~0: the grid is right to ~0.03 px.
    assert abs(np.mean(measured - np.floor(inner + 0.5))) < 0.03
    # The corner-aligned convention (src = x0 + dst * side / size) is visibly off, by about
    # its shift of 0.5 * (1 - extent / count) source pixels (0.21 px at the mildest, x1.75):
    corner_aligned = origin + dst[margin:-margin] * extent / count
    shift = 0.5 * abs(1 - extent / count)
    assert abs(np.mean(measured - np.floor(corner_aligned + 0.5))) > 0.5 * shift
    # ... and the framing's own mapping says the same as the hand-written formula.
    mapped = framing.photo_to_network(expected, expected)[0 if axis == 1 else 1] - start
    np.testing.assert_allclose(mapped, dst, atol=1e-9)


def test_centre_square_is_exact_when_no_resize_is_needed():
    rgb = np.random.default_rng(0).integers(0, 256, (448, 600, 3), dtype=np.uint8)
    out = frame_photo(rgb, framing_for(600, 448, 448, CENTRE_SQUARE))
    np.testing.assert_array_equal(out, rgb[:, 76:524])
    assert out.flags.c_contiguous


def test_full_photo_letterbox_pads_with_the_rounded_normalization_mean():
    # Upstream hubconf.py: cv2.copyMakeBorder(uint8 image, value=[123.675, 116.28, 103.53]);
    # OpenCV rounds the value to the image type: 124, 116, 104.
    pad = pad_rgb(IMAGENET_MEAN)
    assert pad == (124, 116, 104)
    rgb = np.random.default_rng(2).integers(0, 256, (300, 400, 3), dtype=np.uint8)  # 4:3 landscape
    framing = framing_for(400, 300, 448, FULL_PHOTO)
    out = frame_photo(rgb, framing, pad)
    # 400 x 300 -> 448 x 336, 112 rows of padding split 56 above and 56 below (upstream: pad // 2 first).
    assert (framing.left, framing.top, framing.content_width, framing.content_height) == (0, 56, 448, 336)
    assert (out[:56] == pad).all() and (out[56 + 336:] == pad).all()
    expected = np.asarray(Image.fromarray(rgb).resize((448, 336), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out[56:392], expected)
    # After normalization the padding is within 0.01 of zero in every channel.
    padding = normalize(out, IMAGENET_MEAN, IMAGENET_STD)[0, :, :56]
    assert np.abs(padding).max() < 0.01
    # Portrait with an odd amount of padding: the extra column goes right, as upstream.
    portrait = framing_for(300, 451, 448, FULL_PHOTO)
    assert (portrait.content_width, portrait.content_height) == (298, 448)  # 300 * 448 / 451 = 297.9
    assert (portrait.left, portrait.top) == (75, 0)


def test_crop_border_pixels_see_beyond_the_crop():
    """Resizing with Pillow's box (not crop-then-resize) keeps the filter whole at the crop edges."""
    rgb = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out = frame_photo(rgb, framing_for(640, 480, 448, CENTRE_SQUARE))
    cropped_first = np.asarray(Image.fromarray(rgb[:, 80:560]).resize(
        (448, 448), Image.Resampling.BILINEAR, reducing_gap=None))
    assert out.dtype == np.uint8 and out.shape == (448, 448, 3)
    np.testing.assert_array_equal(out[:, 1:-1], cropped_first[:, 1:-1])
    assert not np.array_equal(out[:, 0], cropped_first[:, 0])  # left of the crop was used
    np.testing.assert_array_equal(out[0, 1:-1], cropped_first[0, 1:-1])  # nothing above: same as cropping


def test_frame_photo_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        frame_photo(np.zeros((10, 10, 3), np.float32), framing_for(10, 10, 8, CENTRE_SQUARE))
    with pytest.raises(ValueError, match="does not fit"):
        frame_photo(np.zeros((10, 10, 3), np.uint8), framing_for(12, 10, 8, CENTRE_SQUARE))
    with pytest.raises(ValueError, match="0..255"):
        pad_rgb((0.0, 300.0, 1.0))


def test_normalize_is_bit_identical_to_the_golden_network_input(golden_dir):
    rgb = np.asarray(Image.open(golden_dir / "input_rgb_448.png").convert("RGB"))
    golden = np.load(golden_dir / "input_nchw_f32.npy")
    out = normalize(rgb, IMAGENET_MEAN, IMAGENET_STD)
    assert out.dtype == np.float32 and out.shape == (1, 3, 448, 448) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, golden)


def test_normalize_matches_the_direct_formula_for_every_value():
    rgb = np.stack(np.meshgrid(np.arange(256), np.arange(256)[::-1], indexing="xy"), axis=-1)
    rgb = np.concatenate([rgb, rgb[..., :1]], axis=-1).astype(np.uint8)
    mean, std = (10.0, 100.5, 250.25), (1.5, 60.0, 0.75)
    direct = ((rgb.astype(np.float32) - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)[None]
    np.testing.assert_array_equal(normalize(rgb, mean, std), direct)


def test_normalize_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        normalize(np.zeros((4, 4, 3), np.float32), IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match="positive"):
        normalize(np.zeros((4, 4, 3), np.uint8), IMAGENET_MEAN, (1.0, 0.0, 1.0))


@pytest.mark.parametrize("mode", [CENTRE_SQUARE, FULL_PHOTO])
@pytest.mark.parametrize("point", [(1000.3, 700.7), (2016.0, 1512.0), (3000.6, 2500.2), (600.5, 300.5)])
def test_big_photo_resize_keeps_points_where_the_framing_puts_them(point, mode):
    """A 12 MP photo takes the fast reduce-then-resample path; a blob's centroid must still land
    where the intrinsics mapping says (what the metric back-projection relies on)."""
    width, height = 4032, 3024
    framing = framing_for(width, height, 448, mode)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    blob = np.exp(-((xx - point[0]) ** 2 + (yy - point[1]) ** 2) / (2 * 30.0 ** 2))
    image = np.repeat((blob * 255).astype(np.uint8)[..., None], 3, axis=2)
    out = frame_photo(image, framing)[..., 0].astype(np.float64)
    oy, ox = np.mgrid[0:448, 0:448]
    expected = framing.network_intrinsics(Intrinsics(1.0, 1.0, *point))
    assert abs((out * ox).sum() / out.sum() - expected.cx) < 0.02
    assert abs((out * oy).sum() / out.sum() - expected.cy) < 0.02
