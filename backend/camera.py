"""Intrinsics from EXIF, trusted only when the tags are consistent with this image.

Three readings of the focal length in pixels, in order of preference:
1. FocalLengthIn35mmFormat (what phones write): the 36 x 24 mm frame's 43.27 mm diagonal
   maps to the image diagonal, so it survives resizing and rotation, but not cropping.
2. FocalLength x FocalPlaneX/YResolution: resolution is per pixel of the frame the camera
   recorded (ExifImageWidth/Height), so it is rescaled to this file's size.
3. FocalLength x exiftool's ScaleFactor35efl, where exiftool knows the sensor from maker
   notes (Olympus FocalPlaneDiagonal, Canon sensor sizes and Canon's digital zoom).
Checks (each a kind of fault seen in real files, see tests/data/README.md):
- the recorded frame (EXIF pixel size, upright) against this image: same aspect = resized
  (rescale), swapped aspect = pixels rotated by software while the tags stayed (use the
  swapped reading), other aspect = cropped after capture (the 35 mm-equivalent describes
  the original frame; the crop is assumed to keep the side that shrank least), missing =
  the check cannot run;
- the sensor the focal-plane tags imply must be a real camera's (3 to 70 mm diagonal), have
  square pixels (x and y resolution within 3 %) and agree within 5 % with the
  35 mm-equivalent scale when both exist;
- exiftool's scale factor counts as independent knowledge only where it differs from the one
  the focal-plane tags give, which exiftool itself falls back to (so a rejected resolution
  cannot come back through it).
A reading that passes every check is labelled "exif"; one that is usable but whose check
could not run or disagrees is "exif-uncertain"; rejected readings fall back to the next one
and finally to the assumed field of view, with the reason in the choice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from backend.exif import ExifCamera
from backend.intrinsics import (FULL_FRAME_DIAGONAL_MM, Confidence, Intrinsics, IntrinsicsChoice, IntrinsicsError,
                                centered, validate)

SENSOR_DIAGONAL_MM = (3.0, 70.0)  # 1/4" phone sensors (4.5 mm) to 54 x 40 mm medium format (67 mm)
CROP_FACTOR_RANGE = (0.5, 15.0)  # 43.27 mm / sensor diagonal for the sensors above, with margin
SQUARE_PIXEL_TOLERANCE = 0.03  # |x_res / y_res - 1|
SAME_ASPECT_TOLERANCE = 0.02  # relative, plus one pixel of rounding from a resize
SCALE_AGREEMENT = 0.05  # 35 mm-equivalent vs focal-plane sensor diagonal (35 mm tags are whole mm)
SAME_SCALE = 0.01  # exiftool's scale factor taken from the focal-plane tags themselves
UNIT_NAMES = {1: "inch (unit 1, 'none', read as inches as exiftool does)", 2: "inch", 3: "cm", 4: "mm", 5: "µm"}

FrameKind = Literal["unknown", "as recorded", "resized", "rotated", "cropped"]


@dataclass(frozen=True)
class Frame:
    """The frame the camera recorded, upright, and how this image relates to it."""

    width: float  # recorded pixels (this image's when the EXIF size is missing)
    height: float
    scale: float  # this image's pixels per recorded pixel
    kind: FrameKind
    note: str  # one clause for the reason


@dataclass(frozen=True)
class Sensor:
    """What the focal-plane tags say about the sensor, in mm per recorded pixel."""

    pitch_x: float
    pitch_y: float
    diagonal_mm: float
    text: str  # e.g. "6.2 × 4.6 mm sensor"
    problem: str | None  # why it cannot be a real camera's sensor
    zoom_included: bool = False  # only the digitally zoomed centre of a real sensor is plausible


@dataclass(frozen=True)
class ExifReading:
    """The best EXIF choice (None when no reading is usable) and why others were rejected."""

    choice: IntrinsicsChoice | None
    rejected: tuple[str, ...]

    def fallback_reason(self) -> str:
        """One line for the choice that replaces a missing EXIF reading."""
        return "; ".join(self.rejected) or "no focal length in the photo's EXIF"


def from_exif(exif: ExifCamera, width: int, height: int) -> ExifReading:
    """Check the EXIF focal facts against the upright width x height image and choose."""
    frame = recorded_frame(exif, width, height)
    sensor = focal_plane_sensor(exif, frame)
    camera = f" ({exif.camera_name})" if exif.camera_name else ""
    conflict = _scale_conflict(exif, sensor)
    readings = [_from_35mm(exif, frame, sensor, width, height, camera),
                _from_scale_factor(exif, frame, sensor, conflict, width, height, camera),
                _from_focal_plane(exif, frame, sensor, conflict, width, height, camera)]
    choices = [r for r in readings if isinstance(r, IntrinsicsChoice)]
    rejected = tuple(r for r in readings if isinstance(r, str))
    for level in ("exif", "exif-uncertain"):
        for choice in choices:
            if choice.confidence == level:
                return ExifReading(choice, rejected)
    if not rejected and exif.focal_mm:
        rejected = (f"EXIF focal length {exif.focal_mm:g} mm without a 35 mm-equivalent or sensor size; "
                    f"{exif.note or 'exiftool found none in maker notes either'}",)
    return ExifReading(None, rejected)


def recorded_frame(exif: ExifCamera, width: int, height: int) -> Frame:
    """Compare the EXIF pixel size (upright) with this image: resized, rotated, cropped or unknown."""
    ew, eh = exif.pixel_x_dimension, exif.pixel_y_dimension
    if not ew or not eh:
        return Frame(width, height, 1.0, "unknown", "EXIF image size missing")
    if _same_aspect(ew, eh, width, height):
        scale = width / ew
        if abs(scale - 1) < 1e-3 and height == eh:
            return Frame(ew, eh, 1.0, "as recorded", f"EXIF image size {ew}×{eh} matches this photo")
        return Frame(ew, eh, scale, "resized", f"resized from the recorded {ew}×{eh} (tags rescaled)")
    if _same_aspect(eh, ew, width, height):
        return Frame(eh, ew, width / eh, "rotated",
                     f"pixels rotated by software after capture (EXIF image size {ew}×{eh} is the other way round)")
    scale = max(width / ew, height / eh)  # the side that shrank least was kept whole
    kept = "width" if width / ew >= height / eh else "height"
    return Frame(ew, eh, scale, "cropped",
                 f"cropped after capture from the recorded {ew}×{eh} (assumed to keep its full {kept})")


def focal_plane_sensor(exif: ExifCamera, frame: Frame) -> Sensor | None:
    """The sensor implied by FocalPlaneX/YResolution over the recorded frame, None without the tags."""
    if not (exif.focal_plane_x_res or exif.focal_plane_y_res):
        return None
    unit_mm = exif.focal_plane_unit_mm
    x_res = exif.focal_plane_x_res or exif.focal_plane_y_res
    y_res = exif.focal_plane_y_res or exif.focal_plane_x_res
    assert x_res is not None and y_res is not None
    if frame.kind == "rotated":
        x_res, y_res = y_res, x_res
    if unit_mm is None:
        return Sensor(1.0, 1.0, 0.0, "", f"EXIF FocalPlaneResolutionUnit {exif.focal_plane_unit} is not a unit")
    pitch_x, pitch_y = unit_mm / x_res, unit_mm / y_res
    w, h = frame.width * pitch_x, frame.height * pitch_y
    diagonal = math.hypot(w, h)
    text = f"{w:.1f} × {h:.1f} mm sensor"
    problem = None
    low, high = SENSOR_DIAGONAL_MM
    zoom = exif.digital_zoom if exif.digital_zoom and exif.digital_zoom > 1 else 1.0
    if not low <= diagonal <= high and low <= diagonal * zoom <= high:
        # Some cameras (Canon) write the resolution of the digitally zoomed centre crop.
        return Sensor(pitch_x, pitch_y, diagonal, f"{text} = the {zoom:g}× digital-zoom crop of a "
                      f"{w * zoom:.1f} × {h * zoom:.1f} mm sensor", None, zoom_included=True)
    if not low <= diagonal <= high:
        unit = UNIT_NAMES.get(exif.focal_plane_unit or 2, "inch")
        problem = (f"EXIF focal-plane tags inconsistent with this image size: {x_res:g} px per {unit} over "
                   f"{frame.width:g}×{frame.height:g} px implies a {diagonal:.2g} mm sensor diagonal (real cameras: "
                   f"{low:g}–{high:g} mm; resolution left from the original after a resize?)")
    return Sensor(pitch_x, pitch_y, diagonal, text, problem)


def _from_35mm(exif: ExifCamera, frame: Frame, sensor: Sensor | None, width: int, height: int,
               camera: str) -> IntrinsicsChoice | str | None:
    if not exif.focal_35mm:
        return None
    doubts: list[str] = []
    if exif.focal_mm:
        factor = exif.focal_35mm / exif.focal_mm
        if not CROP_FACTOR_RANGE[0] <= factor <= CROP_FACTOR_RANGE[1]:
            return (f"EXIF 35 mm-equivalent {exif.focal_35mm:g} mm is {factor:.2g}× the focal length "
                    f"{exif.focal_mm:g} mm, no real camera's crop factor")
        disagreement = _35mm_disagreement(exif, sensor)
        if disagreement:
            doubts.append(disagreement)
    focal, frame_doubts = _equivalent_focal_px(exif.focal_35mm, frame, width, height)
    doubts += frame_doubts
    source = f"EXIF 35 mm-equivalent focal {exif.focal_35mm:g} mm{camera} → {focal:.0f} px"
    agreement = ("agrees with the focal-plane tags" if sensor is not None and sensor.problem is None
                 and exif.focal_mm and not doubts else "")
    return _choice(centered(focal, width, height), width, height, source, doubts,
                   ", ".join(p for p in (frame.note, agreement) if p))


def _from_focal_plane(exif: ExifCamera, frame: Frame, sensor: Sensor | None, conflict: str | None,
                      width: int, height: int, camera: str) -> IntrinsicsChoice | str | None:
    if sensor is None or not exif.focal_mm:
        return None
    if sensor.problem:
        return sensor.problem
    doubts: list[str] = []
    focal_mm = exif.focal_mm
    if abs(sensor.pitch_x / sensor.pitch_y - 1) <= SQUARE_PIXEL_TOLERANCE:
        fx, fy = focal_mm / sensor.pitch_x * frame.scale, focal_mm / sensor.pitch_y * frame.scale
    else:  # the aspect-preserving reading: the sensor diagonal over the frame diagonal
        fx = fy = focal_mm * math.hypot(frame.width, frame.height) / sensor.diagonal_mm * frame.scale
        doubts.append(f"focal-plane x and y resolutions differ by {abs(sensor.pitch_x / sensor.pitch_y - 1):.0%} "
                      "(real sensors have square pixels): the diagonal reading is used")
    if frame.kind == "unknown":
        doubts.append("EXIF image size missing: cannot tell whether the photo was resized or cropped")
    elif frame.kind == "cropped":
        doubts.append(frame.note)
    if exif.focal_plane_unit == 1:
        doubts.append("FocalPlaneResolutionUnit is 1 ('no unit'), read as inches as exiftool does")
    for disagreement in (conflict, _35mm_disagreement(exif, sensor)):
        if disagreement:
            doubts.append(disagreement)
    if sensor.zoom_included:
        doubts.append("the focal-plane resolution already includes the digital zoom: without it the tags "
                      "imply no real sensor")
    elif exif.digital_zoom and exif.digital_zoom > 1:
        doubts.append(f"EXIF records a {exif.digital_zoom:g}× digital zoom; whether the focal-plane resolution "
                      "includes it differs between cameras (exiftool applies only Canon's maker-note zoom)")
    rescaled = " (rescaled to this image size)" if frame.scale != 1.0 else ""
    source = (f"EXIF focal length {exif.focal_mm:g} mm × focal-plane resolution ({sensor.text})"
              f"{camera}{rescaled} → {fx:.0f} px")
    return _choice(Intrinsics(fx, fy, (width - 1) / 2, (height - 1) / 2), width, height, source, doubts,
                   f"{frame.note}; {sensor.text} is a real camera's")


def _from_scale_factor(exif: ExifCamera, frame: Frame, sensor: Sensor | None, conflict: str | None,
                       width: int, height: int, camera: str) -> IntrinsicsChoice | str | None:
    if exif.focal_35mm or not exif.scale_35efl or not exif.focal_mm:
        return None
    if sensor is not None and _independent_scale(exif, sensor) is None:
        return None  # exiftool only repeated the focal-plane reading, judged above
    if not CROP_FACTOR_RANGE[0] <= exif.scale_35efl <= CROP_FACTOR_RANGE[1]:
        return f"exiftool's scale factor {exif.scale_35efl:.3g} is no real camera's crop factor"
    f35 = exif.focal_mm * exif.scale_35efl
    focal, doubts = _equivalent_focal_px(f35, frame, width, height)
    if conflict:
        doubts.insert(0, conflict)
    source = (f"exiftool 35 mm-equivalent {f35:.1f} mm (focal length {exif.focal_mm:g} mm × "
              f"{exif.scale_35efl:.3g} from maker notes){camera} → {focal:.0f} px")
    return _choice(centered(focal, width, height), width, height, source, doubts,
                   f"{frame.note}; camera known to exiftool")


def _equivalent_focal_px(f35: float, frame: Frame, width: int, height: int) -> tuple[float, list[str]]:
    """A 35 mm-equivalent focal in pixels of this image, and the doubts the frame check leaves.

    The 36 x 24 mm diagonal maps to the diagonal of the frame the camera recorded: this
    image's own unless it was cropped, then the recorded frame's, at this image's scale."""
    if frame.kind == "cropped":
        return (f35 * math.hypot(frame.width, frame.height) * frame.scale / FULL_FRAME_DIAGONAL_MM,
                [f"{frame.note}; the 35 mm-equivalent describes the original frame"])
    doubts = (["EXIF image size missing: cannot tell whether the photo was cropped after capture"]
              if frame.kind == "unknown" else [])
    return f35 * math.hypot(width, height) / FULL_FRAME_DIAGONAL_MM, doubts


def _35mm_disagreement(exif: ExifCamera, sensor: Sensor | None) -> str | None:
    """Why the 35 mm-equivalent tag and plausible focal-plane tags disagree, if they do."""
    if sensor is None or sensor.problem or not exif.focal_35mm or not exif.focal_mm:
        return None
    implied = FULL_FRAME_DIAGONAL_MM * exif.focal_mm / exif.focal_35mm
    if abs(sensor.diagonal_mm / implied - 1) <= SCALE_AGREEMENT:
        return None
    return (f"the 35 mm-equivalent implies a {implied:.1f} mm sensor diagonal, the focal-plane tags "
            f"a {sensor.diagonal_mm:.1f} mm one")


def _scale_conflict(exif: ExifCamera, sensor: Sensor | None) -> str | None:
    """Why exiftool's maker-note scale factor and plausible focal-plane tags disagree, if they do."""
    if sensor is None or sensor.problem:
        return None
    independent = _independent_scale(exif, sensor)
    if independent is None:
        return None
    implied = FULL_FRAME_DIAGONAL_MM / independent
    if abs(sensor.diagonal_mm / implied - 1) <= SCALE_AGREEMENT:
        return None
    return (f"exiftool's maker-note scale factor implies a {implied:.1f} mm sensor diagonal, the focal-plane "
            f"tags over the EXIF image size a {sensor.diagonal_mm:.1f} mm one (image size rewritten after capture?)")


def _independent_scale(exif: ExifCamera, sensor: Sensor) -> float | None:
    """exiftool's scale factor when it does not merely repeat the focal-plane tags."""
    if not exif.scale_35efl or not sensor.diagonal_mm:
        return None
    from_tags = FULL_FRAME_DIAGONAL_MM / sensor.diagonal_mm
    return None if abs(exif.scale_35efl / from_tags - 1) <= SAME_SCALE else exif.scale_35efl


def _choice(intr: Intrinsics, width: int, height: int, source: str, doubts: list[str],
            passed: str) -> IntrinsicsChoice | str:
    try:
        intr = validate(intr, width, height)
    except IntrinsicsError as exc:
        return f"EXIF focal implausible for this image ({exc})"
    confidence: Confidence = "exif-uncertain" if doubts else "exif"
    return IntrinsicsChoice(intr, source, confidence, "; ".join(doubts) if doubts else passed)


def _same_aspect(ew: int, eh: int, width: int, height: int) -> bool:
    """Whether width x height has the aspect of ew x eh, allowing a pixel of rounding."""
    expected = width * eh / ew
    return abs(height - expected) <= max(1.0, SAME_ASPECT_TOLERANCE * height)
