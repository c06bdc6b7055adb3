"""fp16 weights for a converted model: ai-edge-quantizer FLOAT_CASTING, metadata carried over.

Quantizing an existing fp32 file is much cheaper than a second PyTorch conversion (~1 min,
~1.7 GB), so fp16 models are always made from the fp32 one.
"""
from __future__ import annotations

import os
from pathlib import Path

from conversion.metadata import embed_metadata, read_metadata


def to_fp16(src: str | Path, dst: str | Path) -> Path:
    """Write `dst`: `src` with every float weight stored as fp16 (dequantized at load time)."""
    from ai_edge_quantizer import qtyping, quantizer

    src, dst = Path(src), Path(dst)
    qt = quantizer.Quantizer(str(src))
    qt.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                              num_bits=16, algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    qt.quantize().export_model(str(tmp), overwrite=True)
    doc = read_metadata(src)
    if doc is not None:
        embed_metadata(tmp, {**doc, "precision": "fp16"})
    tmp.replace(dst)
    return dst
