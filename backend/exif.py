"""Read the EXIF facts a focal length in pixels can be derived from.

Two readers: Pillow for the standard EXIF tags (always available, cheap), and exiftool
(Debian's libimage-exiftool-perl, run as `exiftool -json -n`) for what only camera-specific
knowledge gives: focal data kept in maker notes (Olympus, older Canon, Sony) and Canon's
maker-note digital zoom, both folded into exiftool's Composite:ScaleFactor35efl. exiftool is
asked only when the standard tags lack the 35 mm-equivalent focal, runs once per photo with a
timeout, and is optional: without it the standard tags are used and the facts carry a note
saying that maker-note cameras fall back to the next source. Whether the facts are consistent
with the image is decided by backend.camera, not here.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import threading
from dataclasses import dataclass, replace
from functools import cache

from PIL import Image
from PIL.ExifTags import IFD, Base

EXIFTOOL_TIMEOUT_S = 5.0
EXIFTOOL_CACHE = 32  # photos whose exiftool answer is kept (by sha256 of the file)
CAMERA_FORMATS = ("JPEG", "MPO", "TIFF")  # what cameras write; screenshots and web images are PNG, WebP, GIF
# Orientations 5-8 swap the image axes (transpose, rotate 90/270, transverse).
AXIS_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
# FocalPlaneResolutionUnit (EXIF 2.32, tag 0xA210): mm per unit. 1 means "no unit"; exiftool
# (Image::ExifTool::Exif, CalcScaleFactor35efl) reads it as inches, the EXIF default.
FOCAL_PLANE_UNIT_MM = {1: 25.4, 2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}
DEFAULT_FOCAL_PLANE_UNIT = 2  # inch, when the tag is absent (EXIF default)
NO_EXIFTOOL_NOTE = ("exiftool is not installed, so focal data kept only in maker notes "
                    "(Olympus, older Canon, Sony) is not read")


@dataclass(frozen=True)
class ExifCamera:
    """EXIF facts needed to turn a focal length into pixels.

    Focal-plane resolutions and pixel dimensions are given in the orientation of the
    upright image (swapped when the Orientation tag rotates by 90 degrees), so they can be
    compared with the width and height of LoadedImage.rgb directly.
    """

    focal_35mm: float | None = None  # FocalLengthIn35mmFormat, mm
    focal_mm: float | None = None  # FocalLength, mm
    focal_plane_x_res: float | None = None  # pixels per unit along the upright image's x
    focal_plane_y_res: float | None = None
    focal_plane_unit: int | None = None  # FocalPlaneResolutionUnit code (1 none, 2 inch, 3 cm, 4 mm, 5 µm)
    make: str | None = None
    model: str | None = None
    pixel_x_dimension: int | None = None  # image width the camera recorded (upright)
    pixel_y_dimension: int | None = None
    digital_zoom: float | None = None  # DigitalZoomRatio (> 0; 1 or absent = none)
    scale_35efl: float | None = None  # exiftool's Composite:ScaleFactor35efl (maker notes, Canon digital zoom)
    note: str | None = None  # what could not be read, e.g. exiftool missing

    @property
    def camera_name(self) -> str | None:
        """'Make Model' without repeating the make when the model already starts with it."""
        if self.make and self.model and self.model.lower().startswith(self.make.lower()):
            return self.model
        parts = [p for p in (self.make, self.model) if p]
        return " ".join(parts) or None

    @property
    def focal_plane_unit_mm(self) -> float | None:
        """Length of one focal-plane resolution unit in mm (None for an unknown unit code)."""
        return FOCAL_PLANE_UNIT_MM.get(self.focal_plane_unit or DEFAULT_FOCAL_PLANE_UNIT)


def read_exif(data: bytes, im: Image.Image) -> ExifCamera:
    """The photo's focal facts: Pillow's reading, completed by exiftool when the standard
    tags lack the 35 mm-equivalent focal and the file may hold camera metadata (any EXIF, or
    a JPEG/TIFF, where older cameras wrote e.g. Canon CIFF records instead). Never raises:
    broken EXIF gives empty facts."""
    own, has_exif = read_with_pillow(im)
    if own.focal_35mm or not (has_exif or im.format in CAMERA_FORMATS):
        return own
    return complete_with_exiftool(own, data)


def read_with_pillow(im: Image.Image) -> tuple[ExifCamera, bool]:
    """(facts from the standard EXIF tags, whether the file has any EXIF at all)."""
    try:
        base = im.getexif()
        ifd = base.get_ifd(IFD.Exif)
    except Exception:  # noqa: BLE001 - broken EXIF must never stop a photo from loading
        return ExifCamera(), False
    if not base and not ifd:
        return ExifCamera(), False
    x_res = _positive(ifd.get(Base.FocalPlaneXResolution))
    y_res = _positive(ifd.get(Base.FocalPlaneYResolution))
    px_x = _positive_int(ifd.get(Base.ExifImageWidth))
    px_y = _positive_int(ifd.get(Base.ExifImageHeight))
    if _positive_int(base.get(Base.Orientation)) in AXIS_SWAPPING_ORIENTATIONS:
        x_res, y_res = y_res, x_res
        px_x, px_y = px_y, px_x
    return ExifCamera(
        focal_35mm=_positive(ifd.get(Base.FocalLengthIn35mmFilm)),
        focal_mm=_positive(ifd.get(Base.FocalLength)),
        focal_plane_x_res=x_res,
        focal_plane_y_res=y_res,
        focal_plane_unit=_positive_int(ifd.get(Base.FocalPlaneResolutionUnit)) if (x_res or y_res) else None,
        make=_text(base.get(Base.Make)),
        model=_text(base.get(Base.Model)),
        pixel_x_dimension=px_x,
        pixel_y_dimension=px_y,
        digital_zoom=_positive(ifd.get(Base.DigitalZoomRatio)),
    ), True


def complete_with_exiftool(own: ExifCamera, data: bytes) -> ExifCamera:
    """`own` plus exiftool's ScaleFactor35efl (and its FocalLength, Make, Model where EXIF lacks them)."""
    found = run_exiftool(data)
    if isinstance(found, str):
        return replace(own, note=found)
    return replace(own, scale_35efl=_positive(found.get("ScaleFactor35efl")),
                   focal_mm=own.focal_mm or _positive(found.get("FocalLength")),
                   make=own.make or _text(found.get("Make")), model=own.model or _text(found.get("Model")))


@cache
def exiftool_path() -> str | None:
    """The exiftool executable, or None when it is not installed."""
    return shutil.which("exiftool")


def run_exiftool(data: bytes) -> dict | str:
    """exiftool's numeric (-n) focal tags for the file bytes, or a note saying why there are none.

    One exiftool process per photo (~0.2 s, most of it Perl starting), so answers are kept for
    the last EXIFTOOL_CACHE photos: the page reads a photo when it is uploaded and again when
    depth is estimated."""
    exe = exiftool_path()
    if exe is None:
        return NO_EXIFTOOL_NOTE
    key = hashlib.sha256(data).hexdigest()
    with _recent_lock:
        if key in _recent:
            return _recent[key]
    cmd = [exe, "-json", "-n", "-fast", "-Make", "-Model", "-FocalLength", "-ScaleFactor35efl", "-"]
    try:
        done = subprocess.run(cmd, input=data, capture_output=True, timeout=EXIFTOOL_TIMEOUT_S, check=False)
        found = json.loads(done.stdout)[0]
    except subprocess.TimeoutExpired:
        return f"exiftool took over {EXIFTOOL_TIMEOUT_S:g} s and was stopped, so maker notes are not read"
    except (OSError, ValueError, IndexError, KeyError) as exc:
        return f"exiftool could not read the file ({exc}), so maker notes are not read"
    if not isinstance(found, dict):
        return "exiftool gave no tags for the file, so maker notes are not read"
    with _recent_lock:  # requests run in threads
        _recent[key] = found
        while len(_recent) > EXIFTOOL_CACHE:
            del _recent[next(iter(_recent))]
    return found


_recent: dict[str, dict] = {}  # sha256 -> exiftool's answer, oldest first
_recent_lock = threading.Lock()


def _positive(value: object) -> float | None:
    """EXIF rationals may be 0/0 or garbage; only finite positive numbers count."""
    if isinstance(value, tuple) and len(value) == 2:
        num, den = value
        value = num / den if den else None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _positive_int(value: object) -> int | None:
    number = _positive(value)
    return int(round(number)) if number is not None else None


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    cleaned = value.replace("\x00", "").strip()
    return cleaned or None
