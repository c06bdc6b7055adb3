"""Metric3D v2 (ViT-S) metric depth demo: Gradio UI and API wiring.

The work happens in backend/ (decode, intrinsics, pipeline, files); this file only lays
out the page, maps widgets to backend calls and turns errors into readable messages.

    python app.py [--model PATH] [--backend auto|host|device] [--host 127.0.0.1] [--port 7860]
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse  # noqa: E402 - the analytics switch must be set before gradio is imported
import atexit  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from backend.engine import Engine, EngineError  # noqa: E402
from backend.examples import ExampleCatalog, suggest_intrinsics  # noqa: E402
from backend.geometry import MAX_METRIC_DEPTH, CloudFilter, GeometryError  # noqa: E402
from backend.imageio import DEFAULT_MAX_BYTES, ImageError, load_image  # noqa: E402
from backend.intrinsics import PRESETS, Intrinsics, IntrinsicsError  # noqa: E402
from backend.model_files import ModelNotFound, resolve_model  # noqa: E402
from backend.outputs import OutputStore  # noqa: E402
from backend.pipeline import PipelineOptions, PipelineResult, measure, run, warm_up  # noqa: E402
from backend.colormap import COLORMAPS  # noqa: E402

log = logging.getLogger("metric3d.app")
REPO = Path(__file__).resolve().parent
EXAMPLES_DIR = REPO / "examples"
FROM_PHOTO = "From the photo (EXIF or example calibration)"
BACKENDS = ("auto", "host", "device")
VIEW_ANGLES = (-100.0, 80.0)  # just off the photo's viewpoint (-90, 90), so the relief shows
CSS = """
#info-panel table { font-size: 0.9em; }
footer { display: none !important; }
"""


def make_engine(backend: str, model_path: Path) -> Engine:
    """The engine for --backend; 'auto' uses the host CPU while the Pixel backend is unavailable."""
    from backend.host_engine import HostEngine

    if backend not in BACKENDS:
        raise EngineError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend in ("device", "auto"):
        reason = "this app build does not include the Pixel runner link"
        if backend == "device":
            raise EngineError(f"Pixel backend not available: {reason}.")
        print(f"Pixel backend not available: {reason}; running on the host CPU.", file=sys.stderr)
    return HostEngine(model_path)


@contextlib.contextmanager
def user_errors():
    """Show every expected failure as a readable message; the server keeps serving."""
    try:
        yield
    except (ImageError, IntrinsicsError, GeometryError, EngineError) as exc:
        raise gr.Error(str(exc), title="Cannot compute depth") from exc
    except gr.Error:
        raise
    except Exception as exc:  # noqa: BLE001 - last line of defence for a public demo
        log.exception("unexpected failure")
        raise gr.Error(f"Unexpected error ({type(exc).__name__}: {exc}). Details are in the server log.") from exc


def _intrinsics(fx, fy, cx, cy) -> Intrinsics:
    missing = [n for n, v in zip(("fx", "fy", "cx", "cy"), (fx, fy, cx, cy)) if v is None]
    if missing:
        raise IntrinsicsError(f"Please fill in {', '.join(missing)} (pixels of the uploaded photo).")
    return Intrinsics(float(fx), float(fy), float(cx), float(cy))


def _load(path: str | None):
    if not path:
        raise ImageError("Please upload a photo or pick an example first.")
    started = time.perf_counter()
    image = load_image(path)
    return image, (time.perf_counter() - started) * 1000.0


def _fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}{unit}"


def info_markdown(info: dict) -> str:
    """The info panel: what ran, which model, which camera, where the time went."""
    model, intr, depth = info["model"], info["intrinsics"], info["depth_m"]
    kind = ("published LiteRT conversion — known to deviate from upstream Metric3D"
            if model["published"] else f"this project's conversion ({model['source']})")
    timings = " · ".join(f"{k} {v:.1f} ms" for k, v in info["timings_ms"].items())
    total = sum(info["timings_ms"].values())
    i, n = intr["image"], intr["network"]
    return "\n\n".join([
        f"**Engine:** {info['engine']} — {info['accelerator']}",
        f"**Model:** {model['name']} · `{model['file']}` · {model['precision']} · sha256 `{model['sha256'][:12]}…`",
        f"**Model origin:** {kind}",
        f"**Intrinsics source:** {intr['source']}",
        f"| | fx | fy | cx | cy |\n|---|---|---|---|---|\n"
        f"| photo ({info['image']['width']}×{info['image']['height']}) | {i['fx']:.1f} | {i['fy']:.1f} | {i['cx']:.1f} | {i['cy']:.1f} |\n"
        f"| network ({info['image']['network_size']}²) | {n['fx']:.1f} | {n['fy']:.1f} | {n['cx']:.1f} | {n['cy']:.1f} |",
        f"**Depth (m):** min {_fmt(depth['min'])} · median {_fmt(depth['median'])} · max {_fmt(depth['max'])}"
        f" · 2–98 % {_fmt(depth['p2'])}–{_fmt(depth['p98'])} · {info['points']:,} points",
        f"**Timings:** {timings} · **total {total:.0f} ms**",
    ])


def build_demo(engine: Engine, store: OutputStore, catalog: ExampleCatalog) -> gr.Blocks:
    """Lay out the page and connect it to the backend."""
    engine_info = engine.info()
    light = 8  # concurrency of the cheap handlers (form filling, measuring)

    def describe(path: str | None):
        if not path:
            return None, None, None, None, "Upload a photo to fill in the intrinsics.", "", FROM_PHOTO, None
        with user_errors():
            image, _ = _load(path)
        choice = suggest_intrinsics(image, path, catalog)
        k = choice.intrinsics
        return (round(k.fx, 3), round(k.fy, 3), round(k.cx, 3), round(k.cy, 3), _source_line(choice.source),
                choice.source, FROM_PHOTO, (image.width, image.height))

    def apply_preset(preset: str, path: str | None, size: tuple[int, int] | None):
        if preset == FROM_PHOTO:
            return describe(path)[:7]
        if size is None:
            raise gr.Error("Upload a photo first: presets depend on its size.")
        choice = PRESETS[preset](*size)
        k = choice.intrinsics
        return (round(k.fx, 3), round(k.fy, 3), round(k.cx, 3), round(k.cy, 3), _source_line(choice.source),
                choice.source, preset)

    def edited_by_hand():
        return _source_line("Entered by hand"), "Entered by hand"

    def estimate(path, fx, fy, cx, cy, source, cmap, min_depth, max_depth, edge, voxel, progress=gr.Progress()):
        with user_errors():
            progress(0.05, desc="Decoding the photo")
            image, decode_ms = _load(path)
            if max_depth <= min_depth:
                raise IntrinsicsError(f"The depth range is empty: min {min_depth} m ≥ max {max_depth} m.")
            options = PipelineOptions(colormap=cmap, cloud=CloudFilter(
                min_depth=float(min_depth), max_depth=float(max_depth),
                edge_threshold=float(edge), voxel_size=float(voxel)))
            result = run(image, _intrinsics(fx, fy, cx, cy), engine, options, source=source or "Entered by hand",
                         store=store, on_stage=lambda what, f: progress(f, desc=what))
            result.timings_ms["decode"] = decode_ms
        info = result.info()
        files = [str(result.files.depth_npy), str(result.files.depth_png), str(result.files.ply)]
        view = gr.Model3D(str(result.files.view_ply), camera_position=(*VIEW_ANGLES, result.cloud_center_distance))
        return (result.colormap, (result.network_rgb, result.colored), view, result.colored,
                files, info_markdown(info), info, _measure_state(result), [],
                "Click a first point on the depth image.")

    def click_to_measure(state, points, evt: gr.SelectData):
        if state is None:
            return points, "Run the depth estimation first."
        point = (float(evt.index[0]), float(evt.index[1]))
        points = (points or [])[-1:] + [point] if len(points or []) < 2 else [point]
        depth, intr = state
        if len(points) == 1:
            with user_errors():
                z = float(depth[int(round(point[1])), int(round(point[0]))])
            return points, f"Point 1 at ({point[0]:.0f}, {point[1]:.0f}), depth {z:.2f} m. Click a second point."
        with user_errors():
            meters = measure(depth, intr, points[0], points[1])
        (x1, y1), (x2, y2) = points
        return points, f"**Distance: {meters:.3f} m** between ({x1:.0f}, {y1:.0f}) and ({x2:.0f}, {y2:.0f})."

    def predict(image, fx, fy, cx, cy):
        """API: photo + intrinsics (pixels of the photo) -> colormap, point cloud .ply, depth .npy (m), info."""
        with user_errors():
            loaded, decode_ms = _load(image)
            result = run(loaded, _intrinsics(fx, fy, cx, cy), engine, PipelineOptions(),
                         source="API request", store=store)
            result.timings_ms["decode"] = decode_ms
        return result.colormap, str(result.files.ply), str(result.files.depth_npy), result.info()

    with gr.Blocks(title="Metric3D v2 metric depth (LiteRT)") as demo:
        gr.Markdown(
            "# Metric3D v2 — metric depth from one photo\n"
            f"Running on **{engine_info.engine}: {engine_info.accelerator}**. Depth is in meters; it needs "
            "the camera's focal length in pixels, filled in from EXIF or an example's calibration when known.")
        size_state = gr.State(None)
        source_state = gr.State("")
        measure_state = gr.State(None)
        points_state = gr.State([])
        with gr.Row():
            with gr.Column(scale=4):
                image = gr.Image(type="filepath", image_mode=None, label="Photo", sources=["upload", "clipboard"],
                                 height=360)
                gr.Examples([[str(e.path)] for e in catalog.examples], inputs=[image], label="Examples",
                            example_labels=[e.path.stem for e in catalog.examples])
                with gr.Group():
                    preset = gr.Dropdown([FROM_PHOTO, *PRESETS], value=FROM_PHOTO, label="Camera")
                    with gr.Row():
                        fx = gr.Number(label="fx (px)", minimum=0)
                        fy = gr.Number(label="fy (px)", minimum=0)
                        cx = gr.Number(label="cx (px)")
                        cy = gr.Number(label="cy (px)")
                    source_md = gr.Markdown("Upload a photo to fill in the intrinsics.")
                with gr.Accordion("Display and point-cloud options", open=False):
                    cmap = gr.Dropdown(list(COLORMAPS), value="turbo", label="Colormap")
                    with gr.Row():
                        min_depth = gr.Number(0.1, label="Nearest point kept (m)", minimum=0)
                        max_depth = gr.Number(MAX_METRIC_DEPTH, label="Farthest point kept (m)", minimum=0)
                    edge = gr.Slider(0.0, 0.5, value=0.05, step=0.01, label="Remove depth edges (relative jump, 0 = off)")
                    voxel = gr.Slider(0.0, 0.2, value=0.0, step=0.005, label="Voxel size for thinning (m, 0 = off)")
                run_btn = gr.Button("Estimate depth", variant="primary")
            with gr.Column(scale=6):
                colormap = gr.Image(label="Depth (meters)", format="png", interactive=False, elem_id="depth-colormap")
                slider = gr.ImageSlider(label="Photo (network crop) vs depth", type="numpy", interactive=False)
                cloud = gr.Model3D(label="Point cloud", display_mode="point_cloud", clear_color=(0.08, 0.08, 0.1, 1.0),
                                   camera_position=(*VIEW_ANGLES, 5.0), height=420, elem_id="point-cloud")
                with gr.Accordion("Measure a distance", open=True):
                    measure_img = gr.Image(label="Click two points", interactive=False, format="png",
                                           elem_id="measure-image")
                    measure_md = gr.Markdown("Run the depth estimation, then click two points.")
                downloads = gr.File(label="Downloads: depth .npy (m), depth 16-bit PNG (mm), point cloud .ply",
                                    file_count="multiple", interactive=False)
                with gr.Accordion("Info", open=True, elem_id="info-panel"):
                    info_md = gr.Markdown("Engine and model details appear here after a run.")
                    info_json = gr.JSON(label="All details", open=False)

        intr_fields = [fx, fy, cx, cy, source_md, source_state, preset]
        image.change(describe, [image], [*intr_fields, size_state], concurrency_limit=light,
                     api_visibility="private")
        preset.input(apply_preset, [preset, image, size_state], intr_fields, concurrency_limit=light,
                     api_visibility="private")
        for field in (fx, fy, cx, cy):
            field.input(edited_by_hand, None, [source_md, source_state], concurrency_limit=light,
                        api_visibility="private")
        run_btn.click(
            estimate, [image, fx, fy, cx, cy, source_state, cmap, min_depth, max_depth, edge, voxel],
            [colormap, slider, cloud, measure_img, downloads, info_md, info_json, measure_state, points_state,
             measure_md],
            api_visibility="private")
        measure_img.select(click_to_measure, [measure_state, points_state], [points_state, measure_md],
                           concurrency_limit=light, api_visibility="private")

        with gr.Row(visible=False):
            api_image = gr.File(label="image", type="filepath")
            api_fx, api_fy, api_cx, api_cy = (gr.Number(label=n) for n in ("fx", "fy", "cx", "cy"))
            api_colormap = gr.Image(label="colormap", format="png")
            api_ply = gr.File(label="point cloud (.ply)")
            api_npy = gr.File(label="depth (.npy, meters)")
            api_info = gr.JSON(label="info")
            api_trigger = gr.Button()
        api_trigger.click(predict, [api_image, api_fx, api_fy, api_cx, api_cy],
                          [api_colormap, api_ply, api_npy, api_info], api_name="predict")
    return demo


def _source_line(source: str) -> str:
    return f"*Intrinsics from:* {source}"


def _measure_state(result: PipelineResult):
    return result.depth, result.network_intrinsics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Metric3D v2 metric depth demo (LiteRT).")
    parser.add_argument("--model", help="path to a .tflite (default: $METRIC3D_MODEL, cache, or download)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="where the network runs: host CPU, the Pixel over adb, or auto")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        resolved = resolve_model(args.model)
        engine = make_engine(args.backend, resolved.path)
    except (ModelNotFound, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = engine.info()
    print(f"Model: {resolved.path} ({resolved.origin}); engine: {info.engine}, {info.accelerator}", flush=True)
    warm_up(engine)
    store = OutputStore()
    atexit.register(store.cleanup)
    atexit.register(engine.close)
    demo = build_demo(engine, store, ExampleCatalog(EXAMPLES_DIR))
    demo.queue(default_concurrency_limit=2, max_size=32)
    demo.launch(server_name=args.host, server_port=args.port, theme=gr.themes.Default(), css=CSS,
                allowed_paths=[str(store.root), str(EXAMPLES_DIR)], max_file_size=DEFAULT_MAX_BYTES,
                show_error=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
