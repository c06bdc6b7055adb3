"""EXIF readings and their consistency checks (backend.camera), on EXIF facts given directly.

Expected focals are worked by hand in each test: 35 mm-equivalent f35 gives
f35 x image diagonal / 43.27 px; focal f with R px per unit of u mm gives f x R / u px at the
recorded size.
"""
from __future__ import annotations

import math

import pytest

from backend.camera import from_exif, recorded_frame
from backend.exif import ExifCamera
from backend.intrinsics import Intrinsics

# A 4:3 compact: 8 x 6 mm sensor, 4000 x 3000 px -> 500 px per mm; FocalPlaneXResolution in cm = 5000.
COMPACT = dict(focal_mm=6.0, focal_plane_x_res=5000.0, focal_plane_y_res=5000.0, focal_plane_unit=3,
               pixel_x_dimension=4000, pixel_y_dimension=3000)


def choose(width: int, height: int, **facts):
    return from_exif(ExifCamera(**facts), width, height)


def test_35mm_equivalent_uses_the_image_diagonal():
    # 400 x 300 has a 500 px diagonal: 26 mm on a 43.27 mm diagonal -> 26 * 500 / 43.27 px.
    reading = choose(400, 300, focal_35mm=26.0, pixel_x_dimension=400, pixel_y_dimension=300)
    expected = 26.0 * 500.0 / 43.27
    assert reading.choice.intrinsics == Intrinsics(expected, expected, 199.5, 149.5)
    assert "35 mm" in reading.choice.source and f"{expected:.0f} px" in reading.choice.source
    assert reading.choice.confidence == "exif" and "matches this photo" in reading.choice.reason


def test_35mm_without_image_size_is_uncertain_because_a_crop_cannot_be_ruled_out():
    choice = choose(4080, 3072, focal_35mm=26.0).choice
    assert choice.intrinsics.fx == pytest.approx(26 * math.hypot(4080, 3072) / 43.27)
    assert choice.confidence == "exif-uncertain" and "cropped" in choice.reason


def test_focal_plane_reading_as_recorded_and_resized():
    as_recorded = choose(4000, 3000, **COMPACT).choice
    assert as_recorded.intrinsics.fx == pytest.approx(6.0 * 500)  # 6 mm x 500 px/mm
    assert as_recorded.confidence == "exif" and "8.0 × 6.0 mm sensor" in as_recorded.source
    resized = choose(1000, 750, **COMPACT).choice
    assert resized.intrinsics.fx == pytest.approx(6.0 * 500 / 4)
    assert resized.confidence == "exif" and "resized" in resized.reason


def test_fault_a_resolution_left_from_the_original_is_rejected_with_its_reason():
    # A 100 x 75 thumbnail whose EXIF size was rewritten: 100 px at 500 px/mm is a 0.2 mm sensor.
    reading = choose(100, 75, **{**COMPACT, "pixel_x_dimension": 100, "pixel_y_dimension": 75})
    assert reading.choice is None
    assert "inconsistent with this image size" in reading.fallback_reason() and "0.25 mm" in reading.fallback_reason()
    dropped = choose(100, 75, **{**COMPACT, "pixel_x_dimension": None, "pixel_y_dimension": None})
    assert dropped.choice is None


def test_fault_b_pixels_rotated_by_software_use_the_swapped_reading():
    # Tags for a 4000 x 3000 landscape frame, pixels now 750 x 1000 portrait (Orientation 1).
    choice = choose(750, 1000, **COMPACT).choice
    assert (choice.intrinsics.fx, choice.intrinsics.fy) == pytest.approx((6.0 * 500 / 4, 6.0 * 500 / 4))
    assert choice.confidence == "exif" and "rotated by software" in choice.reason


def test_fault_b_non_square_resolutions_use_the_diagonal_and_say_so():
    # x: 500 px/mm, y: 400 px/mm -> 8 x 7.5 mm, diagonal 10.966 mm over the 5000 px frame diagonal.
    choice = choose(4000, 3000, **{**COMPACT, "focal_plane_y_res": 4000.0}).choice
    expected = 6.0 * 5000 / math.hypot(8.0, 7.5)
    assert (choice.intrinsics.fx, choice.intrinsics.fy) == pytest.approx((expected, expected))
    assert choice.confidence == "exif-uncertain" and "square pixels" in choice.reason


def test_fault_c_resolution_disagreeing_with_the_35mm_tag_lowers_confidence():
    # The 35 mm tag implies COMPACT's 10 mm diagonal; 40000 px/cm gives a 1 mm sensor (10x off).
    facts = {**COMPACT, "focal_35mm": 6.0 * 43.27 / 10.0, "focal_plane_x_res": 40000.0, "focal_plane_y_res": 40000.0}
    assert choose(4000, 3000, **facts).choice.confidence == "exif"  # 1 mm sensor: implausible, ignored
    facts |= {"focal_plane_x_res": 2500.0, "focal_plane_y_res": 2500.0}  # a plausible 20 mm diagonal
    choice = choose(4000, 3000, **facts).choice
    assert choice.intrinsics.fx == pytest.approx(facts["focal_35mm"] * 5000 / 43.27)  # the 35 mm tag wins
    assert choice.confidence == "exif-uncertain" and "focal-plane tags a 20.0 mm" in choice.reason


def test_fault_d_maker_note_scale_factor_is_used_when_nothing_else_is_there():
    # exiftool: scale factor 2.0 (Four Thirds); 15 mm -> 30 mm equivalent on a 1000 x 750 photo.
    facts = dict(focal_mm=15.0, scale_35efl=2.0, pixel_x_dimension=4000, pixel_y_dimension=3000)
    choice = choose(1000, 750, **facts).choice
    assert choice.intrinsics.fx == pytest.approx(30.0 * 1250 / 43.27)
    assert choice.confidence == "exif" and "maker notes" in choice.source
    note = "exiftool is not installed, so ..."
    fallback = choose(1000, 750, focal_mm=15.0, note=note)
    assert fallback.choice is None and note in fallback.fallback_reason()


def test_scale_factor_that_only_repeats_a_rejected_resolution_is_not_used():
    # exiftool falls back to the focal-plane tags itself: 100 x 75 px at 500 px/mm -> 0.25 mm diagonal.
    repeated = 43.27 / math.hypot(0.2, 0.15)
    reading = choose(100, 75, **{**COMPACT, "pixel_x_dimension": 100, "pixel_y_dimension": 75,
                                 "scale_35efl": repeated})
    assert reading.choice is None


def test_scale_factor_contradicting_plausible_focal_plane_tags_is_uncertain():
    # Maker notes say a 10 mm diagonal (factor 4.327), focal-plane tags over the EXIF size a 5 mm one.
    facts = {**COMPACT, "pixel_x_dimension": 2000, "pixel_y_dimension": 1500, "scale_35efl": 4.327}
    choice = choose(2000, 1500, **facts).choice
    assert choice.confidence == "exif-uncertain" and "rewritten" in choice.reason
    assert choice.intrinsics.fx == pytest.approx(6.0 * 4.327 * 2500 / 43.27)  # maker notes preferred


def test_fault_e_unit_none_is_read_as_inches_and_flagged():
    # 12700 px per "no unit", read as per inch = 500 px/mm, as in COMPACT.
    choice = choose(4000, 3000, **{**COMPACT, "focal_plane_x_res": 12700.0, "focal_plane_y_res": 12700.0,
                                   "focal_plane_unit": 1}).choice
    assert choice.intrinsics.fx == pytest.approx(3000.0)
    assert choice.confidence == "exif-uncertain" and "no unit" in choice.reason


def test_fault_f_cropped_photo_uses_the_original_frame():
    # 4:3 frame 4000 x 3000 cropped to 16:9 and resized to 1600 x 900: width kept, scale 0.4.
    facts = dict(focal_35mm=26.0, focal_mm=4.8, pixel_x_dimension=4000, pixel_y_dimension=3000)
    choice = choose(1600, 900, **facts).choice
    assert choice.intrinsics.fx == pytest.approx(26.0 * 5000 / 43.27 * 0.4)
    assert choice.confidence == "exif-uncertain" and "cropped" in choice.reason
    frame = recorded_frame(ExifCamera(**facts), 1600, 900)
    assert frame.kind == "cropped" and frame.scale == pytest.approx(0.4)


def test_digital_zoom_ratio_makes_the_focal_plane_reading_uncertain():
    # Like exiftool, the EXIF DigitalZoomRatio is not applied (cameras differ on whether the
    # focal-plane resolution already includes it), but the doubt is stated.
    choice = choose(4000, 3000, **COMPACT, digital_zoom=2.0).choice
    assert choice.intrinsics.fx == pytest.approx(3000.0)
    assert choice.confidence == "exif-uncertain" and "2× digital zoom" in choice.reason


def test_impossible_crop_factor_is_rejected():
    reading = choose(4000, 3000, focal_35mm=26.0, focal_mm=200.0, pixel_x_dimension=4000, pixel_y_dimension=3000)
    assert reading.choice is None and "crop factor" in reading.fallback_reason()


def test_no_focal_data_gives_no_choice():
    assert choose(400, 300).choice is None
    assert choose(400, 300).fallback_reason() == "no focal length in the photo's EXIF"
    assert "without a 35 mm-equivalent or sensor size" in choose(400, 300, focal_mm=4.0).fallback_reason()


def test_focal_plane_resolution_that_includes_the_digital_zoom():
    # Canon writes the resolution of the digitally zoomed centre: a 5x zoom on COMPACT's 8 x 6 mm
    # sensor gives 2500 px/mm over 4000 px, a 1.6 x 1.2 mm "sensor" (2 mm diagonal: no real sensor;
    # 10 mm with the zoom).
    facts = {**COMPACT, "focal_plane_x_res": 25000.0, "focal_plane_y_res": 25000.0, "digital_zoom": 5.0}
    choice = choose(4000, 3000, **facts).choice
    assert choice.intrinsics.fx == pytest.approx(6.0 * 2500)  # the tags as written, zoom included
    assert choice.confidence == "exif-uncertain" and "already includes the digital zoom" in choice.reason
    assert choose(4000, 3000, **{**facts, "digital_zoom": 1.0}).choice is None  # no zoom: no such sensor
