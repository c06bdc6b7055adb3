"""Network input: the crop/resize geometry (pixel centres) and the normalization values."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from backend.intrinsics import CropResize, Intrinsics, crop_resize_for, map_to_network
from backend.model_info import IMAGENET_MEAN, IMAGENET_STD
from backend.preprocess import crop_and_resize, normalize


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
def test_output_pixel_centres_sit_where_map_to_network_says(width, height, size, axis):
    crop = crop_resize_for(width, height, size)
    out = crop_and_resize(ramp_image(width, height, axis), crop).astype(np.float64)[..., 0]
    assert out.shape == (size, size)
    origin = crop.x0 if axis == 1 else crop.y0
    dst = np.arange(size)
    expected = origin + (dst + 0.5) * crop.side / size - 0.5  # the pixel-centre mapping
    # The bilinear (triangle) filter reproduces a linear ramp exactly away from the borders,
    # where Pillow renormalizes the truncated kernel.
    margin = int(np.ceil(2 * crop.side / size)) + 2
    measured = (out.mean(axis=0) if axis == 1 else out.mean(axis=1))[margin:-margin]
    inner = expected[margin:-margin]
    assert np.abs(measured - inner).max() <= 0.5 + 1e-6  # uint8 rounding only
    # Compared with the rounded prediction, the mean error is ~0: the grid is right to ~0.03 px.
    assert abs(np.mean(measured - np.floor(inner + 0.5))) < 0.03
    # The corner-aligned convention (src = x0 + dst * side / size) is visibly off:
    corner_aligned = origin + dst[margin:-margin] * crop.side / size
    assert abs(np.mean(measured - np.floor(corner_aligned + 0.5))) > 0.15


def test_crop_and_resize_is_exact_when_no_resize_is_needed():
    rgb = np.random.default_rng(0).integers(0, 256, (448, 600, 3), dtype=np.uint8)
    out = crop_and_resize(rgb, crop_resize_for(600, 448, 448))
    np.testing.assert_array_equal(out, rgb[:, 76:524])
    assert out.flags.c_contiguous


def test_crop_border_pixels_see_beyond_the_crop():
    """Resizing with Pillow's box (not crop-then-resize) keeps the filter whole at the crop edges."""
    rgb = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out = crop_and_resize(rgb, crop_resize_for(640, 480, 448))
    cropped_first = np.asarray(Image.fromarray(rgb[:, 80:560]).resize(
        (448, 448), Image.Resampling.BILINEAR, reducing_gap=None))
    assert out.dtype == np.uint8 and out.shape == (448, 448, 3)
    np.testing.assert_array_equal(out[:, 1:-1], cropped_first[:, 1:-1])
    assert not np.array_equal(out[:, 0], cropped_first[:, 0])  # left of the crop was used
    np.testing.assert_array_equal(out[0, 1:-1], cropped_first[0, 1:-1])  # nothing above: same as cropping


def test_crop_and_resize_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        crop_and_resize(np.zeros((10, 10, 3), np.float32), CropResize(0, 0, 10, 8))
    with pytest.raises(ValueError, match="does not fit"):
        crop_and_resize(np.zeros((10, 10, 3), np.uint8), CropResize(2, 0, 10, 8))


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


@pytest.mark.parametrize("point", [(1000.3, 700.7), (2016.0, 1512.0), (3000.6, 2500.2), (600.5, 300.5)])
def test_big_photo_resize_keeps_points_where_map_to_network_puts_them(point):
    """A 12 MP photo takes the fast reduce-then-resample path; a blob's centroid must still land
    where the intrinsics mapping says (what the metric back-projection relies on)."""
    width, height = 4032, 3024
    crop = crop_resize_for(width, height, 448)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    blob = np.exp(-((xx - point[0]) ** 2 + (yy - point[1]) ** 2) / (2 * 30.0 ** 2))
    image = np.repeat((blob * 255).astype(np.uint8)[..., None], 3, axis=2)
    out = crop_and_resize(image, crop)[..., 0].astype(np.float64)
    oy, ox = np.mgrid[0:448, 0:448]
    expected = map_to_network(Intrinsics(1.0, 1.0, *point), crop)
    assert abs((out * ox).sum() / out.sum() - expected.cx) < 0.02
    assert abs((out * oy).sum() / out.sum() - expected.cy) < 0.02
