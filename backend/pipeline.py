"""One request, start to finish: decoded photo + intrinsics -> metric depth, colormap, cloud, files.

Data flows one way: validate -> crop/resize -> engine -> metric scale -> colormap ->
point cloud -> files. Every stage is timed, so the info panel can show where the time
went (decode is timed by the caller, which does the decoding).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from backend.colormap import colorize, robust_range, with_colorbar
from backend.engine import Engine, EngineError, EngineInfo
from backend.geometry import CloudFilter, depth_stats, distance_3d, metric_depth, point_at, point_cloud
from backend.imageio import ExifCamera, LoadedImage
from backend.intrinsics import CropResize, Intrinsics, crop_resize_for, map_to_network, validate
from backend.outputs import OutputFiles, OutputStore, write_cloud, write_depth
from backend.preprocess import crop_and_resize
from backend.viewer import framing_radius

StageCallback = Callable[[str, float], None]  # (what is about to happen, fraction done)
HOST_PREPROCESS_STAGES = ("decode", "crop_resize")
TRANSFER_STAGES = ("transfer",)  # to the phone and back (USB + adb); absent on the host
NETWORK_STAGES = ("normalize", "compute")  # where the engine runs: the phone's runner or the host CPU


@dataclass(frozen=True)
class PipelineOptions:
    colormap: str = "turbo"
    color_range: tuple[float | None, float | None] = (None, None)  # meters; None = 2nd/98th percentile
    cloud: CloudFilter = field(default_factory=CloudFilter)


@dataclass(frozen=True)
class PipelineResult:
    depth: np.ndarray  # float32 [S, S] metric depth (m) of the network image
    network_rgb: np.ndarray  # uint8 [S, S, 3]: what the network saw (centre crop, resized)
    colored: np.ndarray  # uint8 [S, S, 3]: depth colormap, pixel-aligned with `depth`
    colormap: np.ndarray  # uint8 [S, S + bar, 3]: `colored` with its colorbar in meters
    color_range: tuple[float, float]
    points: int
    view_radius: float  # m from the cloud's bounding-box centre to the viewer's camera (backend.viewer)
    files: OutputFiles | None
    intrinsics: Intrinsics  # of the uploaded (upright) image
    network_intrinsics: Intrinsics  # of the S x S network image
    intrinsics_source: str
    crop: CropResize
    image_size: tuple[int, int]  # (width, height) of the upright upload
    stats: dict[str, float]
    timings_ms: dict[str, float]
    engine: EngineInfo

    def info(self) -> dict:
        """JSON-ready summary for the info panel and the API."""
        model = self.engine.model
        return {
            "engine": self.engine.engine,
            "accelerator": self.engine.accelerator,
            "engine_details": dict(self.engine.details),
            "model": {
                "file": model.path.rsplit("/", 1)[-1], "sha256": model.sha256,
                "name": (model.metadata or {}).get("model", "Metric3D v2 ViT-S (published LiteRT conversion)"),
                "published": model.published, "precision": model.precision,
                "source": model.source, "converter": model.converter,
            },
            "image": {"width": self.image_size[0], "height": self.image_size[1],
                      "crop": {"x0": self.crop.x0, "y0": self.crop.y0, "side": self.crop.side},
                      "network_size": self.crop.size},
            "intrinsics": {"source": self.intrinsics_source, "image": _intr_dict(self.intrinsics),
                           "network": _intr_dict(self.network_intrinsics)},
            "depth_m": {k: _finite_or_none(v) for k, v in self.stats.items()},
            "color_range_m": list(self.color_range),
            "points": self.points,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "timings_split_ms": {k: round(v, 2) for k, v in timing_split(self.timings_ms).items()},
        }


def timing_split(timings_ms: dict[str, float]) -> dict[str, float]:
    """Stage timings grouped into where the time went: host pre-processing, transfer to the
    engine and back, the network itself, and host post-processing (every other stage)."""
    groups = {"host_preprocess": HOST_PREPROCESS_STAGES, "transfer": TRANSFER_STAGES, "network": NETWORK_STAGES}
    split = {name: sum(timings_ms.get(stage, 0.0) for stage in stages) for name, stages in groups.items()}
    grouped = {stage for stages in groups.values() for stage in stages}
    split["host_postprocess"] = sum(v for k, v in timings_ms.items() if k not in grouped)
    split["total"] = sum(timings_ms.values())
    return split


def _intr_dict(intr: Intrinsics) -> dict[str, float]:
    return {k: round(float(getattr(intr, k)), 3) for k in ("fx", "fy", "cx", "cy")}


def _finite_or_none(value: float) -> float | None:
    return round(float(value), 4) if math.isfinite(value) else None


@dataclass(frozen=True)
class NetworkRun:
    """What one network run leaves behind: enough to re-render everything without the network."""

    canonical: np.ndarray  # float32 [S, S] canonical-camera depth (m at canonical_focal_px)
    network_rgb: np.ndarray  # uint8 [S, S, 3]: what the network saw
    crop: CropResize
    image_size: tuple[int, int]  # (width, height) of the upright upload
    engine: EngineInfo
    timings_ms: dict[str, float]  # crop_resize and the engine's stages


def infer(image: LoadedImage, engine: Engine, on_stage: StageCallback | None = None) -> NetworkRun:
    """Crop/resize the photo and run the network once. Raises EngineError (message for the user)."""
    notify = on_stage or (lambda _what, _fraction: None)
    started = time.perf_counter()
    crop = crop_resize_for(image.width, image.height, engine.input_size)
    network_rgb = crop_and_resize(image.rgb, crop)
    timings = {"crop_resize": (time.perf_counter() - started) * 1000.0}
    notify("Running the depth network", 0.2)
    inference = engine.infer(network_rgb)
    timings.update(inference.timings_ms)
    info = engine.info()
    if not np.isfinite(inference.depth).all():
        bad = int((~np.isfinite(inference.depth)).sum())
        raise EngineError(f"The network returned {bad} non-finite depth values (NaN/inf) on "
                          f"{info.engine}, {info.accelerator}, model precision {info.model.precision}.")
    return NetworkRun(np.asarray(inference.depth, dtype=np.float32), network_rgb, crop,
                      (image.width, image.height), info, timings)


def render(net: NetworkRun, intrinsics: Intrinsics, options: PipelineOptions = PipelineOptions(), *,
           source: str = "entered by hand", store: OutputStore | None = None,
           on_stage: StageCallback | None = None) -> PipelineResult:
    """Everything the UI and the API show, derived from one network run and the intrinsics.

    Pure in its inputs (no network): metric depth and the cloud are exact functions of the
    canonical depth and fx, fy, cx, cy, so option and intrinsics changes only re-render.
    Raises IntrinsicsError for intrinsics that cannot describe the photo.
    """
    notify = on_stage or (lambda _what, _fraction: None)
    timings = dict(net.timings_ms)
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = (now - clock) * 1000.0
        clock = now

    width, height = net.image_size
    intrinsics = validate(intrinsics, width, height)
    net_intr = map_to_network(intrinsics, net.crop)
    notify("Scaling to meters and colouring", 0.7)
    depth = metric_depth(net.canonical, net_intr.fx, net.engine.model.canonical_focal_px)
    lap("metric_scale")
    vmin, vmax = options.color_range
    if vmin is None or vmax is None:
        auto_lo, auto_hi = robust_range(depth)
        vmin = auto_lo if vmin is None else vmin
        vmax = auto_hi if vmax is None else vmax
    colored = colorize(depth, options.colormap, vmin, vmax)
    colormap = with_colorbar(colored, vmin, vmax, options.colormap)
    lap("colormap")

    notify("Building the point cloud", 0.8)
    xyz, rgb = point_cloud(depth, net.network_rgb, net_intr, options.cloud)
    view_radius = framing_radius(xyz * np.array([-1.0, -1.0, 1.0], dtype=np.float32))
    lap("point_cloud")
    files = None
    if store is not None:
        notify("Writing the files", 0.9)
        folder = store.new_folder()
        ply, view_ply = write_cloud(folder, xyz, rgb)
        lap("write_ply")
        npy, png = write_depth(folder, depth)
        lap("write_depth")
        files = OutputFiles(folder, npy, png, ply, view_ply)
    stats = depth_stats(depth)
    return PipelineResult(
        depth=depth, network_rgb=net.network_rgb, colored=colored, colormap=colormap,
        color_range=(float(vmin), float(vmax)), points=int(len(xyz)), view_radius=view_radius, files=files,
        intrinsics=intrinsics, network_intrinsics=net_intr, intrinsics_source=source, crop=net.crop,
        image_size=(width, height), stats=stats, timings_ms=timings, engine=net.engine,
    )


def run(image: LoadedImage, intrinsics: Intrinsics, engine: Engine, options: PipelineOptions = PipelineOptions(),
        *, source: str = "entered by hand", store: OutputStore | None = None,
        on_stage: StageCallback | None = None) -> PipelineResult:
    """Run one photo through the network and derive everything the UI and the API return.

    Raises IntrinsicsError for unusable intrinsics (before the network runs) and EngineError
    when the engine fails or returns non-finite depth; both messages are written for the user.
    """
    validate(intrinsics, image.width, image.height)
    return render(infer(image, engine, on_stage), intrinsics, options, source=source, store=store,
                  on_stage=on_stage)


def warm_up(engine: Engine, options: PipelineOptions = PipelineOptions()) -> None:
    """Run a blank image through everything once, so the first user does not pay lazy imports."""
    size = engine.input_size
    blank = LoadedImage(np.full((size, size, 3), 128, np.uint8), ExifCamera(), "PNG", "RGB")
    run(blank, Intrinsics(size, size, (size - 1) / 2, (size - 1) / 2), engine, options)


def measure(depth: np.ndarray, network_intrinsics: Intrinsics,
            p1: tuple[float, float], p2: tuple[float, float]) -> float:
    """3D distance in meters between two clicked pixels (x, y) of the network-size depth map."""
    return distance_3d(depth, network_intrinsics, p1, p2)


def network_to_photo(crop: CropResize, u: float, v: float) -> tuple[float, float]:
    """A network-image pixel (u, v) in the upright photo's pixels: the inverse of the
    pixel-centre-preserving resize (backend.intrinsics): src = x0 + (dst + 0.5) / k - 0.5."""
    return crop.x0 + (u + 0.5) / crop.scale - 0.5, crop.y0 + (v + 0.5) / crop.scale - 0.5


def camera_point(depth: np.ndarray, network_intrinsics: Intrinsics, u: float, v: float) -> np.ndarray:
    """float64 [3] camera-frame point (m, OpenCV axes) under network pixel (u, v); GeometryError if none."""
    return point_at(depth, network_intrinsics, (u, v))
