"""Intrinsics from EXIF on files that reproduce real cameras' tags (testing/exif_corpus.py),
against exiftool's reference fx = FocalLength x ScaleFactor35efl x hypot(W, H) / hypot(36, 24)
or, where exiftool is wrong or silent, a truth derived by hand (tests/data/README.md).
Also `python -m backend.intrinsics`, with and without exiftool on the PATH."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from backend.examples import suggest_intrinsics
from backend.imageio import load_image
from testing.exif_corpus import BY_NAME, CASES, Case, write

REPO = Path(__file__).resolve().parents[1]
EXIFTOOL = shutil.which("exiftool")
pytestmark = pytest.mark.skipif(EXIFTOOL is None, reason="needs exiftool (scripts/setup.sh installs it)")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exif_corpus")
    return {case.name: write(case, folder) for case in CASES}


@pytest.fixture(scope="module")
def references(corpus) -> dict[str, float | None]:
    """exiftool's reference fx per case (None where exiftool knows no scale factor)."""
    out = subprocess.run([EXIFTOOL, "-json", "-n", "-FocalLength", "-ScaleFactor35efl", "-ImageWidth",
                          "-ImageHeight", *map(str, corpus.values())], capture_output=True, check=True).stdout
    refs = {}
    for doc in json.loads(out):
        name = Path(doc["SourceFile"]).stem
        factor = doc.get("ScaleFactor35efl")
        refs[name] = (doc["FocalLength"] * factor * math.hypot(doc["ImageWidth"], doc["ImageHeight"])
                      / math.hypot(36, 24)) if factor and doc.get("FocalLength") else None
    return refs


def _upright(case: Case) -> tuple[int, int]:
    w, h = case.size
    return (h, w) if case.orientation in (5, 6, 7, 8) else (w, h)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_chosen_focal_and_confidence(case: Case, corpus, references):
    path = corpus[case.name]
    image = load_image(path)
    choice = suggest_intrinsics(image, path, None)
    k = choice.intrinsics
    assert (image.width, image.height) == _upright(case)
    assert (k.cx, k.cy) == ((image.width - 1) / 2, (image.height - 1) / 2)
    assert k.fx == pytest.approx(k.fy, rel=0.01)  # square pixels, whatever the tags said
    assert choice.confidence == case.confidence, choice.reason
    assert choice.reason
    truth = case.truth_fx if case.truth_fx is not None else references[case.name]
    if choice.confidence == "assumed":
        assert choice.source.startswith("Assumed") and "EXIF" in choice.reason
        return
    assert truth is not None, f"{case.name}: no reference and no hand truth"
    assert k.fx == pytest.approx(truth, rel=0.02)  # implies the 10 % bound for "exif"


@pytest.mark.parametrize("name", ["F_iphone6_cropped_16x9", "F_ixus40_cropped",
                                  "C_finepix_a303_vga_with_full_size_resolution"])
def test_exiftool_reference_is_wrong_where_a_hand_truth_is_used(name, references):
    """Why these cases carry a hand truth: exiftool puts the original frame's 35 mm-equivalent on a
    cropped frame's diagonal, and trusts a resolution written for the camera's full-size image."""
    assert abs(references[name] / BY_NAME[name].truth_fx - 1) > 0.02


def test_all_eight_orientations_give_one_focal(corpus):
    for family in ("phone_p6000_orientation", "compact_sx60_orientation"):
        focals = [suggest_intrinsics(load_image(corpus[f"{family}{o}"]), None, None).intrinsics.fx
                  for o in range(1, 9)]
        assert max(focals) / min(focals) - 1 < 0.002, family


def test_fault_a_explains_why_exif_was_not_used(corpus):
    path = corpus["A_ixus400_thumbnail_size_rewritten"]
    choice = suggest_intrinsics(load_image(path), path, None)
    assert "focal-plane tags inconsistent with this image size" in choice.reason
    assert "sensor diagonal" in choice.reason


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend.intrinsics", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_command_prints_one_json_object_per_photo(corpus, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    names = ["phone_p6000_orientation6", "A_ixus400_thumbnail_size_rewritten", "D_olympus_c960_maker_note"]
    done = _cli(str(corpus[names[0]]), str(broken), str(corpus[names[1]]), str(corpus[names[2]]))
    assert done.returncode == 1
    assert "broken.jpg" in done.stderr and "not an image" in done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [Path(r["file"]).stem for r in records] == names
    for record in records:
        assert set(record) == {"file", "width", "height", "fx", "fy", "cx", "cy", "source", "confidence", "reason"}
    assert (records[0]["width"], records[0]["height"]) == (480, 640)
    assert [r["confidence"] for r in records] == ["exif", "assumed", "exif"]


def test_command_exits_0_for_photos_without_usable_exif(corpus, tmp_path):
    done = _cli(str(corpus["A_finepix_e500_thumbnail_size_dropped"]), str(REPO / "examples" / "motorcycle.png"))
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["confidence"] for line in done.stdout.splitlines()] == ["assumed", "calibrated"]


def test_without_exiftool_maker_note_cameras_fall_back_with_a_note(corpus, tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty folder: no exiftool to be found
    done = _cli(str(corpus["D_olympus_c960_maker_note"]), str(corpus["phone_p6000_orientation1"]), env=env)
    assert done.returncode == 0, done.stderr
    olympus, phone = (json.loads(line) for line in done.stdout.splitlines())
    assert olympus["confidence"] == "assumed" and "exiftool is not installed" in olympus["reason"]
    assert phone["confidence"] == "exif"  # the standard tags still work
