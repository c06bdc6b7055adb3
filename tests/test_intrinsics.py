"""Intrinsics: preset focal lengths, confidence, validation messages, sidecars.
(EXIF readings and their checks: tests/test_camera.py; the mapping: test_framing.)"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from backend.intrinsics import (
    ASSUMED_FOV_PRESET,
    PIXEL_8A_PRESET,
    PRESETS,
    Intrinsics,
    IntrinsicsError,
    from_fov,
    load_sidecar,
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
