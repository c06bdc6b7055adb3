"""Host-side cost of one request apart from the network: preprocessing and post-processing.

Both figures come from the app's own pipeline (backend.pipeline.run, files written to a
temp store) on a 448 x 448 network image, using its per-stage timings:
- host_post_ms: the stages the budget covers - crop/resize (a copy at 448), normalize,
  metric scaling, colormap + colorbar, point cloud and the PLY files;
- host_request_ms: everything the request does besides the network (the above plus the
  depth .npy/.png files, statistics and result assembly), the wall time minus the engine.
The engine is the stand-in model on the host: its depth map is smooth like a real one, so
the point filters keep a realistic ~200k points.
host_pre_ms is the framing (default field of view) of a typical 12 MP phone photo (4032 x 3024) at 448.
rerender_ms is the live re-render (backend.pipeline.rerender: new intrinsics, colormap and
filters from the kept canonical depth, files included, no network) of a 448 x 448 photo;
rerender_12mp_ms the same for the 12 MP photo, whose depth downloads are 2048 x 1536, and
rerender_recolour_12mp_ms a colormap-only change there (the previous result's files reused).
"""
from __future__ import annotations

import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from backend.engine import Engine
from backend.framing import CENTRE_SQUARE, framing_for
from backend.geometry import CloudFilter
from backend.imageio import ExifCamera, LoadedImage, load_image
from backend.intrinsics import Intrinsics, centered
from backend.outputs import OutputStore
from backend.pipeline import PipelineOptions, estimate, rerender, run
from backend.preprocess import frame_photo
from benchmarks.timing import median_ms, medians, timed_ms

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "motorcycle.png"
PHOTO_SIZE = (4032, 3024)  # a 12 MP 4:3 phone photo
NOT_HOST = ("compute", "transfer")  # engine stages: the network's time, not the host's
BUDGET_STAGES = ("crop_resize", "normalize", "metric_scale", "colormap", "point_cloud", "write_ply")


def example_rgb() -> tuple[np.ndarray, Intrinsics]:
    """The Middlebury motorcycle photo and its calibration (a real scene with real depth edges)."""
    calib = json.loads(EXAMPLE.with_suffix(".json").read_text())
    rgb = np.asarray(Image.open(EXAMPLE).convert("RGB"), dtype=np.uint8)
    return rgb, Intrinsics(calib["fx"], calib["fy"], calib["cx"], calib["cy"])


def network_image(size: int) -> tuple[np.ndarray, Intrinsics]:
    """The example as the network sees it (centre crop resized to size) and its intrinsics there."""
    rgb, intr = example_rgb()
    framing = framing_for(rgb.shape[1], rgb.shape[0], size, CENTRE_SQUARE)
    return frame_photo(rgb, framing), framing.network_intrinsics(intr)


def typical_photo(width: int = PHOTO_SIZE[0], height: int = PHOTO_SIZE[1]) -> np.ndarray:
    """A 12 MP photo with real image content: the example scaled up (resize cost ignores content)."""
    rgb, _ = example_rgb()
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8)


def measure_host_pre(size: int, repeats: int) -> dict[str, float]:
    """host_pre_ms (framing of 4032 x 3024 at size) and host_decode_ms (its JPEG decode)."""
    photo = typical_photo()
    framing = framing_for(photo.shape[1], photo.shape[0], size)
    pre = median_ms(lambda: frame_photo(photo, framing), repeats)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    decode = median_ms(lambda: load_image(jpeg), repeats)
    return {"host_pre_ms": pre, "host_decode_ms": decode, "host_photo_jpeg_bytes": float(len(jpeg))}


def measure_host_post(engine: Engine, repeats: int) -> dict[str, object]:
    """host_post_ms and host_request_ms (medians over requests) and the per-stage medians."""
    rgb, intr = network_image(engine.input_size)
    image = LoadedImage(rgb, ExifCamera(), "PNG", "RGB")
    options = PipelineOptions()
    budget: list[float] = []
    request: list[float] = []
    stages: list[dict[str, float]] = []
    points = 0
    with tempfile.TemporaryDirectory(prefix="metric3d-bench-") as tmp:
        store = OutputStore(Path(tmp), keep=2)
        run(image, intr, engine, options, store=store)  # warm-up: lazy imports, colormap tables, fonts
        for _ in range(repeats):
            wall, result = timed_ms(lambda: run(image, intr, engine, options, store=store))
            missing = [k for k in BUDGET_STAGES if k not in result.timings_ms]
            if missing:
                raise KeyError(f"the pipeline no longer reports the stages {missing}; update BUDGET_STAGES")
            network = sum(result.timings_ms.get(k, 0.0) for k in NOT_HOST)
            host = {k: v for k, v in result.timings_ms.items() if k not in NOT_HOST}
            host["other"] = max(wall - network - sum(host.values()), 0.0)
            budget.append(sum(host[k] for k in BUDGET_STAGES))
            request.append(wall - network)
            stages.append(host)
            points = result.points
        store.cleanup()
    return {"host_post_ms": statistics.median(budget), "host_request_ms": statistics.median(request),
            "host_post_breakdown_ms": medians(stages), "host_post_points": float(points)}


# What a user changes between re-renders: the focal, the colormap and range, the filters, cycled.
_RERENDER_STEPS = (
    (1.00, PipelineOptions()),
    (1.10, PipelineOptions(colormap="viridis")),
    (0.90, PipelineOptions(colormap="magma", color_range=(1.0, 8.0))),
    (1.05, PipelineOptions(cloud=CloudFilter(min_depth=0.5, max_depth=20.0, edge_threshold=0.02))),
)


def _median_rerender(rgb: np.ndarray, intr: Intrinsics, engine: Engine, repeats: int) -> tuple[float, float]:
    """Median wall time and median process CPU time of rerender() with files, cycling through
    _RERENDER_STEPS. The CPU time (all threads of this process) hardly changes when other jobs
    share the cores; the wall time does."""
    image = LoadedImage(rgb, ExifCamera(), "PNG", "RGB")
    est = estimate(image, engine)
    walls: list[float] = []
    cpus: list[float] = []
    with tempfile.TemporaryDirectory(prefix="metric3d-bench-") as tmp:
        store = OutputStore(Path(tmp), keep=2)
        for n in range(repeats + 1):  # the first is a warm-up: lazy imports, colormap tables, fonts
            scale, options = _RERENDER_STEPS[n % len(_RERENDER_STEPS)]
            changed = Intrinsics(intr.fx * scale, intr.fy * scale, intr.cx, intr.cy)
            cpu_start = time.process_time()
            wall, _ = timed_ms(lambda: rerender(est, changed, options, store=store))
            if n:
                walls.append(wall)
                cpus.append((time.process_time() - cpu_start) * 1000.0)
        store.cleanup()
    return statistics.median(walls), statistics.median(cpus)


def _median_recolour(rgb: np.ndarray, intr: Intrinsics, engine: Engine, repeats: int) -> float:
    """Median wall time of a colormap-only rerender() given the result on screen (files reused)."""
    est = estimate(LoadedImage(rgb, ExifCamera(), "PNG", "RGB"), engine)
    maps = ("viridis", "magma", "turbo", "gray")
    with tempfile.TemporaryDirectory(prefix="metric3d-bench-") as tmp:
        store = OutputStore(Path(tmp), keep=4)
        shown = rerender(est, intr, store=store)
        walls = []
        for n in range(repeats + 1):
            options = PipelineOptions(colormap=maps[n % len(maps)])
            wall, shown = timed_ms(lambda: rerender(est, intr, options, store=store, previous=shown))
            if n:
                walls.append(wall)
        store.cleanup()
    return statistics.median(walls)


def measure_rerender(engine: Engine, repeats: int) -> dict[str, float]:
    """rerender_ms (448 x 448 photo), rerender_12mp_ms (4032 x 3024, 2048 x 1536 downloads),
    their process CPU times (*_cpu_ms) and rerender_recolour_12mp_ms (colormap change only, 12 MP)."""
    rgb, intr = network_image(engine.input_size)
    photo = typical_photo()
    height, width = photo.shape[:2]
    photo_intr = centered(0.8 * width, width, height)
    wall, cpu = _median_rerender(rgb, intr, engine, repeats)
    wall_12mp, cpu_12mp = _median_rerender(photo, photo_intr, engine, repeats)
    return {"rerender_ms": wall, "rerender_cpu_ms": cpu, "rerender_12mp_ms": wall_12mp,
            "rerender_12mp_cpu_ms": cpu_12mp,
            "rerender_recolour_12mp_ms": _median_recolour(photo, photo_intr, engine, repeats)}
