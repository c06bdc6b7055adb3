"""Check the values of the page's and the API's input fields before anything uses them.

Gradio's Number and Slider pass whatever JSON the client sent straight to the handler
(a string, a list, an integer with 400 digits), and Python's float() accepts "1_000",
"nan" and "inf". Every field goes through `number` instead, so a wrong value gets a
message that names the field and says what is allowed. Never imports gradio.
"""
from __future__ import annotations

import math
import re

from backend.geometry import MAX_METRIC_DEPTH, CloudFilter

# A plain decimal number as a person types it: no digit-group underscores, no hex, no nan/inf.
_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?")
_SHOWN_CHARS = 40
# Voxels smaller than this (meters) would make Open3D's voxel grid index overflow on a room-
# sized cloud ("voxel_size is too small"); the page's slider steps by 0.005 m.
MIN_VOXEL_M = 0.001
MAX_VOXEL_M = 1.0
MAX_EDGE_THRESHOLD = 1.0


class FieldError(ValueError):
    """A field holds a value that cannot be used; the message names the field."""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"


def number(name: str, value: object, *, minimum: float | None = None, maximum: float | None = None,
           optional: bool = False) -> float | None:
    """`value` as a finite float within [minimum, maximum]; raise FieldError naming `name`.

    Accepts int and float (not bool) and strings that are plain decimals ("12", "-3.5e2");
    None only when `optional`. Raises FieldError for anything else, NaN/inf, overflow
    (e.g. 10**400) and values outside the range.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        if optional:
            return None
        raise FieldError(f"Please fill in {name}.")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise FieldError(f"{name} must be a number, got {type(value).__name__} {_shown(value)}.")
    if isinstance(value, str):
        if not _DECIMAL.fullmatch(value.strip()):
            raise FieldError(f"{name} must be a plain decimal number (like 1000 or 0.25), got {_shown(value)}.")
        value = value.strip()
    try:
        result = float(value)
    except OverflowError:
        raise FieldError(f"{name} is far too large: {_shown(value)}.") from None
    if not math.isfinite(result):
        raise FieldError(f"{name} must be a finite number, got {_shown(value)}.")
    if minimum is not None and result < minimum:
        raise FieldError(f"{name} must be at least {minimum:g}, got {result:g}.")
    if maximum is not None and result > maximum:
        raise FieldError(f"{name} must be at most {maximum:g}, got {result:g}.")
    return result


def cloud_filter(min_depth: object, max_depth: object, edge_threshold: object, voxel_size: object) -> CloudFilter:
    """The point-cloud options from the page's fields, each checked (units: meters, a fraction).

    Raises FieldError for a wrong type, NaN, values outside [0, MAX_METRIC_DEPTH] m, an empty
    depth range, an edge threshold outside [0, 1], or a voxel size that is neither 0 (off) nor
    within [MIN_VOXEL_M, MAX_VOXEL_M].
    """
    near = number("Nearest point kept (m)", min_depth, minimum=0.0, maximum=MAX_METRIC_DEPTH)
    far = number("Farthest point kept (m)", max_depth, minimum=0.0, maximum=MAX_METRIC_DEPTH)
    if far <= near:
        raise FieldError(f"The depth range is empty: nearest {near:g} m ≥ farthest {far:g} m.")
    edge = number("Remove depth edges", edge_threshold, minimum=0.0, maximum=MAX_EDGE_THRESHOLD)
    voxel = number("Voxel size (m)", voxel_size, minimum=0.0, maximum=MAX_VOXEL_M)
    if 0.0 < voxel < MIN_VOXEL_M:
        raise FieldError(f"Voxel size (m) must be 0 (off) or at least {MIN_VOXEL_M:g} m, got {voxel:g}.")
    return CloudFilter(min_depth=near, max_depth=far, edge_threshold=edge, voxel_size=voxel)
