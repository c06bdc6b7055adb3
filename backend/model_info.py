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

from dataclasses import dataclass

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
