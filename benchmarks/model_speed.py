"""LiteRT (XNNPACK) vs PyTorch eager on the CPU: the same model, the same input, the same run.

The PyTorch side is the model the .tflite was converted from, rebuilt from the metadata's
`source` (seeded random weights, or the stand-in's seed), so the depth maps must agree; their
largest difference is reported to prove that the two timings are of the same network. Runs
alternate (LiteRT, PyTorch, LiteRT, ...) so a burst of load from other jobs hits both sides.
Both use every core; LiteRT's time is write + run + read (normalization excluded on both sides).
"""
from __future__ import annotations

import re
import statistics

import numpy as np

from backend.host_engine import HostEngine
from backend.model_info import ModelInfo
from backend.preprocess import normalize
from benchmarks.host_post import network_image
from benchmarks.timing import timed_ms


class NoTorchCounterpart(RuntimeError):
    """The model's metadata does not say how to rebuild it in PyTorch."""


def torch_counterpart(info: ModelInfo):
    """The PyTorch module this .tflite was converted from (eval mode), from its embedded source."""
    source = (info.metadata or {}).get("source", {})
    if "random_seed" in source:
        from conversion.model import Metric3D
        from conversion.random_weights import randomize_

        return randomize_(Metric3D(), int(source["random_seed"])).eval()
    if "stand_in" in source:
        import torch

        from conversion.stand_in import StandInDepth

        match = re.fullmatch(r"seed (\d+)", str(source["stand_in"]))
        if match is None:
            raise NoTorchCounterpart(f"stand-in source {source['stand_in']!r} does not name its seed")
        torch.manual_seed(int(match.group(1)))  # the same draws as conversion.stand_in.build_stand_in
        return StandInDepth(info.input_size).eval()
    raise NoTorchCounterpart(
        f"{info.path} was not converted from seeded random weights (source: {info.source}); "
        "benchmark a model made by `python -m conversion convert --random-weights 0`")


def _depth(output) -> np.ndarray:
    tensor = output["depth"] if isinstance(output, dict) else output
    return tensor.detach().numpy().reshape(tensor.shape[-2], tensor.shape[-1])


def measure_model_speed(engine: HostEngine, repeats: int, threads: int) -> dict[str, float]:
    """litert_cpu_ms, torch_eager_ms, litert_speedup and the largest depth difference between them.

    `threads` must be what `engine` was created with; PyTorch gets the same number.
    """
    import torch

    torch.set_num_threads(threads)
    info = engine.info().model
    module = torch_counterpart(info)
    rgb, _ = network_image(engine.input_size)
    tensor = torch.from_numpy(normalize(rgb, info.mean, info.std))
    litert_ms: list[float] = []
    torch_ms: list[float] = []
    with torch.inference_mode():
        torch_depth = _depth(module(tensor))  # warm-up (the engine warmed up when it loaded)
        for _ in range(repeats):
            inference = engine.infer(rgb)
            litert_ms.append(inference.timings_ms["compute"])
            elapsed, _ = timed_ms(lambda: module(tensor))
            torch_ms.append(elapsed)
    litert, eager = statistics.median(litert_ms), statistics.median(torch_ms)
    return {
        "litert_cpu_ms": litert, "torch_eager_ms": eager, "litert_speedup": eager / litert,
        "litert_torch_max_abs_diff_m": float(np.max(np.abs(inference.depth - torch_depth))),
    }
