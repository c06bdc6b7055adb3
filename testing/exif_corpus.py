"""A corpus of small JPEGs whose EXIF reproduces real cameras' tag values, written at test time.

Files fetched from public repositories may not be committed, so each case below re-creates
the tags that matter (tiny pixels, Pillow's EXIF writer, an Olympus maker note built by hand)
with values read from public EXIF sample collections; tests/data/README.md names the source
of every value and derives each hand-made truth. `python -m testing.exif_corpus DIR` writes the
files to DIR (to try `python -m backend.intrinsics DIR/*.jpg`).
"""
from __future__ import annotations

import math
import struct
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.ExifTags import IFD, Base
from PIL.TiffImagePlugin import IFDRational

Number = float | int | Fraction


@dataclass(frozen=True)
class Case:
    """One file: stored pixel size, EXIF tags, and what the checks must conclude."""

    name: str
    kind: str  # "correct" or the fault letter A-F of issue 10
    size: tuple[int, int]  # stored pixels (width, height), before the Orientation tag is applied
    make: str
    model: str
    tags: dict[int, Number] = field(default_factory=dict)  # Exif sub-IFD tags (PIL.ExifTags.Base)
    orientation: int | None = None
    olympus_focal_plane_diagonal_mm: float | None = None  # maker note (Olympus Equipment IFD)
    confidence: str = "exif"  # the label the checks must give
    truth_fx: float | None = None  # hand-derived focal in pixels where exiftool's reference is wrong or absent
    truth: str = ""  # how truth_fx was derived

    @property
    def file_name(self) -> str:
        return f"{self.name}.jpg"


def olympus_maker_note(diagonal_mm: float) -> bytes:
    """An Olympus type-2 maker note ("OLYMPUS\\0II", offsets from its start) holding only the
    Equipment IFD's FocalPlaneDiagonal (tag 0x0103), which exiftool turns into ScaleFactor35efl."""
    header = b"OLYMPUS\x00II\x03\x00"
    main_ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x2010, 13, 1, 30) + struct.pack("<I", 0)
    equipment = struct.pack("<H", 1) + struct.pack("<HHII", 0x0103, 5, 1, 48) + struct.pack("<I", 0)
    return header + main_ifd + equipment + struct.pack("<II", round(diagonal_mm * 100), 100)


def write(case: Case, folder: Path) -> Path:
    """Write the case's JPEG (a smooth gradient, so it is a real picture) and return its path."""
    w, h = case.size
    ramp = np.linspace(40, 215, w, dtype=np.float32)[None, :] + np.linspace(0, 30, h, dtype=np.float32)[:, None]
    pixels = np.stack([ramp, ramp[::-1], np.full_like(ramp, 128)], axis=2).astype(np.uint8)
    exif = Image.Exif()
    exif[Base.Make] = case.make
    exif[Base.Model] = case.model
    if case.orientation is not None:
        exif[Base.Orientation] = case.orientation
    sub = exif.get_ifd(IFD.Exif)
    for tag, value in case.tags.items():
        sub[tag] = value if isinstance(value, int) else IFDRational(Fraction(value).limit_denominator(10**6))
    if case.olympus_focal_plane_diagonal_mm:
        sub[Base.MakerNote] = olympus_maker_note(case.olympus_focal_plane_diagonal_mm)
    path = folder / case.file_name
    Image.fromarray(pixels).save(path, "JPEG", quality=60, exif=exif)
    return path


def _fp(x_res: Number, y_res: Number, unit: int, width: int, height: int) -> dict[int, Number]:
    tags: dict[int, Number] = {Base.FocalPlaneXResolution: x_res, Base.FocalPlaneYResolution: y_res,
                               Base.FocalPlaneResolutionUnit: unit}
    if width:
        tags |= {Base.ExifImageWidth: width, Base.ExifImageHeight: height}
    return tags


# Real cameras' values (see tests/data/README.md for the sample file each comes from).
IPHONE6 = {Base.FocalLength: 4.15, Base.FocalLengthIn35mmFilm: 57, Base.DigitalZoomRatio: 1.971014493}
P6000 = {Base.FocalLength: 24.0, Base.FocalLengthIn35mmFilm: 112, Base.ExifImageWidth: 640, Base.ExifImageHeight: 480}
SX60_RES = (Fraction(8427983333, 10**6), Fraction(843956, 100))  # Canon PowerShot SX60 HS, px per inch
S40_RES = Fraction(2272000, 280)  # Canon PowerShot S40 / DIGITAL IXUS 400: 8114.285714 px per inch
IXUS40_RES = Fraction(2272000, 224)  # Canon DIGITAL IXUS 40: 10142.85714 px per inch
EOS40D_RES = (Fraction(3888000, 876), Fraction(2592000, 583))  # Canon EOS 40D: 4438.356 / 4445.969 px per inch


def _cases() -> list[Case]:
    cases = [
        Case("phone_iphone6_zoom_resized", "correct", (816, 612), "Apple", "iPhone 6",
             {**IPHONE6, Base.ExifImageWidth: 3264, Base.ExifImageHeight: 2448}),
        Case("compact_casio_exm2", "correct", (1600, 1200), "CASIO COMPUTER CO.,LTD.", "EX-M2",
             {Base.FocalLength: 7.5, Base.FocalLengthIn35mmFilm: 36, Base.ExifImageWidth: 1600,
              Base.ExifImageHeight: 1200}),
        Case("dslr_canon_40d_resized", "correct", (972, 648), "Canon", "Canon EOS 40D",
             {Base.FocalLength: 135.0, **_fp(*EOS40D_RES, 2, 3888, 2592)}),
        Case("compact_canon_s40_resized", "correct", (480, 360), "Canon", "Canon PowerShot S40",
             {Base.FocalLength: 21.3125, **_fp(S40_RES, S40_RES, 2, 2272, 1704)}),
        Case("compact_canon_s40_digital_zoom_2x", "correct", (480, 360), "Canon", "Canon PowerShot S40",
             {Base.FocalLength: 21.3125, Base.DigitalZoomRatio: 2.0, **_fp(S40_RES, S40_RES, 2, 2272, 1704)},
             confidence="exif-uncertain"),
        Case("compact_ixus_v2_zoom_in_resolution", "correct", (1600, 1200), "Canon", "Canon DIGITAL IXUS v2",
             {Base.FocalLength: 10.8125, Base.DigitalZoomRatio: 2.5,
              **_fp(Fraction(2000000, 103), Fraction(600000, 31), 2, 1600, 1200)},
             confidence="exif-uncertain"),
    ]
    for o in range(1, 9):
        cases.append(Case(f"phone_p6000_orientation{o}", "correct", (640, 480), "NIKON", "COOLPIX P6000",
                          dict(P6000), orientation=o))
        cases.append(Case(f"compact_sx60_orientation{o}", "correct", (2048, 1536), "Canon", "Canon PowerShot SX60 HS",
                          {Base.FocalLength: 57.019, **_fp(*SX60_RES, 2, 2048, 1536)}, orientation=o))
    cases += [
        Case("A_ixus400_thumbnail_size_rewritten", "A", (100, 75), "Canon", "Canon DIGITAL IXUS 400",
             {Base.FocalLength: 15.4375, **_fp(S40_RES, S40_RES, 2, 100, 75)}, confidence="assumed",
             truth_fx=15.4375 * 100 / (2272 / float(S40_RES) * 25.4),
             truth="15.4375 mm x 100 px / (2272 px / 8114.29 px/in x 25.4 = 7.112 mm sensor width)"),
        Case("A_finepix_e500_thumbnail_size_dropped", "A", (100, 75), "FUJIFILM", "FinePix E500",
             {Base.FocalLength: 4.7, **_fp(4000, 4000, 3, 0, 0)}, confidence="assumed",
             truth_fx=4.7 * 100 / (2304 / 4000 * 10),
             truth="4.7 mm x 100 px / (2304 px / 4000 px/cm = 5.76 mm sensor width)"),
        Case("B_s40_rotated_by_software", "B", (360, 480), "Canon", "Canon PowerShot S40",
             {Base.FocalLength: 21.3125, **_fp(S40_RES, S40_RES, 2, 2272, 1704)},
             truth_fx=21.3125 * float(S40_RES) / 25.4 * 480 / 2272,
             truth="21.3125 mm x 8114.29 px/in / 25.4 x (480 / 2272): the long side is the recorded width"),
        Case("B_sx60_non_square_resolution", "B", (2048, 1536), "Canon", "Canon PowerShot SX60 HS",
             {Base.FocalLength: 57.019, **_fp(SX60_RES[0], SX60_RES[1] * Fraction(12, 10), 2, 2048, 1536)},
             confidence="exif-uncertain"),
        Case("C_p6000_wrong_resolution_with_35mm", "C", (640, 480), "NIKON", "COOLPIX P6000",
             {**P6000, **_fp(640, 640, 2, 640, 480)}, confidence="exif-uncertain"),
        Case("C_finepix_e500_wrong_resolution", "C", (2304, 1728), "FUJIFILM", "FinePix E500",
             {Base.FocalLength: 4.7, **_fp(40000, 40000, 3, 2304, 1728)}, confidence="assumed",
             truth_fx=4.7 * 2304 / 5.76, truth="4.7 mm x 2304 px / 5.76 mm (1/2.5\" sensor; 4000 px/cm written "
                                                "by the same camera elsewhere, here 10x)"),
        Case("C_finepix_a303_vga_with_full_size_resolution", "C", (640, 480), "FUJIFILM", "FinePix A303",
             {Base.FocalLength: 5.7, **_fp(3884, 3884, 3, 640, 480)}, confidence="assumed",
             truth_fx=5.7 * 640 / (2048 / 3884 * 10),
             truth="5.7 mm x 640 px / (2048 px / 3884 px/cm = 5.27 mm sensor width)"),
        Case("D_olympus_c960_maker_note", "D", (640, 480), "OLYMPUS OPTICAL CO.,LTD", "C960Z,D460Z",
             {Base.FocalLength: 5.6, Base.ExifImageWidth: 1280, Base.ExifImageHeight: 960},
             olympus_focal_plane_diagonal_mm=6.64),
        Case("D_olympus_ep3_maker_note", "D", (1008, 756), "OLYMPUS IMAGING CORP.", "E-P3",
             {Base.FocalLength: 15.0, Base.ExifImageWidth: 4032, Base.ExifImageHeight: 3024},
             olympus_focal_plane_diagonal_mm=21.6),
        Case("D_olympus_ep3_maker_note_no_size", "D", (1008, 756), "OLYMPUS IMAGING CORP.", "E-P3",
             {Base.FocalLength: 15.0}, olympus_focal_plane_diagonal_mm=21.6, confidence="exif-uncertain"),
        Case("E_sx60_unit_none", "E", (2048, 1536), "Canon", "Canon PowerShot SX60 HS",
             {Base.FocalLength: 57.019, **_fp(*SX60_RES, 1, 2048, 1536)}, confidence="exif-uncertain"),
        Case("F_iphone6_cropped_16x9", "F", (1280, 720), "Apple", "iPhone 6",
             {**IPHONE6, Base.ExifImageWidth: 3264, Base.ExifImageHeight: 2448}, confidence="exif-uncertain",
             truth_fx=57 * math.hypot(3264, 2448) / 43.27 * 1280 / 3264,
             truth="57 mm on the 3264x2448 frame's diagonal, x 1280/3264 (the crop kept the full width)"),
        Case("F_ixus40_cropped", "F", (1136, 775), "Canon", "Canon DIGITAL IXUS 40",
             {Base.FocalLength: 5.8, **_fp(IXUS40_RES, IXUS40_RES, 2, 2272, 1704)}, confidence="exif-uncertain",
             truth_fx=5.8 * float(IXUS40_RES) / 25.4 * 1136 / 2272,
             truth="5.8 mm x 10142.86 px/in / 25.4 x 1136/2272 (half size, then cropped in height)"),
    ]
    return cases


CASES = _cases()
BY_NAME = {case.name: case for case in CASES}


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "exif_corpus")
    out.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        print(write(case, out))
