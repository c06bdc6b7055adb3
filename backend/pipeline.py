"""One request, start to finish: decoded photo + intrinsics -> metric depth, colormap, cloud, files.

Two halves, so that option changes never run the network again (issue 11, "live re-rendering"):
- estimate(): frame the photo (backend.framing), run the engine, keep its canonical depth
  (and that depth upsampled to the download grid) in an immutable Estimate. Only a new photo
  or a new field of view needs this.
- rerender(): from an Estimate, derive metric depth for any fx, fy, cx, cy, the colormap with
  its colorbar, the filtered point cloud, the files and the info. Pure apart from writing
  files into the optional OutputStore; milliseconds at 448 x 448 (benchmarks: rerender_ms).
run() is the two in a row. Every stage is timed, so the info panel can show where the time
went (decode is timed by the caller, which does the decoding).

Metric scale (upstream Metric3D): depth = canonical x fx' / canonical_focal, fx' the focal at
network resolution in either field of view, clamped to [0, 300] m. Padding (full photo) and
the sides a centre square leaves out carry no depth (NaN) and are excluded from the colormap
range, the statistics, the cloud and the files.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from backend.colormap import colorize, robust_range, with_colorbar
from backend.engine import Engine, EngineError, EngineInfo
from backend.framing import (
    CENTRE_SQUARE,
    DEFAULT_FIELD_OF_VIEW,
    FIELDS_OF_VIEW,
    DownloadGrid,
    Framing,
    download_grid,
    framing_for,
    upsample_to_grid,
)
from backend.geometry import (
    CloudFilter,
    GeometryError,
    depth_stats,
    distance_3d,
    metric_depth,
    point_at,
    point_cloud,
)
from backend.imageio import ExifCamera, LoadedImage
from backend.intrinsics import Confidence, Intrinsics, validate
from backend.outputs import MAX_PNG_MM, OutputFiles, OutputStore, count_beyond_png_range, write_cloud, write_depth
from backend.preprocess import frame_photo, pad_rgb
from backend.viewer import framing_radius

StageCallback = Callable[[str, float], None]  # (what is about to happen, fraction done)
HOST_PREPROCESS_STAGES = ("decode", "crop_resize")
TRANSFER_STAGES = ("transfer",)  # to the phone and back (USB + adb); absent on the host
NETWORK_STAGES = ("normalize", "compute")  # where the engine runs: the phone's runner or the host CPU
RENDER_STAGES = ("metric_scale", "colormap", "point_cloud", "write_ply", "write_depth")  # what rerender() repeats
PIXEL_CONVENTION = "OpenCV: pixel (u, v) has its centre at integer (u, v); its ray is ((u - cx) / fx, (v - cy) / fy, 1)"


@dataclass(frozen=True)
class PipelineOptions:
    colormap: str = "turbo"
    color_range: tuple[float | None, float | None] = (None, None)  # meters; None = 2nd/98th percentile
    cloud: CloudFilter = field(default_factory=CloudFilter)
    field_of_view: str = DEFAULT_FIELD_OF_VIEW  # backend.framing; the only option that needs the network again


@dataclass(frozen=True, eq=False)
class Estimate:
    """What the network said about one photo in one field of view: all a re-render needs.

    The arrays are read-only, so one Estimate can be kept per browser session and shared
    by concurrent re-renders.
    """

    canonical: np.ndarray  # float32 [S, S] canonical depth (m for a focal of canonical_focal px at S); NaN on padding
    canonical_grid: np.ndarray  # float32 [grid.height, grid.width]: upsampled (bilinear); NaN outside the framed box
    network_rgb: np.ndarray  # uint8 [S, S, 3]: what the network saw (padding in the normalization mean)
    framing: Framing
    grid: DownloadGrid
    canonical_focal: float  # px at network resolution (1000 for Metric3D)
    engine: EngineInfo
    timings_ms: dict[str, float]  # the stages that made it: crop_resize, [transfer,] normalize, compute, upsample

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the upright photo."""
        return self.framing.photo_width, self.framing.photo_height


@dataclass(frozen=True)
class PipelineResult:
    depth: np.ndarray  # float32 [S, S] metric depth (m) on the network grid; NaN on padding
    valid: np.ndarray  # bool [S, S]: network pixels that show the photo (False = padding)
    network_rgb: np.ndarray  # uint8 [S, S, 3]: what the network saw (framed photo + padding)
    colored: np.ndarray  # uint8 [S, S, 3]: depth colormap, pixel-aligned with `depth`; padding black
    colormap: np.ndarray  # uint8 [h, w + bar, 3]: `colored` cut to the photo's content box, with its colorbar
    color_range: tuple[float, float]
    points: int
    view_radius: float  # m from the cloud's bounding-box centre to the 3D viewer's camera (backend.viewer)
    files: OutputFiles | None
    intrinsics: Intrinsics  # of the uploaded (upright) image
    network_intrinsics: Intrinsics  # of the S x S network image (the cloud's grid)
    grid_depth: np.ndarray  # float32 [grid.height, grid.width] metric depth on the download grid; NaN = none
    grid_intrinsics: Intrinsics  # of the download grid (what intrinsics.json holds)
    beyond_png_range: int  # grid pixels with depth beyond 65.535 m: written as 0 ("no depth") in the PNG
    intrinsics_source: str
    intrinsics_confidence: Confidence
    intrinsics_reason: str
    framing: Framing
    grid: DownloadGrid
    image_size: tuple[int, int]  # (width, height) of the upright upload
    stats: dict[str, float]  # over the network pixels that show the photo
    timings_ms: dict[str, float]  # what this call spent: every stage for run(), the derived ones for rerender()
    engine: EngineInfo
    rerendered: bool  # True when derived from a kept Estimate without running the network
    options: PipelineOptions  # what it was rendered with
    estimate: Estimate = field(repr=False)  # the kept canonical depth it came from (for rerender)

    @property
    def render_ms(self) -> float:
        """Time spent deriving this result from the canonical depth (the re-render cost)."""
        return sum(v for k, v in self.timings_ms.items() if k in RENDER_STAGES)

    def info(self) -> dict:
        """JSON-ready summary for the info panel and the API."""
        model = self.engine.model
        info = {
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
                      "network_size": self.framing.size, **self.framing.info()},
            "intrinsics": {"source": self.intrinsics_source, "confidence": self.intrinsics_confidence,
                           "reason": self.intrinsics_reason, "image": _intr_dict(self.intrinsics),
                           "network": _intr_dict(self.network_intrinsics),
                           "downloads": _intr_dict(self.grid_intrinsics)},
            "downloads": {"width": self.grid.width, "height": self.grid.height,
                          "long_side_cap": self.grid.cap, "capped": self.grid.is_capped,
                          "upsampled_from": f"network {self.framing.content_width} x {self.framing.content_height}"
                                            " (bilinear)",
                          "beyond_png_range_pixels": self.beyond_png_range,
                          "png_far_limit_m": MAX_PNG_MM / 1000.0},
            "point_cloud_grid": f"network {self.framing.content_width} x {self.framing.content_height}",
            "depth_m": {k: _finite_or_none(v) for k, v in self.stats.items()},
            "color_range_m": list(self.color_range),
            "points": self.points,
            "rerendered": self.rerendered,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "timings_split_ms": {k: round(v, 2) for k, v in timing_split(self.timings_ms).items()},
        }
        if self.rerendered:
            info["rerender_ms"] = round(self.render_ms, 2)
        return info


def timing_split(timings_ms: dict[str, float]) -> dict[str, float]:
    """Stage timings grouped into where the time went: host pre-processing, transfer to the
    engine and back, the network itself, and host post-processing (every other stage)."""
    groups = {"host_preprocess": HOST_PREPROCESS_STAGES, "transfer": TRANSFER_STAGES, "network": NETWORK_STAGES}
    split = {name: sum(timings_ms.get(stage, 0.0) for stage in stages) for name, stages in groups.items()}
    grouped = {stage for stages in groups.values() for stage in stages}
    split["host_postprocess"] = sum(v for k, v in timings_ms.items() if k not in grouped)
    split["total"] = sum(timings_ms.values())
    return split


def _intr_dict(intr: Intrinsics, digits: int = 3) -> dict[str, float]:
    return {k: round(float(getattr(intr, k)), digits) for k in ("fx", "fy", "cx", "cy")}


def _finite_or_none(value: float) -> float | None:
    return round(float(value), 4) if math.isfinite(value) else None


def estimate(image: LoadedImage, engine: Engine, field_of_view: str = DEFAULT_FIELD_OF_VIEW,
             *, on_stage: StageCallback | None = None) -> Estimate:
    """Frame the photo, run the network once, keep its canonical depth (network and download grids).

    Raises ValueError for an unknown field of view and EngineError when the engine fails or
    returns non-finite depth (message written for the user).
    """
    notify = on_stage or (lambda _what, _fraction: None)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    framing = framing_for(image.width, image.height, engine.input_size, field_of_view)
    info = engine.info()
    network_rgb = frame_photo(image.rgb, framing, pad_rgb(info.model.mean))
    timings["crop_resize"] = (time.perf_counter() - start) * 1000.0

    notify("Running the depth network", 0.2)
    inference = engine.infer(network_rgb)
    timings.update(inference.timings_ms)
    start = time.perf_counter()
    canonical = np.array(inference.depth, dtype=np.float32)
    if canonical.shape != (framing.size, framing.size):
        raise EngineError(f"The engine returned depth of shape {canonical.shape}, expected "
                          f"{framing.size} x {framing.size}.")
    if not np.isfinite(canonical).all():
        bad = int((~np.isfinite(canonical)).sum())
        raise EngineError(f"The network returned {bad} non-finite depth values (NaN/inf) on "
                          f"{info.engine}, {info.accelerator}, model precision {info.model.precision}.")
    grid = download_grid(image.width, image.height)
    canonical_grid = upsample_to_grid(canonical, framing, grid)
    canonical[~framing.valid_mask()] = np.nan
    for array in (canonical, canonical_grid, network_rgb):
        array.setflags(write=False)
    timings["upsample"] = (time.perf_counter() - start) * 1000.0
    return Estimate(canonical, canonical_grid, network_rgb, framing, grid,
                    float(info.model.canonical_focal_px), info, timings)


def rerender(est: Estimate, intrinsics: Intrinsics, options: PipelineOptions = PipelineOptions(), *,
             source: str = "entered by hand", confidence: Confidence = "calibrated",
             reason: str = "entered by the user", store: OutputStore | None = None,
             on_stage: StageCallback | None = None, previous: PipelineResult | None = None) -> PipelineResult:
    """Everything that follows from kept canonical depth, for new intrinsics and options.

    No network run: metric depth, colormap, cloud, files (when `store` is given) and info.
    `previous`, a result of the same Estimate (e.g. the one on screen), lets unchanged parts
    be reused: with the same intrinsics and source its depth files, with the same cloud
    filter too its point cloud and PLY files (a colormap or colour-range change then writes
    nothing). Raises IntrinsicsError for intrinsics that cannot describe the photo,
    ValueError when options.field_of_view differs from the Estimate's (that needs
    estimate() again) or the colormap / colour range is unusable.
    """
    return _derive(est, intrinsics, options, (source, confidence, reason), store, on_stage, spent={},
                   rerendered=True, previous=previous)


def run(image: LoadedImage, intrinsics: Intrinsics, engine: Engine, options: PipelineOptions = PipelineOptions(),
        *, source: str = "entered by hand", confidence: Confidence = "calibrated",
        reason: str = "entered by the user", store: OutputStore | None = None,
        on_stage: StageCallback | None = None) -> PipelineResult:
    """Run one photo through the network and derive everything the UI and the API return.

    Raises IntrinsicsError for unusable intrinsics (before the network runs) and EngineError
    when the engine fails or returns non-finite depth; both messages are written for the user.
    """
    validate(intrinsics, image.width, image.height)
    est = estimate(image, engine, options.field_of_view, on_stage=on_stage)
    return _derive(est, intrinsics, options, (source, confidence, reason), store, on_stage, spent=est.timings_ms,
                   rerendered=False)


def _derive(est: Estimate, intrinsics: Intrinsics, options: PipelineOptions,
            provenance: tuple[str, Confidence, str], store: OutputStore | None, on_stage: StageCallback | None, spent: dict[str, float],
            rerendered: bool, previous: PipelineResult | None = None) -> PipelineResult:
    notify = on_stage or (lambda _what, _fraction: None)
    source, confidence, reason = provenance
    if options.field_of_view != est.framing.mode:
        raise ValueError(f"this depth was computed for the {FIELDS_OF_VIEW[est.framing.mode]} view; "
                         f"the {FIELDS_OF_VIEW.get(options.field_of_view, options.field_of_view)} view "
                         "needs the network again")
    timings: dict[str, float] = dict(spent)
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = (now - clock) * 1000.0
        clock = now

    width, height = est.image_size
    framing, grid = est.framing, est.grid
    intrinsics = validate(intrinsics, width, height)
    net_intr = framing.network_intrinsics(intrinsics)
    grid_intr = grid.intrinsics(intrinsics)

    # What a previous result of the same Estimate already holds for the same camera (its
    # files, when they are still in the store): a colormap change writes no files at all.
    same = (previous if previous is not None and previous.estimate is est and previous.intrinsics == intrinsics
            and previous.intrinsics_source == source else None)
    old = same.files if same is not None else None
    keep_depth = same is not None and (store is None or (old is not None and store.refresh(old.depth_npy.parent)))
    keep_cloud = (same is not None and same.options.cloud == options.cloud
                  and (store is None or (old is not None and store.refresh(old.ply.parent))))

    notify("Scaling to meters and colouring", 0.7)
    depth = metric_depth(est.canonical, net_intr.fx, est.canonical_focal)
    grid_depth = same.grid_depth if keep_depth else metric_depth(est.canonical_grid, net_intr.fx, est.canonical_focal)
    lap("metric_scale")
    vmin, vmax = options.color_range
    if vmin is None or vmax is None:
        auto_lo, auto_hi = robust_range(depth)
        vmin = auto_lo if vmin is None else vmin
        vmax = auto_hi if vmax is None else vmax
    colored = colorize(depth, options.colormap, vmin, vmax)
    colormap = with_colorbar(np.ascontiguousarray(colored[framing.content]), vmin, vmax, options.colormap)
    lap("colormap")

    if keep_cloud:
        points, center = same.points, same.view_radius
    else:
        notify("Building the point cloud", 0.8)
        xyz, rgb = point_cloud(depth, est.network_rgb, net_intr, options.cloud)
        points, center = int(len(xyz)), framing_radius(xyz * np.array([-1.0, -1.0, 1.0], dtype=np.float32))
        lap("point_cloud")
    files = None
    beyond = same.beyond_png_range if keep_depth else count_beyond_png_range(grid_depth)
    if store is not None:
        folder = old.folder if keep_depth and keep_cloud else store.new_folder()
        if keep_cloud:
            ply, view_ply = old.ply, old.view_ply
        else:
            ply, view_ply = write_cloud(folder, xyz, rgb)
            lap("write_ply")
        if keep_depth:
            npy, png, meta = old.depth_npy, old.depth_png, old.intrinsics_json
        else:
            npy, png, meta, beyond = write_depth(folder, grid_depth, _grid_doc(est, intrinsics, grid_intr, source))
            lap("write_depth")
        files = OutputFiles(folder, npy, png, meta, ply, view_ply, beyond)
    stats = depth_stats(depth[framing.content])
    return PipelineResult(
        depth=depth, valid=framing.valid_mask(), network_rgb=est.network_rgb, colored=colored, colormap=colormap,
        color_range=(float(vmin), float(vmax)), points=points, view_radius=center, files=files,
        intrinsics=intrinsics, network_intrinsics=net_intr, grid_depth=grid_depth, grid_intrinsics=grid_intr,
        beyond_png_range=beyond, intrinsics_source=source,
        intrinsics_confidence=confidence, intrinsics_reason=reason, framing=framing, grid=grid,
        image_size=(width, height), stats=stats, timings_ms=timings, engine=est.engine, rerendered=rerendered,
        options=options, estimate=est,
    )


def _grid_doc(est: Estimate, photo: Intrinsics, grid_intr: Intrinsics, source: str) -> dict:
    """What intrinsics.json says about the depth files' pixel grid."""
    width, height = est.image_size
    return {**_intr_dict(grid_intr, 6),
            "units": {"fx, fy, cx, cy": "pixels of this grid", "depth": "m (.npy), mm (.png)"},
            "pixel_convention": PIXEL_CONVENTION, "depth_kind": "z-depth (along the optical axis), not range",
            "field_of_view": FIELDS_OF_VIEW[est.framing.mode],
            "no_depth": ("outside the centre square the network saw" if est.framing.mode == CENTRE_SQUARE
                         else "none: the full photo was seen"),
            "long_side_cap": est.grid.cap, "downscaled_from_photo": est.grid.is_capped,
            "photo": {"width": width, "height": height, **_intr_dict(photo, 6)},
            "intrinsics_source": source,
            "upsampled_from": {"network_size": est.framing.size, **est.framing.info()["network_box"],
                               "method": "bilinear, pixel centres on pixel centres, content box only"}}


def warm_up(engine: Engine, options: PipelineOptions = PipelineOptions()) -> None:
    """Run a blank image through everything once, so the first user does not pay lazy imports."""
    size = engine.input_size
    blank = LoadedImage(np.full((size, size, 3), 128, np.uint8), ExifCamera(), "PNG", "RGB")
    run(blank, Intrinsics(size, size, (size - 1) / 2, (size - 1) / 2), engine, options)


def measure(depth: np.ndarray, network_intrinsics: Intrinsics,
            p1: tuple[float, float], p2: tuple[float, float]) -> float:
    """3D distance in meters between two clicked pixels (x, y) of the network-size depth map."""
    return distance_3d(depth, network_intrinsics, p1, p2)


def photo_point(result: PipelineResult, p: tuple[float, float]) -> np.ndarray:
    """float64 [3] camera-frame point (m, OpenCV axes) under photo pixel p = (x, y).

    The depth is the download grid's pixel nearest to p (the photo's own pixel when the photo
    is within the cap), back-projected with the grid's K: the point the .npy file gives.
    Raises GeometryError outside the photo or where there is no depth (outside the centre square).
    """
    width, height = result.image_size
    u, v = float(p[0]), float(p[1])
    if not (math.isfinite(u) and math.isfinite(v) and -0.5 <= u < width - 0.5 and -0.5 <= v < height - 0.5):
        raise GeometryError(f"Point ({p[0]:g}, {p[1]:g}) is outside the {width} x {height} photo.")
    i, j = result.grid.from_photo(u, v)
    i = min(max(int(round(float(i))), 0), result.grid.width - 1)
    j = min(max(int(round(float(j))), 0), result.grid.height - 1)
    z = float(result.grid_depth[j, i])
    if not (math.isfinite(z) and z > 0):
        where = " (outside the centre square the network saw)" if result.framing.mode == CENTRE_SQUARE else ""
        raise GeometryError(f"There is no depth at photo pixel ({u:.0f}, {v:.0f}){where}; pick another point.")
    return point_at(result.grid_depth, result.grid_intrinsics, (i, j))


def measure_photo(result: PipelineResult, p1: tuple[float, float],
                  p2: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, float]:
    """(point 1, point 2, distance in m) for two clicks in photo pixel coordinates (see photo_point)."""
    a, b = photo_point(result, p1), photo_point(result, p2)
    return a, b, float(np.linalg.norm(a - b))
