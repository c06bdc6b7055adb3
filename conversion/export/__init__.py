"""GPU-safe export form of Metric3D v2 ViT-S: the faithful modules (conversion.model) transformed
in place (transform.py) with the op rewrites of ops.py."""
from conversion.export.model import INPUT_SIZE, ExportMetric3D

__all__ = ["ExportMetric3D", "INPUT_SIZE"]
