"""`python -m backend.intrinsics PHOTO [PHOTO ...]`: the intrinsics the app would suggest, for scripts.

Prints one JSON object per photo and line: file, upright width and height, fx, fy, cx, cy
(pixels of the upright photo), source, confidence, reason. A photo without usable EXIF
still gets a line (the assumed field of view, confidence "assumed") and exit status 0; an
unreadable file gets a message on stderr and makes the exit status 1, the other photos are
still printed.
"""
from __future__ import annotations

import argparse
import json
import sys

from backend.examples import suggest_intrinsics
from backend.imageio import ImageError, load_image


def describe(path: str) -> dict:
    """The JSON record for one photo; raises ImageError when it cannot be read."""
    image = load_image(path)
    choice = suggest_intrinsics(image, path, None)
    return {"file": path, "width": image.width, "height": image.height, **choice.as_dict()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backend.intrinsics",
        description="Print the camera intrinsics (pixels of the upright photo) chosen for each photo, "
                    "with their source and confidence, as one JSON object per line.")
    parser.add_argument("photos", nargs="+", metavar="PHOTO")
    args = parser.parse_args(argv)
    status = 0
    for path in args.photos:
        try:
            record = describe(path)
        except ImageError as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(json.dumps(record, ensure_ascii=False), flush=True)
    return status
