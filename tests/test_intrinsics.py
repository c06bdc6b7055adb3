"""Intrinsics: preset focal lengths, confidence, validation messages, crop mapping, sidecars.
(EXIF readings and their checks: tests/test_camera.py.)"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from backend.intrinsics import (
    ASSUMED_FOV_PRESET,
    PIXEL_8A_PRESET,
    PRESETS,
    CropResize,
    Intrinsics,
    IntrinsicsError,
    crop_resize_for,
    from_fov,
    load_sidecar,
    map_to_network,
    validate,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_pixel_8a_preset_matches_the_product_note():
    choice = PRESETS[PIXEL_8A_PRESET](4080, 3072)
    assert choice.intrinsics.fx == pytest.approx(3069, abs=0.5)
    assert choice.intrinsics.fx == choice.intrinsics.fy
    assert "26 mm" in choice.source
    assert choice.confidence == "assumed"


def test_assumed_fov_preset_states_and_obeys_its_assumption():
    assert "60°" in ASSUMED_FOV_PRESET
    choice = PRESETS[ASSUMED_FOV_PRESET](1000, 800)
    hfov = math.degrees(2 * math.atan(500 / choice.intrinsics.fx))
    assert hfov == pytest.approx(60.0)
    assert "60°" in choice.source and "guess" in choice.source
    assert choice.confidence == "assumed" and choice.reason


def test_from_fov_rejects_nonsense():
    with pytest.raises(IntrinsicsError, match="190"):
        from_fov(640, 480, 190.0)


def test_validate_accepts_and_normalizes_to_floats():
    out = validate(Intrinsics(500, 500, 320, 240), 640, 480)
    assert out == Intrinsics(500.0, 500.0, 320.0, 240.0)
    assert all(type(v) is float for v in (out.fx, out.fy, out.cx, out.cy))


@pytest.mark.parametrize("intr, words", [
    (Intrinsics(float("nan"), 500, 320, 240), ["fx", "finite"]),
    (Intrinsics(500, float("inf"), 320, 240), ["fy", "finite"]),
    (Intrinsics(-500, 500, 320, 240), ["fx", "positive", "-500"]),
    (Intrinsics(0, 0, 320, 240), ["fx", "positive"]),
    (Intrinsics(4.2, 4.2, 320, 240), ["fx = 4.2", "millimetres", "40 to 80000"]),
    (Intrinsics(1e7, 1e7, 320, 240), ["fx", "implausible"]),
    (Intrinsics(500, 500, 700, 240), ["cx = 700", "outside", "0 to 639"]),
    (Intrinsics(500, 500, 320, -3), ["cy = -3", "outside"]),
    (Intrinsics(500, 50, 320, 240), ["fx / fy", "10.00"]),
    (Intrinsics("abc", 500, 320, 240), ["fx", "number"]),
])
def test_validate_messages_name_the_problem(intr, words):
    with pytest.raises(IntrinsicsError) as info:
        validate(intr, 640, 480)
    for word in words:
        assert word in str(info.value)


def test_crop_resize_for_landscape_portrait_and_odd_margins():
    assert crop_resize_for(640, 480, 448) == CropResize(80, 0, 480, 448)
    assert crop_resize_for(480, 640, 448) == CropResize(0, 80, 480, 448)
    assert crop_resize_for(641, 480, 448) == CropResize(80, 0, 480, 448)
    assert crop_resize_for(448, 448, 448).scale == 1.0
    assert crop_resize_for(640, 480, 448).scale == pytest.approx(448 / 480)


def test_map_to_network_scales_focal_and_maps_pixel_centres():
    crop = crop_resize_for(640, 480, 448)
    net = map_to_network(Intrinsics(500, 520, 330.0, 250.0), crop)
    k = 448 / 480
    assert net.fx == pytest.approx(500 * k)  # the product's canonical example: fx448 = 500 x 448 / 480
    assert net.fy == pytest.approx(520 * k)
    assert net.cx == pytest.approx((330.0 - 80 + 0.5) * k - 0.5)
    assert net.cy == pytest.approx((250.0 + 0.5) * k - 0.5)


def test_image_centre_maps_to_network_centre():
    for width, height in [(640, 480), (4080, 3072), (741, 500), (300, 451)]:
        choice = PRESETS[PIXEL_8A_PRESET](width, height)
        net = map_to_network(choice.intrinsics, crop_resize_for(width, height, 448))
        # Exact when the crop margin is even; off by half an original pixel when it is odd.
        tolerance = 0.5 * 448 / min(width, height) + 1e-9
        assert abs(net.cx - 223.5) <= tolerance and abs(net.cy - 223.5) <= tolerance


def test_sidecar_of_the_motorcycle_example():
    choice = load_sidecar(EXAMPLES / "motorcycle.png")
    assert choice.intrinsics == Intrinsics(994.978, 994.978, 311.193, 254.877)
    assert "Middlebury" in choice.source
    assert choice.confidence == "calibrated" and "json" in choice.reason


def test_no_sidecar_gives_none(tmp_path):
    assert load_sidecar(tmp_path / "photo.jpg") is None


def test_malformed_sidecars_raise_clear_errors(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(IntrinsicsError, match="a.json"):
        load_sidecar(tmp_path / "a.png")
    (tmp_path / "b.json").write_text(json.dumps({"fx": 500, "fy": 500, "cx": 320}))
    with pytest.raises(IntrinsicsError, match="fx, fy, cx, cy"):
        load_sidecar(tmp_path / "b.png")
    (tmp_path / "c.json").write_text(json.dumps({"fx": 500, "fy": 500, "cx": 900, "cy": 240,
                                                 "width": 640, "height": 480}))
    with pytest.raises(IntrinsicsError, match="cx = 900"):
        load_sidecar(tmp_path / "c.png")
