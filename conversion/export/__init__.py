"""GPU-safe export form of Metric3D v2 ViT-S (see model.py) and its op rewrites (ops.py)."""
from conversion.export.model import INPUT_SIZE, ExportMetric3D

__all__ = ["ExportMetric3D", "INPUT_SIZE"]
