"""What the page says, without a server: the device line, shortened paths, the PNG line, field
errors that name their field, and app.py's structure (importable, no engine started)."""
from __future__ import annotations

import inspect

import gradio as gr
import pytest

import app
from backend.fields import FieldError
from backend.intrinsics import IntrinsicsError
from backend.panels import info_markdown, png_line, shorten_paths, status_line, status_markdown

NO_PHONE = {"device": None, "looked_for_phone": True, "host": None,
            "device_problem": "Pixel not available: The Pixel runner is not built yet (missing "
                              "/home/me/src/metric3d/device/runner/build/android-arm64/metric3d_runner). "
                              "Run python -m device build-android"}
ON_PHONE = {"device": {"device": "Pixel 8a", "serial": "S1", "runner_version": "9",
                       "accelerator": "GPU (OpenCL, fp16)", "compile_ms": "2213"},
            "device_problem": None, "looked_for_phone": True, "host": None}


def test_the_device_line_is_one_calm_line():
    assert status_line(NO_PHONE, "auto") == "Host CPU · no phone connected · how to use a Pixel ▸"
    assert status_line(ON_PHONE, "auto").startswith("Pixel · Pixel 8a · GPU (OpenCL, fp16)")
    assert "Host CPU" in status_line(ON_PHONE, "host")
    assert "requests fail" in status_line(NO_PHONE, "device")
    for line in (status_line(s, c) for s in (NO_PHONE, ON_PHONE) for c in ("auto", "host", "device")):
        assert "\n" not in line and "/" not in line and len(line) < 90


def test_details_shorten_paths_and_keep_the_build_command():
    details = status_markdown(NO_PHONE, "auto")
    assert "/home/me" not in details and "…/android-arm64/metric3d_runner" in details
    assert "python -m device build-android" in details
    assert shorten_paths("see [http://developer.android.com/tools/device.html]") == \
        "see [http://developer.android.com/tools/device.html]"  # URLs are not paths
    assert shorten_paths("ANDROID_NDK_HOME=/path/to/android-ndk") == "ANDROID_NDK_HOME=/path/to/android-ndk"


def test_the_png_line_counts_what_the_png_cannot_hold():
    assert "7,572 pixels lie beyond its 65.535 m limit" in png_line(
        {"png_far_limit_m": 65.535, "beyond_png_range_pixels": 7572})
    assert "every depth fits" in png_line({"png_far_limit_m": 65.535, "beyond_png_range_pixels": 0})


@pytest.mark.parametrize("fields, words", [
    (("abc", 1, 2, 3), "fx must be a plain decimal number (like 1000 or 0.25), got 'abc'"),
    (("1_000", 1, 2, 3), "fx must be a plain decimal number"),
    (("nan", 1, 2, 3), "fx must be a plain decimal number"),
    ((None, 1, 2, 3), "Please fill in fx"),
    ((1, "", 2, None), "Please fill in fy, cy"),
])
def test_intrinsics_fields_are_named(fields, words):
    with pytest.raises((IntrinsicsError, FieldError)) as err:
        app.read_intrinsics(*fields)
    assert words in str(err.value)


@pytest.mark.parametrize("near, far, words", [
    (-1, 10, "Nearest point kept (m) must be at least 0, got -1"),
    (0.1, None, "Please fill in Farthest point kept (m)"),
    (5, 2, "nearest 5 m ≥ farthest 2 m"),
    (float("nan"), 2, "Nearest point kept (m) must be a finite number"),
])
def test_option_fields_are_named(near, far, words):
    with pytest.raises(FieldError) as err:
        app.read_options("turbo", near, far, 0.05, 0.0)
    assert words in str(err.value)


def test_importing_app_builds_the_page_but_starts_nothing():
    assert isinstance(app.demo, gr.Blocks)
    assert app._context is None  # no engine, no folder until the app runs or a request needs them
    names = set(app.demo.get_api_info()["named_endpoints"])
    assert names == {"/predict", "/intrinsics", "/status", "/look_for_phone"}  # the page's own events stay private


def test_handlers_show_gradio_their_inputs_without_the_context():
    bound = app.with_context(app.estimate)
    params = list(inspect.signature(bound).parameters)
    assert params[0] == "path" and "ctx" not in params and params[-1] == "progress"
    assert list(inspect.signature(app.with_context(app.predict)).parameters) == \
        ["image", "fx", "fy", "cx", "cy", "backend"]


def test_the_info_panel_leads_with_the_photo_and_its_runs():
    info = {"model": {"published": False, "source": "s", "name": "n", "file": "f", "precision": "fp32",
                      "sha256": "0" * 64},
            "intrinsics": {"source": "EXIF", "confidence": "exif", "reason": "tags consistent",
                           "image": dict(fx=1, fy=1, cx=1, cy=1),
                           "network": dict(fx=1, fy=1, cx=1, cy=1)},
            "image": {"width": 4, "height": 3, "network_size": 448}, "engine": "Host LiteRT", "accelerator": "CPU",
            "engine_details": {"notice": "Pixel not available — running on the host CPU"},
            "depth_m": dict(min=1, max=2, median=1.5, p2=1, p98=2), "points": 10, "timings_ms": {"compute": 1.0},
            "timings_split_ms": dict(host_preprocess=0, transfer=0, network=1, host_postprocess=0, total=1),
            "session": {"photo": "cat.jpg", "network_runs": 1, "rerenders": 2, "rerender_ms": 41.0}}
    text = info_markdown(info)
    assert text.startswith("**Photo:** cat.jpg · network runs for this photo: 1 · re-renders: 2")
    assert "last re-render 41 ms (no network run)" in text
    assert "Pixel not available" not in text  # the status line says it once
    assert "**Intrinsics source:** EXIF · **confidence: exif** — tags consistent" in text
