"""Build-time tools: the PyTorch Metric3D v2 ViT-S model, checkpoint loading and the LiteRT export.

Nothing at run time imports this package; torch is an optional install (requirements-conversion.txt).
"""
