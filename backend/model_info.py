"""Model identity and contract, read from the .tflite itself.

Our conversion embeds a UTF-8 JSON document as a TFLite `Model.metadata` entry named
METADATA_NAME (written by conversion/, read here without torch). The published model
(mlboydaisuke/Metric3D-v2-LiteRT) has none; it then gets the documented contract
defaults and is flagged `published=True` so the UI can say it deviates from upstream.

Metadata JSON (format 1):
{
  "format": 1,
  "model": "Metric3D v2 ViT-S",
  "input":  {"name": "image", "shape": [1, 3, 448, 448], "dtype": "float32",
             "layout": "NCHW", "color": "RGB", "scale": "0-255",
             "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]},
  "output": {"name": "depth", "shape": [1, 1, 448, 448], "dtype": "float32",
             "units": "m", "kind": "canonical_depth", "canonical_focal_px": 1000.0},
  "precision": "fp16" | "fp32",
  "source": {"checkpoint_sha256": "..."} | {"random_seed": 0} | {"stand_in": "..."},
  "converter": {"name": "metric3d-litert/conversion", "version": "..."}
}
"""
from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from backend.digest import file_sha256

METADATA_NAME = "metric3d_litert"
METADATA_FORMAT = 1
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
CANONICAL_FOCAL_PX = 1000.0
DEFAULT_INPUT_SIZE = 448


@dataclass(frozen=True)
class ModelInfo:
    """Everything the pipeline and the UI need to know about a model file."""

    path: str
    sha256: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    canonical_focal_px: float
    precision: str  # "fp16", "fp32" or "unknown"
    source: str  # human-readable: "checkpoint sha256 ab12…", "random weights (seed 0)", ...
    converter: str  # "metric3d-litert/conversion 0.1.0" or "unknown"
    published: bool  # True when no metadata: assumed to be the published conversion
    metadata: dict | None  # the raw JSON document, or None


class ModelInfoError(ValueError):
    """The file is not a TFLite model, or its metadata cannot be understood."""


_TFLITE_IDENTIFIER = b"TFL3"


def read_metadata_json(path: str | Path) -> dict | None:
    """The METADATA_NAME document of a .tflite file, or None when the model has none.

    The buffer is inline (`data`) for normal models and `offset`/`size` from the file
    start for models written in the >2 GB layout; both are read without loading weights.
    """
    from ai_edge_litert import schema_py_generated as schema

    path = Path(path)
    with path.open("rb") as f:
        if f.read(8)[4:8] != _TFLITE_IDENTIFIER:
            raise ModelInfoError(f"{path} is not a TFLite model (no 'TFL3' identifier).")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            try:
                raw = _metadata_bytes(schema.Model.GetRootAs(view, 0), view, path)
            except (struct.error, IndexError, ValueError, TypeError) as exc:
                # flatbuffers reads offsets blindly: a cut-short file fails deep inside it
                raise ModelInfoError(f"{path} is damaged or incomplete (truncated?): its model structure "
                                     f"cannot be read ({exc}). Download or convert it again.") from exc
    if raw is None:
        return None
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelInfoError(f"{path}: metadata '{METADATA_NAME}' is not valid UTF-8 JSON ({exc}).") from exc
    if not isinstance(document, dict):
        raise ModelInfoError(f"{path}: metadata '{METADATA_NAME}' is not a JSON object.")
    return document


def _metadata_bytes(model, view: mmap.mmap, path: Path) -> bytes | None:
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() is None or entry.Name().decode("utf-8", "replace") != METADATA_NAME:
            continue
        index = entry.Buffer()
        if index >= model.BuffersLength():
            raise ModelInfoError(f"{path}: metadata '{METADATA_NAME}' points to missing buffer {index}.")
        buffer = model.Buffers(index)
        offset, size = buffer.Offset(), buffer.Size()
        if offset > 1 and size > 0:
            if offset + size > len(view):
                raise ModelInfoError(f"{path}: metadata '{METADATA_NAME}' lies past the end of the file (truncated?).")
            return bytes(view[offset:offset + size])
        data = buffer.DataAsNumpy()
        raw = data.tobytes() if buffer.DataLength() else b""
        del data  # a numpy view keeps the mmap open
        return raw
    return None


def _describe_source(source: object) -> str:
    if isinstance(source, dict):
        if "checkpoint_sha256" in source:
            return f"official checkpoint (sha256 {str(source['checkpoint_sha256'])[:12]}…)"
        if "random_seed" in source:
            return f"random weights (seed {source['random_seed']})"
        if "stand_in" in source:
            return f"I/O stand-in, not a depth model ({source['stand_in']})"
    return json.dumps(source) if source else "unknown"


def _triple(values: object, default: tuple[float, float, float], what: str, path: Path) -> tuple[float, float, float]:
    if values is None:
        return default
    if not isinstance(values, list) or len(values) != 3:
        raise ModelInfoError(f"{path}: metadata {what} must be a list of 3 numbers, got {values!r}.")
    return (float(values[0]), float(values[1]), float(values[2]))


def model_info_from_metadata(path: str | Path, sha256: str, document: dict | None) -> ModelInfo:
    """Combine a metadata document (or its absence) with the contract defaults."""
    path = Path(path)
    if document is None:
        return ModelInfo(
            path=str(path), sha256=sha256, input_size=DEFAULT_INPUT_SIZE, mean=IMAGENET_MEAN,
            std=IMAGENET_STD, canonical_focal_px=CANONICAL_FOCAL_PX, precision="unknown",
            source="published conversion (litert-samples; deviates from upstream)",
            converter="unknown", published=True, metadata=None,
        )
    if document.get("format") != METADATA_FORMAT:
        raise ModelInfoError(f"{path}: metadata format {document.get('format')!r} is not supported "
                             f"(this app reads format {METADATA_FORMAT}).")
    inp = document.get("input") or {}
    out = document.get("output") or {}
    shape = inp.get("shape", [1, 3, DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE])
    if not (isinstance(shape, list) and len(shape) == 4 and shape[2] == shape[3]):
        raise ModelInfoError(f"{path}: metadata input shape {shape!r} is not [1, 3, S, S].")
    converter = document.get("converter") or {}
    return ModelInfo(
        path=str(path), sha256=sha256, input_size=int(shape[2]),
        mean=_triple(inp.get("mean"), IMAGENET_MEAN, "input.mean", path),
        std=_triple(inp.get("std"), IMAGENET_STD, "input.std", path),
        canonical_focal_px=float(out.get("canonical_focal_px", CANONICAL_FOCAL_PX)),
        precision=str(document.get("precision", "unknown")),
        source=_describe_source(document.get("source")),
        converter=" ".join(str(converter[k]) for k in ("name", "version") if k in converter) or "unknown",
        published=False, metadata=document,
    )


def read_model_info(path: str | Path) -> ModelInfo:
    """Identity and contract of a .tflite file: embedded metadata, else the published defaults."""
    path = Path(path)
    if not path.is_file():
        raise ModelInfoError(f"model file not found: {path}")
    return model_info_from_metadata(path, file_sha256(path), read_metadata_json(path))
