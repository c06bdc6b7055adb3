"""Host-side pipeline: image bytes -> canonical depth (via an engine) -> metric geometry -> files.

Pure math lives in small modules (preprocess, intrinsics, geometry); state and I/O
(model files, the LiteRT runtime) live at the edges (host_engine, model_files).
This package never imports gradio, torch or device/.
"""
