"""Depth colouring: range, near/far convention, invalid pixels, colorbar, side-by-side."""
from __future__ import annotations

import numpy as np
import pytest

from backend.colormap import COLORMAPS, colorize, lut, nice_ticks, robust_range, side_by_side, with_colorbar


def gradient_depth() -> np.ndarray:
    return np.tile(np.linspace(1.0, 9.0, 200, dtype=np.float32), (120, 1))


@pytest.mark.parametrize("cmap", COLORMAPS)
def test_every_colormap_has_a_distinct_256_entry_table(cmap):
    table = lut(cmap)
    assert table.shape == (256, 3) and table.dtype == np.uint8
    assert len({tuple(row) for row in table}) > 100


def test_unknown_colormap_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="turbo"):
        lut("jet2")


def test_explicit_range_maps_ends_to_the_table_ends_near_warm():
    depth = np.array([[1.0, 5.0, 9.0, 0.5, 20.0]], np.float32)
    out = colorize(depth, "turbo", vmin=1.0, vmax=9.0)
    table = lut("turbo")
    assert tuple(out[0, 0]) == tuple(table[255])  # nearest = warm end
    assert tuple(out[0, 2]) == tuple(table[0])  # farthest = cold end
    assert tuple(out[0, 1]) == tuple(table[128])
    assert tuple(out[0, 3]) == tuple(table[255]) and tuple(out[0, 4]) == tuple(table[0])  # clipped
    near, far = out[0, 0].astype(int), out[0, 2].astype(int)
    assert near[0] > near[2] and far[2] > far[0]  # turbo: red near, blue far


def test_gray_is_white_near_and_black_far():
    out = colorize(np.array([[1.0, 2.0]], np.float32), "gray", vmin=1.0, vmax=2.0)
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (0, 0, 0)


def test_invalid_depths_are_black():
    depth = gradient_depth()
    depth[0, :4] = [np.nan, np.inf, 0.0, -2.0]
    out = colorize(depth, "viridis")
    assert (out[0, :4] == 0).all()
    assert (out[1:].sum(axis=-1) > 0).all()  # viridis never reaches black


def test_default_range_is_robust_to_outliers():
    depth = gradient_depth()
    depth[0, 0] = 1000.0  # one sky pixel
    lo, hi = robust_range(depth)
    assert 1.0 <= lo < 1.3 and 8.7 < hi <= 9.0
    out = colorize(depth)
    assert len(np.unique(out.reshape(-1, 3), axis=0)) > 150  # the gradient still uses the whole table


def test_flat_and_empty_depth_get_a_usable_range():
    lo, hi = robust_range(np.full((8, 8), 3.0, np.float32))
    assert lo < 3.0 < hi
    assert robust_range(np.full((8, 8), np.nan, np.float32)) == (0.0, 1.0)
    assert colorize(np.full((8, 8), 3.0, np.float32)).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="vmin < vmax"):
        colorize(gradient_depth(), vmin=5.0, vmax=5.0)


def test_nice_ticks():
    assert nice_ticks(1.23, 8.9) == [2.0, 4.0, 6.0, 8.0]
    assert nice_ticks(0.8, 6.3) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(10.0, 95.0) == [20.0, 40.0, 60.0, 80.0]
    ticks = nice_ticks(0.31, 0.47)
    assert all(0.31 <= t <= 0.47 for t in ticks) and len(ticks) >= 3


def test_colorbar_adds_a_labelled_bar_of_the_same_height():
    depth = gradient_depth()
    colored = colorize(depth, "turbo", 1.0, 9.0)
    out = with_colorbar(colored, 1.0, 9.0, "turbo")
    assert out.dtype == np.uint8 and out.shape[0] == 120 and out.shape[1] > 200 + 20
    np.testing.assert_array_equal(out[:, :200], colored)
    panel = out[:, 200:].astype(int)
    assert len(np.unique(panel.reshape(-1, 3), axis=0)) > 50  # the bar itself
    table = lut("turbo").astype(int)
    column = panel[:, 8]  # inside the bar, left of the tick marks
    bar = column[(column.sum(axis=-1) > 0) & (column.sum(axis=-1) < 765)]
    np.testing.assert_array_equal(bar[0], table[0])  # far (cold) on top
    np.testing.assert_array_equal(bar[-1], table[255])  # near (warm) at the bottom
    text_area = panel[:, panel.shape[1] // 2:]
    assert (text_area.sum(axis=-1) < 200).sum() > 20  # dark label pixels were drawn


def test_colorbar_labels_change_with_the_range():
    colored = colorize(gradient_depth(), "turbo", 1.0, 9.0)
    a = with_colorbar(colored, 1.0, 9.0)
    b = with_colorbar(colored, 10.0, 90.0)
    assert not np.array_equal(a, b)


def test_side_by_side_matches_heights():
    left = np.zeros((100, 60, 3), np.uint8)
    right = np.full((50, 40, 3), 200, np.uint8)
    out = side_by_side(left, right)
    assert out.shape == (100, 60 + 80, 3)
    assert (out[:, 60:] == 200).all()
    with pytest.raises(ValueError, match="right"):
        side_by_side(left, np.zeros((10, 10), np.uint8))
