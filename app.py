"""Metric3D v2 (ViT-S) metric depth demo: Gradio UI and API wiring.

The work happens in backend/ (decode, intrinsics, pipeline, files) and device/ (the Pixel
runner link); this file lays out the page, maps widgets to backend calls, turns errors into
readable messages, and sets how the server is exposed (backend/serving.py).

Layout of this file: the app context (engines, result store, examples), the handlers (module
level, each takes the context first), one request function shared by the page and the API,
the page (`demo`, importable, so `gradio app.py` reload works), and main().

    python app.py [--model PATH] [--backend auto|host|host-gpu|device] [--serial SERIAL] [--runner-dir DIR]
                  [--host 127.0.0.1] [--port 7860] [--allowed-host NAME] [--share] [--temp-dir DIR]
                  [--keep-results SECONDS] [--disk-quota MB]
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse  # noqa: E402 - the analytics switch must be set before gradio is imported
import functools  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import typing  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
import gradio.route_utils as gradio_route_utils  # noqa: E402
import numpy as np  # noqa: E402
from gradio.data_classes import FileData  # noqa: E402
from PIL import Image  # noqa: E402

import serving_app  # noqa: E402
from backend import fields, serving  # noqa: E402
from backend.colormap import COLORMAPS  # noqa: E402
from backend.engine import EngineError  # noqa: E402
from backend.examples import ExampleCatalog, suggest_intrinsics  # noqa: E402
from backend.framing import DEFAULT_FIELD_OF_VIEW, FIELDS_OF_VIEW  # noqa: E402
from backend.geometry import MAX_METRIC_DEPTH, CloudFilter, GeometryError, metric_depth, point_at  # noqa: E402
from backend.imageio import ImageError, LoadedImage, load_image  # noqa: E402
from backend.intrinsics import BY_HAND, PRESETS, Intrinsics, IntrinsicsError, validate  # noqa: E402
from backend.probe import probe_image  # noqa: E402
from backend.model_files import ModelNotFound, resolve_model  # noqa: E402
from backend.outputs import MAX_PNG_MM, OutputStore  # noqa: E402
from backend.panels import info_markdown, intrinsics_line, status_line, status_markdown  # noqa: E402
from backend.pipeline import (  # noqa: E402
    Estimate, PipelineOptions, PipelineResult, rerender as rerender_result, run, warm_up)
from backend.viewer import VIEW_ANGLES_DEG  # noqa: E402
from device.adb import DEFAULT_ADB_PORT  # noqa: E402
from device.backends import BACKEND_LABELS, BACKENDS, Backends, Pick, runner_files_in  # noqa: E402

log = logging.getLogger("metric3d.app")
REPO = Path(__file__).resolve().parent
EXAMPLES_DIR = REPO / "examples"
FRONTEND = REPO / "frontend"
PAGE_CSS = (FRONTEND / "page.css").read_text(encoding="utf-8")
PAGE_JS = (FRONTEND / "page.js").read_text(encoding="utf-8")  # the measure tool's clicks, the viewer's loading sign
FROM_PHOTO = "From the photo (EXIF or example calibration)"
VIEWER_BACKGROUND = (0.80, 0.81, 0.83, 1.0)  # neutral light grey: dark and bright photos both show
MEASURE_SCALE = 2  # the measure image is the network image at 2x: clicks land on half pixels
USER_ERRORS = (ImageError, IntrinsicsError, GeometryError, EngineError, fields.FieldError)


# ----------------------------------------------------------------------------- app context


@dataclass(frozen=True)
class AppContext:
    """What every handler needs: the shared engines, where result files go, the examples."""

    backends: Backends
    default_backend: str
    store: OutputStore
    catalog: ExampleCatalog


_context: AppContext | None = None
_context_lock = threading.Lock()


def set_context(ctx: AppContext | None) -> None:
    global _context
    with _context_lock:
        _context = ctx


def context() -> AppContext:
    """The running app's context; under `gradio app.py` (no main()) one with the defaults, made
    on the first request, so importing this module never starts engines or makes folders."""
    global _context
    with _context_lock:
        if _context is None:
            args = parse_args([])
            _context = AppContext(make_backends(resolve_model(args.model).path), args.backend,
                                  OutputStore(max_age_s=args.keep_results), ExampleCatalog(EXAMPLES_DIR))
        return _context


def adb_server_port() -> int:
    """The adb server port: ANDROID_ADB_SERVER_PORT as adb itself reads it, else adb's default."""
    value = os.environ.get("ANDROID_ADB_SERVER_PORT", "")
    if not value:
        return DEFAULT_ADB_PORT
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise EngineError(f"ANDROID_ADB_SERVER_PORT={value!r} is not a TCP port number.")
    return int(value)


def make_backends(model_path: Path, serial: str | None = None, runner_dir: str | None = None) -> Backends:
    """The shared engines; the phone uses the Android runner build, or the runner in `runner_dir`."""
    from backend.host_engine import HostEngine
    from device.engine import DeviceEngine
    from device.session import LinkSettings

    def device_engine() -> DeviceEngine:
        files = runner_files_in(runner_dir) if runner_dir else None
        return DeviceEngine(model_path, serial, LinkSettings(adb_port=adb_server_port()), files)

    return Backends(lambda: HostEngine(model_path), device_engine,
                    lambda allow_software: HostEngine(model_path, accelerator="gpu", allow_software_gpu=allow_software))


def with_context(handler: Callable) -> Callable:
    """`handler(ctx, *inputs)` as the `fn(*inputs)` Gradio calls; Gradio reads the signature
    (for gr.Progress and gr.SelectData), so the wrapper shows it without `ctx`."""
    @functools.wraps(handler)
    def bound(*args, **kwargs):
        return handler(context(), *args, **kwargs)

    hints = typing.get_type_hints(handler)  # real types, not the strings of `from __future__ import annotations`
    params = [p.replace(annotation=hints.get(p.name, p.annotation))
              for p in list(inspect.signature(handler).parameters.values())[1:]]
    bound.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        params, return_annotation=hints.get("return", inspect.Signature.empty))
    bound.__annotations__ = {k: v for k, v in hints.items() if k != "ctx"}
    del bound.__wrapped__
    return bound


# ----------------------------------------------------------------------------- errors


def user_error(exc: Exception, title: str) -> gr.Error:
    """An expected failure as the message a person reads; the server log gets one line."""
    message = serving.public_text(str(exc))
    log.info("%s: %s", title, message.partition("\n")[0])
    return gr.Error(message, title=title, print_exception=False)


def call_safely(title: str, work: Callable[[], Any]) -> Any:
    """work(), with expected failures as readable gr.Errors; the server keeps serving."""
    try:
        return work()
    except USER_ERRORS as exc:
        raise user_error(exc, title) from None
    except gr.Error:
        raise
    except Exception as exc:  # noqa: BLE001 - last line of defence for a public demo
        log.exception("unexpected failure")
        raise gr.Error(serving.public_text(f"Unexpected error ({type(exc).__name__}: {exc}). "
                                           "Details are in the server log."),
                       title=title, print_exception=False) from None


def read_intrinsics(fx, fy, cx, cy) -> Intrinsics:
    """The four fields as Intrinsics (pixels of the uploaded photo); a missing or malformed one
    is named (backend.fields: plain decimals only, finite)."""
    missing = [n for n, v in zip(("fx", "fy", "cx", "cy"), (fx, fy, cx, cy)) if v is None or v == ""]
    if missing:
        raise IntrinsicsError(f"Please fill in {', '.join(missing)} (pixels of the uploaded photo).")
    return Intrinsics(*(fields.number(n, v) for n, v in zip(("fx", "fy", "cx", "cy"), (fx, fy, cx, cy))))


def read_options(cmap, min_depth, max_depth, edge, voxel, fov: str = DEFAULT_FIELD_OF_VIEW) -> PipelineOptions:
    """The display and point-cloud fields as PipelineOptions; each bad field is named."""
    if cmap not in COLORMAPS:
        raise IntrinsicsError(f"Unknown colormap {cmap!r}; choose one of {', '.join(COLORMAPS)}.")
    if fov not in FIELDS_OF_VIEW:
        raise IntrinsicsError(f"Unknown field of view {fov!r}; choose one of {', '.join(FIELDS_OF_VIEW.values())}.")
    return PipelineOptions(colormap=cmap, field_of_view=fov,
                           cloud=fields.cloud_filter(min_depth, max_depth, edge or 0.0, voxel or 0.0))


# ----------------------------------------------------------------------------- the request


def decode(path: str | None) -> tuple[LoadedImage, float]:
    """The upright photo (decoded once per request) and the decode time in ms."""
    if path is None or path == "":
        raise ImageError("Please upload a photo or pick an example first.")
    started = time.perf_counter()
    image = load_image(path)
    return image, (time.perf_counter() - started) * 1000.0


@dataclass(frozen=True)
class Computed:
    result: PipelineResult  # result.estimate: the network's canonical depth, kept for re-rendering
    pick: Pick


def compute(ctx: AppContext, path: str | None, intrinsics: Intrinsics, options: PipelineOptions,
            choice: str, provenance: dict[str, str], on_stage: Callable[[str, float], None] | None = None) -> Computed:
    """One depth request, page or API: decode once, check the intrinsics, run the network on
    the chosen backend, render everything. Raises the USER_ERRORS with readable messages."""
    notify = on_stage or (lambda _what, _fraction: None)
    notify("Decoding the photo", 0.05)
    image, decode_ms = decode(path)
    validate(intrinsics, image.width, image.height)  # before the network: a typo costs no run
    notify("Framing the photo for the network", 0.1)

    def work(pick: Pick) -> PipelineResult:
        where = "the Pixel" if pick.where == "device" else "the host CPU"
        return run(image, intrinsics, pick.engine, options, **provenance, store=ctx.store,
                   on_stage=lambda what, f: notify(f"{what} on {where}" if "network" in what else what, f))

    result, pick = ctx.backends.run(choice, work)
    result.timings_ms["decode"] = decode_ms
    return Computed(result, pick)


def backend_info(info: dict, choice: str, pick: Pick, with_notice: bool) -> dict:
    """The result's info plus the backend asked for and the one that ran (and, for the API,
    the fallback notice; the page shows it once, in its status line)."""
    info["backend"] = {"requested": choice, "used": pick.where}
    if pick.notice and with_notice:
        info["engine_details"]["notice"] = pick.notice
    return info


# ----------------------------------------------------------------------------- the API

API_REQUEST = {"source": "API request", "confidence": "calibrated", "reason": "fx, fy, cx, cy sent with the request"}


def predict(ctx: AppContext, image: FileData, fx: float, fy: float, cx: float, cy: float,
            backend: str | None = None) -> tuple[FileData, FileData, FileData, dict]:
    """Photo + intrinsics (pixels of the photo) [+ backend auto|host|device, default: the server's]
    -> depth colormap .png, point cloud .ply (m, OpenCV camera axes), depth .npy (m), info."""
    choice = backend or ctx.default_backend

    def work() -> tuple[FileData, FileData, FileData, dict]:
        path = image.get("path") if isinstance(image, dict) else getattr(image, "path", None)
        done = compute(ctx, path, read_intrinsics(fx, fy, cx, cy), PipelineOptions(), choice, API_REQUEST)
        files = done.result.files
        colormap = files.folder / "depth_colormap.png"
        Image.fromarray(done.result.colormap).save(colormap, compress_level=1)
        info = backend_info(done.result.info(), choice, done.pick, with_notice=True)
        return (FileData(path=str(colormap)), FileData(path=str(files.ply)), FileData(path=str(files.depth_npy)),
                info)

    return call_safely("Cannot compute depth", work)


def intrinsics_api(ctx: AppContext, image: FileData) -> dict:
    """Photo -> the intrinsics the page suggests (pixels of the upright photo): width, height,
    fx, fy, cx, cy, source, confidence (calibrated, exif, exif-uncertain or assumed) and reason."""

    def work() -> dict:
        path = image.get("path") if isinstance(image, dict) else getattr(image, "path", None)
        if not path:
            raise ImageError("Please send a photo.")
        facts = probe_image(path)  # size and EXIF from the header: no full decode for a light step
        return {"width": facts.width, "height": facts.height,
                **suggest_intrinsics(facts, path, ctx.catalog).as_dict()}

    return call_safely("Cannot read this photo", work)


def status_api(ctx: AppContext) -> dict:
    """Where requests run: the phone in use (model, serial, runner, accelerator) or why not."""
    return serving.public_data(ctx.backends.status())


def look_for_phone_api(ctx: AppContext) -> dict:
    """Look for the phone again (after plugging it in); returns the new status."""
    ctx.backends.look_for_phone()
    return serving.public_data(ctx.backends.status())


# ----------------------------------------------------------------------------- page handlers


@dataclass(frozen=True)
class PhotoResult:
    """What a browser session keeps of its current photo (gr.State): one network run (the
    Estimate: canonical depth on the network grid and on the download grid, the network image,
    the framing), the last good intrinsics and options, the measure clicks and counters.
    Never the upload itself."""

    photo: str
    estimate: Estimate
    backend: dict
    intrinsics: Intrinsics
    source: dict[str, str]  # IntrinsicsChoice.provenance(): source, confidence, reason
    options: PipelineOptions
    network_runs: int = 1
    rerenders: int = 0
    rerender_ms: float | None = None
    clicks: tuple[tuple[float, float], ...] = field(default_factory=tuple)  # network-image pixels, at most 2
    failed: str = ""  # the message of the last failed request, so one mistake gives one toast


def _photo_name(path: str | None) -> str:
    return Path(path).name if path else "the photo"


def show_status(ctx: AppContext, choice: str | None):
    status = ctx.backends.status()
    choice = choice or ctx.default_backend
    return (gr.Accordion(label=serving.public_text(status_line(status, choice), limit=None)),
            serving.public_text(status_markdown(status, choice), limit=None))


def page_loaded(ctx: AppContext):
    return (gr.Radio(value=ctx.default_backend), *show_status(ctx, ctx.default_backend))


def choose_backend(ctx: AppContext, choice: str):
    if choice != "host" and not ctx.backends.status()["looked_for_phone"]:
        ctx.backends.look_for_phone()
    return show_status(ctx, choice)


def look_again(ctx: AppContext, choice: str):
    ctx.backends.look_for_phone()
    return show_status(ctx, choice)


EMPTY_HINT = "Upload a photo or pick an example to fill in the intrinsics."
NO_RESULT = "No result yet: press **Estimate depth**."


def cleared_results(message: str) -> tuple:
    """Values for RESULT_OUTPUTS that empty every result at once (a new photo, or none)."""
    return (None, None, None, None, "Press **Estimate depth**, then click two points on the photo.", None,
            message, None, None, "")


def describe(ctx: AppContext, path: str | None):
    """A new photo (upload, example, remove): fill in the intrinsics, clear the old results."""
    if not path:
        return (None, None, None, None, EMPTY_HINT, None, FROM_PHOTO, None, *cleared_results(NO_RESULT))
    cleared = (*cleared_results(f"New photo **{_photo_name(path)}**: press **Estimate depth**.")[:-1],
               f"New photo **{_photo_name(path)}**: the old results are cleared; press **Estimate depth**.")
    try:
        image = probe_image(path)  # size and EXIF from the header: no full decode for a light step
        choice = suggest_intrinsics(image, path, ctx.catalog)
    except USER_ERRORS as exc:
        message = serving.public_text(str(exc))
        toast("Cannot read this photo", message)
        return (None, None, None, None, EMPTY_HINT, None, FROM_PHOTO, None,
                *cleared[:-1], f"⚠️ **Cannot read this photo:** {message}")
    k = choice.intrinsics
    return (round(k.fx, 3), round(k.fy, 3), round(k.cx, 3), round(k.cy, 3), intrinsics_line(choice.provenance()),
            choice.provenance(), FROM_PHOTO, (image.width, image.height), *cleared)


def apply_preset(ctx: AppContext, preset: str, path: str | None, size: tuple[int, int] | None):
    if preset == FROM_PHOTO:
        return describe(ctx, path)[:7]
    if size is None:
        toast("No photo yet", "Upload a photo first: presets depend on its size.")
        return (gr.skip(),) * 7
    choice = PRESETS[preset](*size)
    k = choice.intrinsics
    return (round(k.fx, 3), round(k.fy, 3), round(k.cx, 3), round(k.cy, 3), intrinsics_line(choice.provenance()),
            choice.provenance(), preset)


def edited_by_hand(ctx: AppContext):
    return intrinsics_line(BY_HAND), BY_HAND


def _viewer(result: PipelineResult) -> gr.Model3D:
    return gr.Model3D(str(result.files.view_ply), camera_position=(*VIEW_ANGLES_DEG, result.view_radius))


def _shown(state: PhotoResult, result: PipelineResult, fov: str) -> tuple:
    """RESULT_OUTPUTS for a good result of `state`'s photo (the banner keeps a pending field-of-view change)."""
    info = result.info()
    info["backend"] = state.backend
    info["session"] = {"photo": state.photo, "network_runs": state.network_runs, "rerenders": state.rerenders,
                       "rerender_ms": None if state.rerender_ms is None else round(state.rerender_ms, 1)}
    files = [str(result.files.depth_npy), str(result.files.depth_png), str(result.files.intrinsics_json),
             str(result.files.ply)]
    picture = measure_image(state.estimate) if state.rerenders == 0 else gr.skip()  # same picture: clicks stay
    content = result.framing.content
    return (result.colormap, (result.network_rgb[content], result.colored[content]), _viewer(result), picture,
            measure_readout(state),
            files, info_markdown(info), info, state, field_of_view_changed(None, fov, state))


def toast(title: str, message: str) -> None:
    """A message in the page's corner. Gradio 6.31 heads every toast with its kind ("Warning")
    whatever the title, so the title leads the text. A warning, not gr.Error: raising would
    mark every output of the event as failed and hide the last good result."""
    log.info("%s: %s", title, message.partition("\n")[0])
    gr.Warning(f"<b>{title}:</b> {message}", title=title)


def _kept(title: str, exc: Exception, state: PhotoResult | None) -> tuple:
    """RESULT_OUTPUTS after a failed request: every result stays, the banner says why and whose."""
    message = serving.public_text(str(exc))
    if state is None or state.failed != message:
        toast(title, message)
    kept = (f" The results below are still those of **{state.photo}** (last good settings)."
            if state is not None else "")
    new_state = gr.skip() if state is None else replace(state, failed=message)
    return (*(gr.skip(),) * 8, new_state, f"⚠️ **{title}:** {message}{kept}")


def estimate(ctx: AppContext, path, fx, fy, cx, cy, source, cmap, min_depth, max_depth, edge, voxel, fov, choice,
             state: PhotoResult | None, progress=gr.Progress()):
    """Estimate depth button: run the network on the photo, keep the run for re-rendering."""
    choice = choice or ctx.default_backend
    try:
        intrinsics = read_intrinsics(fx, fy, cx, cy)
        options = read_options(cmap, min_depth, max_depth, edge, voxel, fov)
        done = compute(ctx, path, intrinsics, options, choice, source or BY_HAND,
                       lambda what, f: progress(f, desc=what))
    except USER_ERRORS as exc:
        return (*_kept("Cannot compute depth", exc, state), *show_status(ctx, choice))
    runs = state.network_runs + 1 if state is not None and state.photo == _photo_name(path) else 1
    new = PhotoResult(_photo_name(path), done.result.estimate, {"requested": choice, "used": done.pick.where},
                      intrinsics, source or BY_HAND, options, network_runs=runs)
    return (*_shown(new, done.result, fov), *show_status(ctx, choice))


def rerender(ctx: AppContext, fx, fy, cx, cy, source, cmap, min_depth, max_depth, edge, voxel, fov,
             state: PhotoResult | None):
    """An option or intrinsics change: re-derive everything from the kept run, no network."""
    if state is None:
        return (gr.skip(),) * 10
    started = time.perf_counter()
    try:
        intrinsics = read_intrinsics(fx, fy, cx, cy)
        options = read_options(cmap, min_depth, max_depth, edge, voxel)
        options = replace(options, field_of_view=state.estimate.framing.mode)  # a new view needs the network
        source = source or BY_HAND
        if intrinsics != state.intrinsics and source == state.source:
            # New numbers under the old source can only be typed: the field's own "edited by
            # hand" event may not have reached the session state yet (they run side by side).
            source = BY_HAND
        if (intrinsics, options, source) == (state.intrinsics, state.options, state.source) and not state.failed:
            return (gr.skip(),) * 10  # a field left without a change: nothing to redraw
        result = rerender_result(state.estimate, intrinsics, options, **source, store=ctx.store)
    except USER_ERRORS as exc:
        return _kept("Cannot redraw", exc, state)
    new = replace(state, intrinsics=intrinsics, source=source, options=options,
                  rerenders=state.rerenders + 1, rerender_ms=(time.perf_counter() - started) * 1000.0, failed="")
    return _shown(new, result, fov)


def estimate_new_view(ctx: AppContext, path, fx, fy, cx, cy, source, cmap, min_depth, max_depth, edge, voxel, fov,
                      choice, state: PhotoResult | None, progress=gr.Progress()):
    """A new field of view: the network must see the new framing, so a result on screen is
    estimated again (without one, the choice waits for the button)."""
    if state is None:
        return (gr.skip(),) * 12
    return estimate(ctx, path, fx, fy, cx, cy, source, cmap, min_depth, max_depth, edge, voxel, fov, choice, state,
                    progress)


def field_of_view_changed(ctx: AppContext | None, fov: str, state: PhotoResult | None) -> str:
    """While a new field of view is being computed, say that the results on screen are the old view's."""
    if state is None or state.estimate.framing.mode == fov:
        return ""
    return (f"Field of view: **{FIELDS_OF_VIEW.get(fov, fov)}** — the network is running on it. The results below "
            f"are still **{state.photo}** in the {FIELDS_OF_VIEW[state.estimate.framing.mode]} view.")


def _metric(state: PhotoResult) -> tuple[np.ndarray, Intrinsics]:
    """Metric depth on the network grid (NaN on padding) and its intrinsics, for the measure tool."""
    net_intr = state.estimate.framing.network_intrinsics(state.intrinsics)
    return metric_depth(state.estimate.canonical, net_intr.fx, state.estimate.canonical_focal), net_intr


def measure_image(est: Estimate) -> np.ndarray:
    """The picture to click on: the part of the network image that shows the photo, at
    MEASURE_SCALE x (the browser draws the markers)."""
    picture = est.network_rgb[est.framing.content]
    height, width = picture.shape[:2]
    return np.asarray(Image.fromarray(np.ascontiguousarray(picture)).resize(
        (width * MEASURE_SCALE, height * MEASURE_SCALE), Image.Resampling.BILINEAR))


def measure_readout(state: PhotoResult) -> str:
    """The clicked points in the photo's own pixels, their 3D points (m, camera axes: x right,
    y down, z forward) and the distance between them."""
    if not state.clicks:
        return "Click two points on the photo to measure the distance between them in 3D."
    depth, net_intr = _metric(state)
    lines, points = [], []
    for number, (u, v) in enumerate(state.clicks, 1):
        px, py = (float(c) for c in state.estimate.framing.network_to_photo(u, v))
        try:
            point = point_at(depth, net_intr, (u, v))
        except GeometryError as exc:
            lines.append(f"Point {number} at photo pixel ({px:.0f}, {py:.0f}): {exc}")
            continue
        points.append(point)
        lines.append(f"Point {number} at photo pixel ({px:.0f}, {py:.0f}): "
                     f"({point[0]:.3f}, {point[1]:.3f}, {point[2]:.3f}) m")
    if len(points) == 2:
        lines.insert(0, f"**Distance: {float(np.linalg.norm(points[0] - points[1])):.3f} m**")
    elif len(state.clicks) == 1:
        lines.append("Click a second point.")
    return "  \n".join(lines)


def measure_clicks(ctx: AppContext, clicks: str, state: PhotoResult | None):
    """The browser's click list for the measure image (frontend/page.js keeps it and presses the
    hidden #measure-send button, whose `js` step reads it, so no click is lost whatever the
    timing: each event carries every click of the pair, in order, and with
    trigger_mode="always_last" the newest list is handled last). Points are in the measure
    image's pixels, continuous (pixel centres at +0.5)."""
    if state is None:
        return "Press **Estimate depth** first.", gr.skip()
    try:
        doc = json.loads(clicks or "{}")
        points = [(float(x), float(y)) for x, y in doc.get("points", [])][-2:]
    except (ValueError, TypeError):
        return gr.skip(), gr.skip()
    framing = state.estimate.framing
    new = replace(state, clicks=tuple((x / MEASURE_SCALE - 0.5 + framing.left, y / MEASURE_SCALE - 0.5 + framing.top)
                                      for x, y in points))
    return measure_readout(new), new


# ----------------------------------------------------------------------------- the page


_gradio_sweep = gradio_route_utils.delete_files_created_by_app


def _sweep_retrying(blocks, age):
    """Gradio 6.31's delete_cache sweep iterates sets that requests grow meanwhile; one "Set
    changed size during iteration" ends its task for good and the temp folder then grows
    without bound (benchmarks/soak.py). Retry instead, so the sweep task lives on."""
    for _ in range(10):
        try:
            return _gradio_sweep(blocks, age)
        except RuntimeError:
            time.sleep(0.01)
    return None


gradio_route_utils.delete_files_created_by_app = _sweep_retrying


class PhotoInput(gr.Image):
    """gr.Image whose upload reaches backend.imageio even when Pillow cannot open it.

    gr.Image opens every upload with Pillow before the handler runs; a file Pillow cannot
    open (text, HEIC, a decompression bomb) then fails inside Gradio, and the page shows
    only red "Error" badges. Passing the raw path on lets load_image say what is wrong.
    (Gradio writes a type stub, app.pyi, for every component subclass; it is gitignored.)
    """

    def get_block_name(self) -> str:
        return "image"  # the same browser component as gr.Image

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except Exception:  # noqa: BLE001 - load_image explains every failure in words
            return str(payload.path) if payload is not None and payload.path else None


def build_demo(keep_results_s: int = serving.DEFAULT_RESULT_MAX_AGE_S) -> gr.Blocks:
    """Lay out the page and connect it to the handlers (no engine is touched here)."""
    light = serving.LIGHT_CONCURRENCY
    depth_pool = {"concurrency_id": serving.DEPTH_POOL, "concurrency_limit": serving.DEPTH_CONCURRENCY}
    phone_pool = {"concurrency_id": "phone", "concurrency_limit": 1}  # one phone search at a time
    private = {"api_visibility": "private"}
    catalog = ExampleCatalog(EXAMPLES_DIR)
    with warnings.catch_warnings():
        # Gradio 6 takes css/js in launch() and warns when Blocks gets them; given here they also
        # reach the page under `gradio app.py`, whose reload runner calls demo.launch() itself.
        warnings.simplefilter("ignore", UserWarning)
        page = gr.Blocks(title="Metric3D v2 metric depth (LiteRT)", delete_cache=serving.cache_schedule(keep_results_s),
                         css=PAGE_CSS, js=PAGE_JS)
    with page as demo:
        gr.Markdown(
            "## Metric3D v2 — metric depth from one photo\n"
            "Depth in meters from one photo and the camera's focal length in pixels (filled in from EXIF or an "
            "example's calibration when known), computed on a USB-connected Pixel or on this computer's CPU.",
            elem_id="intro")
        with gr.Accordion("Looking at the backends…", open=False, elem_id="backend-panel") as backend_panel:
            with gr.Row():
                backend = gr.Radio([(BACKEND_LABELS[b], b) for b in ("auto", "device", "host", "host-gpu")],
                                   value="auto", label="Backend", scale=3)
                look_btn = gr.Button("Look for the phone again", scale=1)
            status_md = gr.Markdown("", elem_id="status-panel")
        size_state = gr.State(None)
        source_state = gr.State(None)
        photo_state = gr.State(None, time_to_live=keep_results_s)  # as long as the result files live
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320):
                image = PhotoInput(type="filepath", image_mode=None, label="Photo", sources=["upload", "clipboard"],
                                   height=300, elem_id="photo-input")
                gr.Examples([[str(e.path)] for e in catalog.examples], inputs=[image], label="Examples",
                            example_labels=[e.path.stem for e in catalog.examples])
                run_btn = gr.Button("Estimate depth", variant="primary", elem_id="estimate")
                notice_md = gr.Markdown("", elem_id="notice")
                with gr.Group():
                    preset = gr.Dropdown([FROM_PHOTO, *PRESETS], value=FROM_PHOTO, label="Camera")
                    with gr.Row(elem_id="intrinsics-row"):
                        fx = gr.Textbox(label="fx (px)", placeholder="from the photo", min_width=80)
                        fy = gr.Textbox(label="fy (px)", placeholder="from the photo", min_width=80)
                        cx = gr.Textbox(label="cx (px)", placeholder="from the photo", min_width=80)
                        cy = gr.Textbox(label="cy (px)", placeholder="from the photo", min_width=80)
                    source_md = gr.Markdown(EMPTY_HINT)
                    fov = gr.Radio([(label, value) for value, label in FIELDS_OF_VIEW.items()],
                                   value=DEFAULT_FIELD_OF_VIEW, label="Field of view",
                                   info="Full photo: the whole frame, padded to the network's square. "
                                        "Centre square: the middle square only.")
                with gr.Accordion("Display and point-cloud options (redraw at once, no network run)", open=False):
                    cmap = gr.Dropdown(list(COLORMAPS), value="turbo", label="Colormap")
                    with gr.Row():
                        min_depth = gr.Number(0.1, label="Nearest point kept (m)")
                        max_depth = gr.Number(MAX_METRIC_DEPTH, label="Farthest point kept (m)")
                    edge = gr.Slider(0.0, 0.5, value=0.05, step=0.01, label="Remove depth edges (relative jump, 0 = off)")
                    voxel = gr.Slider(0.0, 0.2, value=0.0, step=0.005, label="Voxel size for thinning (m, 0 = off)")
            with gr.Column(scale=6, min_width=320):
                with gr.Row(equal_height=False):
                    colormap = gr.Image(label="Depth (meters)", format="png", interactive=False,
                                        elem_id="depth-colormap", height=340, min_width=300)
                    with gr.Column(min_width=300):
                        measure_img = gr.Image(label="Measure: click two points",
                                               interactive=False, format="jpeg", elem_id="measure-image",
                                               height=300)
                        measure_md = gr.Markdown("Press **Estimate depth**, then click two points on the photo.",
                                                 elem_id="measure-readout")
                        clicks_box = gr.Textbox(elem_id="measure-clicks", show_label=False, container=False)
                        clicks_btn = gr.Button("Measure", elem_id="measure-send")
                cloud = gr.Model3D(label="Point cloud (viewer copy, turned 180° for display; the camera-frame "
                                         "file is point_cloud.ply in Downloads)",
                                   display_mode="point_cloud", clear_color=VIEWER_BACKGROUND,
                                   camera_position=(*VIEW_ANGLES_DEG, None), height=420, elem_id="point-cloud")
                with gr.Accordion("Info", open=True, elem_id="info-panel"):
                    info_md = gr.Markdown(NO_RESULT, elem_id="info-text")
                    with gr.Accordion("All details (JSON, as the API returns them)", open=False):
                        info_json = gr.JSON(label="All details", open=True)
                downloads = gr.File(label=f"Downloads at the photo's resolution: depth .npy (m), depth 16-bit PNG "
                                          f"(mm; 0 = no depth or beyond {MAX_PNG_MM / 1000:g} m), intrinsics.json "
                                          "(their K), point cloud .ply (m, camera axes)",
                                    file_count="multiple", interactive=False)
                slider = gr.ImageSlider(label="What the network saw vs depth", type="numpy", interactive=False)

        results = [colormap, slider, cloud, measure_img, measure_md, downloads, info_md, info_json, photo_state,
                   notice_md]
        status_out = [backend_panel, status_md]
        intr_fields = [fx, fy, cx, cy, source_md, source_state, preset]
        render_inputs = [fx, fy, cx, cy, source_state, cmap, min_depth, max_depth, edge, voxel, fov, photo_state]
        redraw = {"trigger_mode": "always_last", "show_progress": "hidden", "concurrency_limit": light, **private}

        demo.load(with_context(page_loaded), None, [backend, *status_out], concurrency_limit=light, **private)
        backend.input(with_context(choose_backend), [backend], status_out, **phone_pool, **private)
        look_btn.click(with_context(look_again), [backend], status_out, **phone_pool, **private)
        image.change(with_context(describe), [image], [*intr_fields, size_state, *results], concurrency_limit=light,
                     **private)
        preset.input(with_context(apply_preset), [preset, image, size_state], intr_fields, concurrency_limit=light,
                     **private).then(with_context(rerender), render_inputs, results, **redraw)
        for number in (fx, fy, cx, cy):
            number.input(with_context(edited_by_hand), None, [source_md, source_state], concurrency_limit=light,
                         **private)
        for number in (fx, fy, cx, cy, min_depth, max_depth):
            number.submit(with_context(rerender), render_inputs, results, **redraw)
            number.blur(with_context(rerender), render_inputs, results, **redraw)
        cmap.input(with_context(rerender), render_inputs, results, **redraw)
        for slider_input in (edge, voxel):
            slider_input.release(with_context(rerender), render_inputs, results, **redraw)
        run_btn.click(with_context(estimate),
                      [image, fx, fy, cx, cy, source_state, cmap, min_depth, max_depth, edge, voxel, fov, backend,
                       photo_state], [*results, *status_out], **private, **depth_pool)
        # A new field of view changes what the network sees: with a result on screen, it runs the network again.
        fov.input(with_context(estimate_new_view),
                  [image, fx, fy, cx, cy, source_state, cmap, min_depth, max_depth, edge, voxel, fov, backend,
                   photo_state], [*results, *status_out], **private, **depth_pool)
        clicks_btn.click(with_context(measure_clicks), [clicks_box, photo_state], [measure_md, photo_state],
                         js="(clicks, state) => [window.metric3dMeasureClicks(), state]",
                         trigger_mode="always_last", show_progress="hidden", concurrency_limit=light, **private)

        gr.api(with_context(predict), api_name="predict", **depth_pool)
        gr.api(with_context(intrinsics_api), api_name="intrinsics", concurrency_limit=light)
        gr.api(with_context(status_api), api_name="status", concurrency_limit=light)
        gr.api(with_context(look_for_phone_api), api_name="look_for_phone", **phone_pool)
    return demo


demo = build_demo()


# ----------------------------------------------------------------------------- start-up


def _positive_seconds(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1 second")
    return value


def _positive_megabytes(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1 MB")
    return value


def _host_name(text: str) -> str:
    try:
        return serving.host_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Metric3D v2 metric depth demo (LiteRT).")
    parser.add_argument("--model", help="path to a .tflite (default: $METRIC3D_MODEL, cache, or download)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="where the network runs: the host CPU, the host GPU (LiteRT WebGPU), the Pixel "
                             "over adb (device), or auto: the Pixel when one is connected, else the host GPU "
                             "if it is a hardware one, else the host CPU (default)")
    parser.add_argument("--serial", help="which phone, when several are connected (see `adb devices`)")
    parser.add_argument("--runner-dir", help="push the runner and the .so files in this folder instead of the "
                                             "`python -m device build-android` build")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this computer only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--allowed-host", action="append", default=[], type=_host_name, metavar="NAME",
                        help="also answer requests addressed to this host name (repeatable); by default only "
                             "IP addresses and localhost are accepted, which stops DNS-rebinding pages")
    parser.add_argument("--share", action="store_true",
                        help="also publish a public link (anyone with it can use this machine and phone)")
    parser.add_argument("--temp-dir", help="where the private per-run folder for uploads and results is made "
                                           "(default: the system temp folder)")
    parser.add_argument("--keep-results", type=_positive_seconds, default=serving.DEFAULT_RESULT_MAX_AGE_S,
                        metavar="SECONDS", help="delete uploads and result files this long after they were made "
                                                f"(default {serving.DEFAULT_RESULT_MAX_AGE_S})")
    parser.add_argument("--disk-quota", type=_positive_megabytes, default=serving.DISK_QUOTA_BYTES // 2**20,
                        metavar="MB", help="most space uploads, results and cached copies may take together; "
                                           f"uploads beyond it are refused (default {serving.DISK_QUOTA_BYTES // 2**20})")
    return parser.parse_args(argv)


def start_pruner(store: OutputStore, every_s: float) -> threading.Event:
    """Remove expired result folders every `every_s` seconds until the returned event is set."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            store.prune()

    threading.Thread(target=loop, name="prune-results", daemon=True).start()
    return stop


def _stop_on_sigterm(signum, frame) -> None:
    """SIGTERM ends the server like Ctrl+C, so the phone's runner is stopped and temp files removed."""
    raise KeyboardInterrupt


def start_engines(args: argparse.Namespace, model_path: Path) -> Backends:
    """The engines, with the one for --backend started and warmed up (exits with a message if it cannot)."""
    backends = make_backends(model_path, args.serial, args.runner_dir)
    try:
        if args.backend == "device" and not backends.look_for_phone():
            raise EngineError(f"{backends.status()['device_problem']}\n(--backend auto runs on the host CPU "
                              "when the phone is missing.)")
        _, pick = backends.run(args.backend, lambda p: warm_up(p.engine))
    except BaseException:
        backends.close()
        raise
    info = pick.engine.info()
    print(f"Model: {model_path}; backend {args.backend}: {info.engine}, {info.accelerator}", flush=True)
    if pick.notice:
        print(pick.notice, file=sys.stderr, flush=True)
    return backends


def banner(args: argparse.Namespace, url: str, share_url: str | None) -> str:
    """What the console says once the page is up (Gradio's own lines are silenced: its advice
    to set share=True in launch() is not how this app is switched)."""
    lines = [f"Open {url} in a browser."]
    if share_url:
        lines.append(f"Public link (anyone who has it can use this machine): {share_url}")
    elif args.host in serving.LOOPBACK_HOSTS:
        lines.append("Only this computer can open it; `--host 0.0.0.0` serves your network, `--share` makes a "
                     "public link.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Gradio self-check otherwise
    serving_app.install_log_limit()
    args = parse_args(argv)
    for warning in serving.exposure_warnings(args.host, args.share):
        print(warning, file=sys.stderr, flush=True)
    try:
        resolved = resolve_model(args.model)
        print(f"Model file: {resolved.path} ({resolved.origin})", flush=True)
        backends = start_engines(args, resolved.path)
    except (ModelNotFound, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    private = serving.make_private_dir(args.temp_dir)
    os.environ["GRADIO_TEMP_DIR"] = str(serving.private_subdir(private, "gradio"))  # uploads + Gradio's cache
    store = OutputStore(root=private, max_age_s=args.keep_results)
    stop_pruning = start_pruner(store, serving.cache_schedule(args.keep_results)[0])
    set_context(AppContext(backends, args.backend, store, ExampleCatalog(EXAMPLES_DIR)))
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        page = build_demo(args.keep_results)  # anew: Gradio reads GRADIO_TEMP_DIR when components are made
        serving_app.serve(page, serving_app.ServeOptions(
            host=args.host, port=args.port, share=args.share, allowed_hosts=tuple(args.allowed_host),
            private_dir=private, upload_dir=Path(os.environ["GRADIO_TEMP_DIR"]),
            disk_quota_bytes=args.disk_quota * 2**20),
            on_ready=lambda url, share_url: print(banner(args, url, share_url), flush=True),
            theme=gr.themes.Default(), css=PAGE_CSS, js=PAGE_JS, allowed_paths=[str(store.root), str(EXAMPLES_DIR)],
            max_file_size=serving.MAX_UPLOAD_BYTES, show_error=False)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        stop_pruning.set()
        backends.close()
        serving.remove_private_dir(private)
    return 0


def reload_mode() -> bool:
    """True under `gradio app.py`: its reload runner runs this file as __main__ (and again after
    every change) and watches `demo`; the context is then made on the first request."""
    return bool(os.environ.get("GRADIO_WATCH_DIRS"))


if __name__ == "__main__":
    if reload_mode():
        demo.launch()  # Gradio's reload runner: serves and swaps `demo` on every change
    else:
        raise SystemExit(main())
