"""Checkpoint (or seeded random weights) -> GPU-safe .tflite with our metadata embedded.

Steps: load the faithful PyTorch model strictly, build its GPU-safe export form, convert
it with litert-torch (signature `serving_default`, input `image` [1,3,448,448] float32,
output `depth` [1,1,448,448]), embed the metadata, and for fp16 cast the weights of that
fp32 file (no second conversion). Time and peak memory go to stdout and to OUT.json so
benchmarks can read them.
"""
from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from backend.model_info import (CANONICAL_FOCAL_PX, DEFAULT_INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD,
                                METADATA_FORMAT)
from conversion.metadata import embed_metadata

CONVERTER_NAME = "metric3d-litert/conversion"
CONVERTER_VERSION = "0.1.0"
SIGNATURE = "serving_default"
PRECISIONS = ("fp16", "fp32")


@dataclass
class ConversionStats:
    output: str
    precision: str
    source: dict
    seconds: float
    peak_rss_mb: float
    output_bytes: int
    converter_version: str
    litert_torch_version: str
    torch_version: str


def metadata_doc(precision: str, source: dict, size: int = DEFAULT_INPUT_SIZE) -> dict:
    """The embedded JSON document (format 1, see backend/model_info.py)."""
    return {
        "format": METADATA_FORMAT,
        "model": "Metric3D v2 ViT-S",
        "input": {"name": "image", "shape": [1, 3, size, size], "dtype": "float32", "layout": "NCHW",
                  "color": "RGB", "scale": "0-255", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "output": {"name": "depth", "shape": [1, 1, size, size], "dtype": "float32", "units": "m",
                   "kind": "canonical_depth", "canonical_focal_px": CANONICAL_FOCAL_PX},
        "precision": precision,
        "source": source,
        "converter": {"name": CONVERTER_NAME, "version": CONVERTER_VERSION},
    }


def load_faithful(checkpoint: str | Path | None = None, random_seed: int | None = None
                  ) -> tuple[torch.nn.Module, dict]:
    """The faithful model and the metadata `source` entry describing where its weights came from."""
    if (checkpoint is None) == (random_seed is None):
        raise ValueError("give exactly one of a checkpoint or a random seed")
    if checkpoint is not None:
        from backend.digest import file_sha256
        from conversion.checkpoint import load_checkpoint

        return load_checkpoint(checkpoint), {"checkpoint_sha256": file_sha256(checkpoint)}
    from conversion.model import Metric3D
    from conversion.random_weights import randomize_

    return randomize_(Metric3D(), random_seed).eval(), {"random_seed": int(random_seed)}


def export_to_tflite(model: torch.nn.Module, output: str | Path, size: int = DEFAULT_INPUT_SIZE) -> Path:
    """litert-torch conversion of an export-form module with our signature and I/O names."""
    return export_to_tflite_sample(model, torch.zeros(1, 3, size, size), output)


def export_to_tflite_sample(model: torch.nn.Module, sample: torch.Tensor, output: str | Path) -> Path:
    """Convert `model` (forward(image) -> {"depth": ...}) at the sample's fixed shape."""
    import litert_torch

    edge = litert_torch.signature(SIGNATURE, model.eval(), sample_kwargs={"image": sample}).convert()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    edge.export(str(output))
    return output


def peak_rss_mb() -> float:
    """Peak resident memory of this process or any finished child, in MiB (Linux: KiB units)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


def convert(output: str | Path, *, checkpoint: str | Path | None = None, random_seed: int | None = None,
            precision: str = "fp16", size: int = DEFAULT_INPUT_SIZE) -> ConversionStats:
    """Build `output` (.tflite) and `output`.json (stats); returns the stats."""
    import litert_torch

    from conversion.export import ExportMetric3D
    from conversion.quantize import to_fp16

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    start = time.perf_counter()
    output = Path(output)
    faithful, source = load_faithful(checkpoint, random_seed)
    export = ExportMetric3D(faithful, size)
    del faithful
    fp32_path = output if precision == "fp32" else output.with_name(f".{output.name}.{os.getpid()}.fp32.tflite")
    with torch.no_grad():
        export_to_tflite(export, fp32_path, size)
    del export
    embed_metadata(fp32_path, metadata_doc("fp32", source, size))
    if precision == "fp16":
        try:
            to_fp16(fp32_path, output)
        finally:
            fp32_path.unlink(missing_ok=True)
    stats = ConversionStats(
        output=str(output), precision=precision, source=source,
        seconds=round(time.perf_counter() - start, 2), peak_rss_mb=round(peak_rss_mb(), 1),
        output_bytes=output.stat().st_size, converter_version=CONVERTER_VERSION,
        litert_torch_version=getattr(litert_torch, "__version__", "unknown"), torch_version=torch.__version__)
    write_stats(output, stats)
    return stats


def write_stats(output: Path, stats: ConversionStats) -> Path:
    sidecar = output.with_name(output.name + ".json")
    doc = {k: v for k, v in asdict(stats).items() if k != "output"}  # the file may be renamed later
    sidecar.write_text(json.dumps(doc, indent=2) + "\n")
    return sidecar
