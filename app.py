"""Metric3D v2 (ViT-S) metric depth demo: Gradio UI and API wiring.

The work happens in backend/ (decode, intrinsics, pipeline, files) and device/ (the Pixel
runner link); this file only lays out the page, maps widgets to backend calls, turns
errors into readable messages, and sets how the server is exposed (backend/serving.py).

    python app.py [--model PATH] [--backend auto|host|host-gpu|device] [--serial SERIAL] [--runner-dir DIR]
                  [--host 127.0.0.1] [--port 7860] [--share] [--temp-dir DIR] [--keep-results SECONDS]
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse  # noqa: E402 - the analytics switch must be set before gradio is imported
import contextlib  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import gradio.route_utils as gradio_route_utils  # noqa: E402

from backend import serving  # noqa: E402
from backend.colormap import COLORMAPS  # noqa: E402
from backend.engine import EngineError  # noqa: E402
from backend.examples import ExampleCatalog, suggest_intrinsics  # noqa: E402
from backend.geometry import MAX_METRIC_DEPTH, CloudFilter, GeometryError  # noqa: E402
from backend.imageio import ImageError, load_image  # noqa: E402
from backend.intrinsics import PRESETS, Intrinsics, IntrinsicsError  # noqa: E402
from backend.model_files import ModelNotFound, resolve_model  # noqa: E402
from backend.outputs import OutputStore  # noqa: E402
from backend.panels import info_markdown, status_markdown  # noqa: E402
from backend.pipeline import PipelineOptions, PipelineResult, measure, run, warm_up  # noqa: E402
from device.adb import DEFAULT_ADB_PORT  # noqa: E402
from device.backends import BACKEND_LABELS, BACKENDS, Backends, Pick, runner_files_in  # noqa: E402

log = logging.getLogger("metric3d.app")
REPO = Path(__file__).resolve().parent
EXAMPLES_DIR = REPO / "examples"
FROM_PHOTO = "From the photo (EXIF or example calibration)"
VIEW_ANGLES = (-100.0, 80.0)  # just off the photo's viewpoint (-90, 90), so the relief shows
CSS = """
#info-panel table { font-size: 0.9em; }
footer { display: none !important; }
"""


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

    def device_engine() -> DeviceEngine:
        files = runner_files_in(runner_dir) if runner_dir else None
        return DeviceEngine(model_path, serial, adb_port=adb_server_port(), files=files)

    return Backends(lambda: HostEngine(model_path), device_engine,
                    lambda allow_software: HostEngine(model_path, accelerator="gpu", allow_software_gpu=allow_software))


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


def _load(path: str | bytes | None):
    if path is None or path == "":
        raise ImageError("Please upload a photo or pick an example first.")
    started = time.perf_counter()
    image = load_image(path)
    return image, (time.perf_counter() - started) * 1000.0


def with_backend(info: dict, choice: str, pick: Pick) -> dict:
    """The result's info plus the backend asked for, the one that ran, and any fallback notice."""
    info["backend"] = {"requested": choice, "used": pick.where}
    if pick.notice:
        info["engine_details"]["notice"] = pick.notice
    return info


def build_demo(backends: Backends, default_backend: str, store: OutputStore, catalog: ExampleCatalog,
               keep_results_s: int = serving.DEFAULT_RESULT_MAX_AGE_S) -> gr.Blocks:
    """Lay out the page and connect it to the backend."""
    light = serving.LIGHT_CONCURRENCY
    depth_pool = {"concurrency_id": serving.DEPTH_POOL, "concurrency_limit": serving.DEPTH_CONCURRENCY}
    phone_pool = {"concurrency_id": "phone", "concurrency_limit": 1}  # one phone search at a time

    def show_status(choice: str) -> str:
        return status_markdown(backends.status(), choice)

    def choose_backend(choice: str) -> str:
        if choice != "host" and not backends.status()["looked_for_phone"]:
            backends.look_for_phone()
        return show_status(choice)

    def look_again(choice: str) -> str:
        backends.look_for_phone()
        return show_status(choice)

    def status_api() -> dict:
        """API: where requests run: the phone in use (model, serial, runner, accelerator) or why not."""
        return backends.status()

    def look_for_phone_api() -> dict:
        """API: look for the phone again (after plugging it in); returns the new status."""
        backends.look_for_phone()
        return backends.status()

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

    def estimate(path, fx, fy, cx, cy, source, cmap, min_depth, max_depth, edge, voxel, choice,
                 progress=gr.Progress()):
        with user_errors():
            progress(0.05, desc="Decoding the photo")
            image, decode_ms = _load(path)
            if max_depth <= min_depth:
                raise IntrinsicsError(f"The depth range is empty: min {min_depth} m ≥ max {max_depth} m.")
            options = PipelineOptions(colormap=cmap, cloud=CloudFilter(
                min_depth=float(min_depth), max_depth=float(max_depth),
                edge_threshold=float(edge), voxel_size=float(voxel)))
            intrinsics = _intrinsics(fx, fy, cx, cy)
            result, pick = backends.run(choice, lambda p: run(
                image, intrinsics, p.engine, options, source=source or "Entered by hand", store=store,
                on_stage=lambda what, f: progress(f, desc=what)))
            result.timings_ms["decode"] = decode_ms
        info = with_backend(result.info(), choice, pick)
        files = [str(result.files.depth_npy), str(result.files.depth_png), str(result.files.ply)]
        view = gr.Model3D(str(result.files.view_ply), camera_position=(*VIEW_ANGLES, result.cloud_center_distance))
        return (result.colormap, (result.network_rgb, result.colored), view, result.colored,
                files, info_markdown(info), info, _measure_state(result), [],
                "Click a first point on the depth image.", show_status(choice))

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

    def predict(image, fx, fy, cx, cy, backend: str | None = None):
        """API: photo + intrinsics (pixels of the photo) [+ backend auto|host|device, default: the server's]
        -> colormap, point cloud .ply, depth .npy (m), info."""
        choice = backend or default_backend
        with user_errors():
            loaded, decode_ms = _load(image)
            intrinsics = _intrinsics(fx, fy, cx, cy)
            result, pick = backends.run(choice, lambda p: run(loaded, intrinsics, p.engine, PipelineOptions(),
                                                             source="API request", store=store))
            result.timings_ms["decode"] = decode_ms
        return result.colormap, str(result.files.ply), str(result.files.depth_npy), with_backend(
            result.info(), choice, pick)

    with gr.Blocks(title="Metric3D v2 metric depth (LiteRT)", delete_cache=serving.cache_schedule(keep_results_s)) \
            as demo:
        gr.Markdown(
            "# Metric3D v2 — metric depth from one photo\n"
            "Depth is in meters; it needs the camera's focal length in pixels, filled in from EXIF or an "
            "example's calibration when known. The network runs on a USB-connected Pixel or on this computer's CPU.")
        with gr.Accordion("Where the network runs", open=True, elem_id="backend-panel"):
            with gr.Row():
                backend = gr.Radio([(BACKEND_LABELS[b], b) for b in ("auto", "device", "host", "host-gpu")],
                                   value=default_backend, label="Backend", scale=3)
                look_btn = gr.Button("Look for the phone again", scale=1)
            status_md = gr.Markdown("Looking at the backends…", elem_id="status-panel")
        size_state = gr.State(None)
        source_state = gr.State("")
        measure_state = gr.State(None)
        points_state = gr.State([])
        with gr.Row():
            with gr.Column(scale=4):
                image = PhotoInput(type="filepath", image_mode=None, label="Photo", sources=["upload", "clipboard"],
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

        demo.load(show_status, [backend], [status_md], concurrency_limit=light, api_visibility="private")
        backend.change(choose_backend, [backend], [status_md], api_visibility="private", **phone_pool)
        look_btn.click(look_again, [backend], [status_md], api_visibility="private", **phone_pool)
        intr_fields = [fx, fy, cx, cy, source_md, source_state, preset]
        image.change(describe, [image], [*intr_fields, size_state], concurrency_limit=light,
                     api_visibility="private")
        preset.input(apply_preset, [preset, image, size_state], intr_fields, concurrency_limit=light,
                     api_visibility="private")
        for field in (fx, fy, cx, cy):
            field.input(edited_by_hand, None, [source_md, source_state], concurrency_limit=light,
                        api_visibility="private")
        run_btn.click(
            estimate, [image, fx, fy, cx, cy, source_state, cmap, min_depth, max_depth, edge, voxel, backend],
            [colormap, slider, cloud, measure_img, downloads, info_md, info_json, measure_state, points_state,
             measure_md, status_md],
            api_visibility="private", **depth_pool)
        measure_img.select(click_to_measure, [measure_state, points_state], [points_state, measure_md],
                           concurrency_limit=light, api_visibility="private")

        with gr.Row(visible=False):
            api_image = gr.File(label="image", type="binary")
            api_fx, api_fy, api_cx, api_cy = (gr.Number(label=n) for n in ("fx", "fy", "cx", "cy"))
            api_backend = gr.Textbox(label="backend")
            api_colormap = gr.Image(label="colormap", format="png")
            api_ply = gr.File(label="point cloud (.ply)")
            api_npy = gr.File(label="depth (.npy, meters)")
            api_info = gr.JSON(label="info")
            api_status = gr.JSON(label="status")
            api_trigger, api_status_trigger, api_look_trigger = gr.Button(), gr.Button(), gr.Button()
        api_trigger.click(predict, [api_image, api_fx, api_fy, api_cx, api_cy, api_backend],
                          [api_colormap, api_ply, api_npy, api_info], api_name="predict", **depth_pool)
        api_status_trigger.click(status_api, None, api_status, api_name="status", concurrency_limit=light)
        api_look_trigger.click(look_for_phone_api, None, api_status, api_name="look_for_phone", **phone_pool)
    return demo


def _source_line(source: str) -> str:
    return f"*Intrinsics from:* {source}"


def _measure_state(result: PipelineResult):
    return result.depth, result.network_intrinsics


def _positive_seconds(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1 second")
    return value


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
    parser.add_argument("--share", action="store_true",
                        help="also publish a public link (anyone with it can use this machine and phone)")
    parser.add_argument("--temp-dir", help="where the private per-run folder for uploads and results is made "
                                           "(default: the system temp folder)")
    parser.add_argument("--keep-results", type=_positive_seconds, default=serving.DEFAULT_RESULT_MAX_AGE_S,
                        metavar="SECONDS", help="delete uploads and result files this long after they were made "
                                                f"(default {serving.DEFAULT_RESULT_MAX_AGE_S})")
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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        demo = build_demo(backends, args.backend, store, ExampleCatalog(EXAMPLES_DIR), args.keep_results)
        demo.queue(default_concurrency_limit=serving.DEPTH_CONCURRENCY, max_size=serving.QUEUE_MAX_SIZE)
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, theme=gr.themes.Default(),
                    css=CSS, allowed_paths=[str(store.root), str(EXAMPLES_DIR)],
                    max_file_size=serving.MAX_UPLOAD_BYTES, show_error=False)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        stop_pruning.set()
        backends.close()
        serving.remove_private_dir(private)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
