"""Intrinsics: EXIF and preset focal lengths, validation messages, sidecars (the mapping: test_framing)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from backend.imageio import ExifCamera
from backend.intrinsics import (
    ASSUMED_FOV_PRESET,
    PIXEL_8A_PRESET,
    PRESETS,
    Intrinsics,
    IntrinsicsError,
    from_exif,
    from_fov,
    load_sidecar,
    validate,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_35mm_equivalent_uses_the_image_diagonal():
    # 400 x 300 has a 500 px diagonal: 26 mm on a 43.27 mm diagonal -> 26 * 500 / 43.27 px.
    choice = from_exif(ExifCamera(focal_35mm=26.0), 400, 300)
    assert choice is not None
    expected = 26.0 * 500.0 / 43.27
    assert choice.intrinsics == Intrinsics(expected, expected, 199.5, 149.5)
    assert "35 mm" in choice.source and "26" in choice.source and f"{expected:.0f} px" in choice.source


def test_35mm_focal_is_orientation_invariant_and_centre_follows_the_upright_image():
    landscape = from_exif(ExifCamera(focal_35mm=26.0), 4080, 3072).intrinsics
    portrait = from_exif(ExifCamera(focal_35mm=26.0), 3072, 4080).intrinsics
    assert landscape.fx == pytest.approx(portrait.fx)
    assert (portrait.cx, portrait.cy) == (1535.5, 2039.5)


@pytest.mark.parametrize("unit_mm, res_per_unit", [(1.0, 250.0), (10.0, 2500.0), (25.4, 6350.0), (0.001, 0.25)])
def test_focal_length_times_focal_plane_resolution_in_every_unit(unit_mm, res_per_unit):
    exif = ExifCamera(focal_mm=4.0, focal_plane_x_res=res_per_unit, focal_plane_y_res=res_per_unit,
                      focal_plane_unit_mm=unit_mm)
    choice = from_exif(exif, 2000, 1500)
    assert choice.intrinsics.fx == pytest.approx(1000.0)  # 4 mm x 250 px/mm
    assert choice.intrinsics.fy == pytest.approx(1000.0)
    assert "4 mm" in choice.source


def test_35mm_tag_wins_over_focal_plane():
    exif = ExifCamera(focal_35mm=26.0, focal_mm=4.0, focal_plane_x_res=250.0, focal_plane_unit_mm=1.0)
    assert from_exif(exif, 400, 300).intrinsics.fx == pytest.approx(26.0 * 500 / 43.27)


def test_focal_plane_resolution_is_rescaled_when_the_image_was_downsized():
    # Camera wrote a 4000 px wide image; the file we got is 1000 px wide.
    exif = ExifCamera(focal_mm=4.0, focal_plane_x_res=250.0, focal_plane_y_res=250.0, focal_plane_unit_mm=1.0,
                      pixel_x_dimension=4000, pixel_y_dimension=3000)
    choice = from_exif(exif, 1000, 750)
    assert choice.intrinsics.fx == pytest.approx(250.0)
    assert choice.intrinsics.fy == pytest.approx(250.0)
    assert "rescaled" in choice.source


def test_non_square_focal_plane_gives_different_fx_fy():
    exif = ExifCamera(focal_mm=4.0, focal_plane_x_res=250.0, focal_plane_y_res=200.0, focal_plane_unit_mm=1.0)
    intr = from_exif(exif, 2000, 1500).intrinsics
    assert (intr.fx, intr.fy) == pytest.approx((1000.0, 800.0))


def test_missing_or_implausible_exif_gives_none():
    assert from_exif(ExifCamera(), 400, 300) is None
    assert from_exif(ExifCamera(focal_mm=4.0), 400, 300) is None  # no sensor size: cannot convert
    assert from_exif(ExifCamera(focal_35mm=0.5), 4000, 3000) is None  # 58 px for a 5000 px diagonal


def test_pixel_8a_preset_matches_the_product_note():
    choice = PRESETS[PIXEL_8A_PRESET](4080, 3072)
    assert choice.intrinsics.fx == pytest.approx(3069, abs=0.5)
    assert choice.intrinsics.fx == choice.intrinsics.fy
    assert "26 mm" in choice.source


def test_assumed_fov_preset_states_and_obeys_its_assumption():
    assert "60°" in ASSUMED_FOV_PRESET
    choice = PRESETS[ASSUMED_FOV_PRESET](1000, 800)
    hfov = math.degrees(2 * math.atan(500 / choice.intrinsics.fx))
    assert hfov == pytest.approx(60.0)
    assert "60°" in choice.source and "guess" in choice.source


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


def test_sidecar_of_the_motorcycle_example():
    choice = load_sidecar(EXAMPLES / "motorcycle.png")
    assert choice.intrinsics == Intrinsics(994.978, 994.978, 311.193, 254.877)
    assert "Middlebury" in choice.source


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
