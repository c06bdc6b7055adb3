"""GPU-safety audit of a .tflite file, read straight from the flatbuffer (no interpreter).

The LiteRT GPU delegate rejects or silently falls back to the CPU for some ops, and a
single fallback splits the graph into slow CPU/GPU partitions. So the audit is an
allow-list: every op must be a LiteRT GPU builtin we have checked, no tensor may have more
than 4 dimensions (the GPU works on BHWC tensors), and custom ops are never allowed.
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ai_edge_litert import schema_py_generated as schema

# LiteRT GPU delegate builtins (tflite/delegates/gpu/common/model_builder.cc) that our
# graphs use or may reasonably use. Anything else fails the audit until it is checked.
GPU_SAFE_OPS = frozenset({
    "ABS", "ADD", "AVERAGE_POOL_2D", "BATCH_MATMUL", "CONCATENATION", "CONV_2D", "COS",
    "DEPTHWISE_CONV_2D", "DEPTH_TO_SPACE", "DEQUANTIZE", "DIV", "EXP", "FULLY_CONNECTED",
    "HARD_SWISH", "LOG", "LOGISTIC", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL",
    "NEG", "PAD", "PRELU", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD", "RELU", "RELU6",
    "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RSQRT", "SIN", "SLICE", "SOFTMAX",
    "SPACE_TO_DEPTH", "SPLIT", "SQRT", "SQUARE", "SQUARED_DIFFERENCE", "STRIDED_SLICE",
    "SUB", "SUM", "TANH", "TRANSPOSE",
})

# Named explicitly so the report says why, even though the allow-list already excludes them.
KNOWN_BANNED_OPS = {
    "GELU": "not a GPU builtin on all delegates; use the erf-approximation GELU",
    "POW": "slow/unsupported on Mali; use multiplications",
    "WHERE": "data-dependent select, not GPU-safe",
    "SELECT": "not GPU-safe; use select-free algebra",
    "SELECT_V2": "not GPU-safe; use select-free algebra",
    "GATHER": "not GPU-safe; use one-hot convolutions or 0/1 matrix products",
    "GATHER_ND": "not GPU-safe (F.unfold lowers to it); use one-hot convolutions",
    "TRANSPOSE_CONV": "ConvTranspose2d; rewrite as a sub-pixel convolution",
    "RESIZE_NEAREST_NEIGHBOR": "rounding differs from PyTorch; use a 0/1 matrix product",
    "CUSTOM": "custom ops never run on the GPU delegate",
    "STABLEHLO_COMPOSITE": "unlowered composite op",
}
MAX_RANK = 4

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


@dataclass
class AuditReport:
    """What a model contains and why it is or is not GPU-safe."""

    ops: Counter = field(default_factory=Counter)
    ranks: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _op_name(code: schema.OperatorCode) -> str:
    # Codes < 127 live in the deprecated int8 field; the larger of the two is authoritative.
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    if builtin == schema.BuiltinOperator.CUSTOM:
        custom = code.CustomCode()
        return f"CUSTOM:{custom.decode() if custom else '?'}"
    return _OP_NAMES.get(builtin, f"UNKNOWN_{builtin}")


def audit_model(path: str | Path) -> AuditReport:
    """Op histogram, tensor-rank histogram and the list of GPU-safety violations."""
    data = Path(path).read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    names = [_op_name(model.OperatorCodes(i)) for i in range(model.OperatorCodesLength())]
    report = AuditReport()
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for i in range(graph.OperatorsLength()):
            report.ops[names[graph.Operators(i).OpcodeIndex()]] += 1
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            rank = tensor.ShapeLength()
            report.ranks[rank] += 1
            if rank > MAX_RANK:
                report.problems.append(
                    f"tensor {tensor.Name().decode(errors='replace')!r} has rank {rank} "
                    f"{list(tensor.ShapeAsNumpy())} (> {MAX_RANK})")
    for op in sorted(report.ops):
        base = op.split(":")[0]
        if base in KNOWN_BANNED_OPS:
            report.problems.append(f"op {op} x{report.ops[op]}: {KNOWN_BANNED_OPS[base]}")
        elif op not in GPU_SAFE_OPS:
            report.problems.append(f"op {op} x{report.ops[op]}: not on the GPU-safe allow-list")
    return report


def format_report(path: str | Path, report: AuditReport) -> str:
    lines = [f"{path}", "ops:"]
    lines += [f"  {op:<24} {n}" for op, n in sorted(report.ops.items())]
    lines.append("tensor ranks: " + ", ".join(f"{r}D x{n}" for r, n in sorted(report.ranks.items())))
    if report.ok:
        lines.append("GPU-safe: yes")
    else:
        lines.append(f"GPU-safe: NO ({len(report.problems)} problems)")
        lines += [f"  - {p}" for p in report.problems]
    return "\n".join(lines)


def run_audit(path: str | Path) -> int:
    """CLI entry: print the report; exit status 0 only for a GPU-safe model."""
    path = Path(path)
    if not path.is_file():
        print(f"error: no such model file: {path}", file=sys.stderr)
        return 2
    try:
        report = audit_model(path)
    except Exception as exc:  # a truncated or non-TFLite file: say so, don't dump a traceback
        print(f"error: {path} is not a readable .tflite flatbuffer ({exc})", file=sys.stderr)
        return 2
    print(format_report(path, report))
    return 0 if report.ok else 1
