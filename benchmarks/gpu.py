"""The network on LiteRT's GPU accelerator: full residency and fidelity per arithmetic precision.

Keys (issue 9): gpu_fp16_mean_rel, gpu_fp16_p99_rel, gpu_fp32_mean_rel, gpu_fully_accelerated,
plus the other error measures, compile and run times and the adapter. The model is the one
this run converted (seeded random weights): fp32 arithmetic runs the fp32 file, fp16
arithmetic (the GPU default, the phone's path) runs its fp16-weight copy. The reference is
the fp32 file on LiteRT's CPU path (XNNPACK, fp32), on the Middlebury example as the network
sees it; relative error is |gpu - cpu| / cpu per pixel. Random weights are not real
activations: the real checkpoint may err more or less. Where LiteRT has no GPU adapter the
keys are None and `gpu_skipped` says why.
"""
from __future__ import annotations

from pathlib import Path

from backend.gpu_adapter import parse_selected_adapter
from backend.model_info import read_model_info
from backend.preprocess import normalize
from benchmarks.host_post import network_image
from conversion.predict import PredictError, depth_errors, run_litert
from conversion.quantize import to_fp16

KEYS = ("gpu_fp16_mean_rel", "gpu_fp16_p99_rel", "gpu_fp16_max_rel", "gpu_fp16_corr", "gpu_fp32_mean_rel",
        "gpu_fp32_p99_rel", "gpu_fp32_max_rel", "gpu_fp32_corr", "gpu_fully_accelerated")


def measure_gpu(model: Path, cache: Path) -> dict[str, object]:
    """GPU vs CPU for `model` (an fp32 .tflite) and its fp16-weight copy (written to `cache`)."""
    info = read_model_info(model)
    rgb, _ = network_image(info.input_size)
    x = normalize(rgb, info.mean, info.std)
    fp16_model = model if info.precision == "fp16" else to_fp16(model, cache / f"{model.stem}.fp16.tflite")
    cpu = run_litert(model, x, "cpu")
    try:
        runs = {"fp32": run_litert(model, x, "gpu", "fp32"), "fp16": run_litert(fp16_model, x, "gpu", "fp16")}
    except PredictError as exc:
        if "No adapters found" not in str(exc):
            raise
        return {**dict.fromkeys(KEYS), "gpu_skipped": f"no Vulkan adapter: {str(exc).splitlines()[-1]}"}
    results: dict[str, object] = {}
    for precision, run in runs.items():
        for name, value in depth_errors(run.depth, cpu.depth).items():
            results[f"gpu_{precision}_{name}"] = value
    results["gpu_fully_accelerated"] = all(run.fully_accelerated for run in runs.values())
    results["gpu_times_s"] = {f"{p}_{k}": round(getattr(run, f"{k}_s"), 2)
                              for p, run in runs.items() for k in ("compile", "first_run")}
    adapter = parse_selected_adapter(runs["fp32"].native_log)
    results["gpu_adapter"] = adapter.label if adapter else "not reported"
    results["gpu_reference"] = "LiteRT CPU (XNNPACK, fp32) on the fp32 file, same input"
    return results
