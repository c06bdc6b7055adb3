"""The app with the Pixel backend, end to end: a real app.py subprocess talks through the real
adb server to the emulated Pixel 8a, which runs the host build of the runner pushed as if it
were the Android build (`--runner-dir`). The phone is unplugged mid-session: requests must go
on on the host with the fallback notice, and the phone must come back when looked for again."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from playwright.sync_api import expect, sync_playwright

from testing.adb_emulator import emulated_phone, wait_for_state
from backend.panels import BUILD_COMMAND, status_markdown, timing_line
from backend.pipeline import timing_split
from device.build import build_host
from device.protocol import RUNNER_VERSION
from testing import REPO
from testing.app import run_app_to_exit, running_app

MOTORCYCLE = REPO / "examples" / "motorcycle.png"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _intrinsics() -> tuple[float, float, float, float]:
    doc = json.loads(MOTORCYCLE.with_suffix(".json").read_text())
    return doc["fx"], doc["fy"], doc["cx"], doc["cy"]


def _predict(client: Client, backend: str | None = None):
    args = (handle_file(str(MOTORCYCLE)), *_intrinsics())
    if backend is None:
        return client.predict(*args, api_name="/predict")
    return client.predict(*args, backend, api_name="/predict")


@pytest.fixture(scope="module")
def phone(tmp_path_factory):
    with emulated_phone(tmp_path_factory.mktemp("app-phone")) as connected:
        yield connected


@pytest.fixture(scope="module")
def pixel_app(phone, stand_in_model: Path, tmp_path_factory):
    """app.py --backend auto on the emulated phone, pushing the host runner build."""
    runner_dir = build_host().parent
    logs = tmp_path_factory.mktemp("app-device")
    env = {"ANDROID_ADB_SERVER_PORT": str(phone.adb_port), "XDG_CACHE_HOME": str(logs / "cache")}
    args = ["--backend", "auto", "--serial", phone.serial, "--runner-dir", str(runner_dir), "--temp-dir", str(logs)]
    with running_app(stand_in_model, logs / "app", args, env) as app:
        client = Client(app.url, verbose=False, download_files=str(logs / "downloads"), analytics_enabled=False)
        yield app, client


def test_status_names_the_phone_and_its_runner(pixel_app, phone):
    _, client = pixel_app
    status = client.predict(api_name="/status")
    device = status["device"]
    assert (device["device"], device["serial"], device["runner_version"]) == ("Pixel 8a", phone.serial,
                                                                              RUNNER_VERSION)
    # No GPU in the emulated phone: the runner says so and runs on its CPU.
    assert device["live_accelerator"] == "cpu" and "GPU could not compile" in device["accelerator"]
    assert float(device["compile_ms"]) >= 0 and status["device_problem"] is None
    assert list(phone.device.processes().values()) == ["metric3d_runner"]


def test_the_pixel_runner_computes_and_the_host_agrees(pixel_app, phone):
    _, client = pixel_app
    _, _, npy, info = _predict(client)
    assert info["engine"] == "Pixel 8a runner" and info["backend"] == {"requested": "auto", "used": "device"}
    assert info["engine_details"]["serial"] == phone.serial and "notice" not in info["engine_details"]
    split = info["timings_split_ms"]
    assert {"transfer", "compute", "normalize"} <= set(info["timings_ms"])
    assert split["network"] > 0 and split["transfer"] >= 0 and split["host_postprocess"] > 0
    assert split["total"] == pytest.approx(sum(info["timings_ms"].values()), abs=0.05)

    _, _, host_npy, host_info = _predict(client, "host")
    assert host_info["engine"] == "Host LiteRT" and host_info["backend"]["used"] == "host"
    assert "transfer" not in host_info["timings_ms"]
    with pytest.raises(Exception, match="Unknown backend 'gpu'; choose one of auto, host, host-gpu, device"):
        _predict(client, "gpu")
    on_phone, on_host = np.load(npy), np.load(host_npy)
    # The runner replies in float16: equal to the host's float32 depth within half precision.
    np.testing.assert_allclose(on_phone, on_host, rtol=2.0 ** -10, atol=1e-6)
    assert not np.array_equal(on_phone, on_host)


def test_requests_on_both_backends_at_once_all_succeed(pixel_app):
    _, client = pixel_app
    choices = ["device", "host", "auto", "device", "host", "auto"]
    with ThreadPoolExecutor(max_workers=len(choices)) as pool:
        results = list(pool.map(lambda c: _predict(client, c), choices))
    used = [info["backend"]["used"] for *_, info in results]
    assert used == ["device", "host", "device", "device", "host", "device"]
    assert all(np.load(npy).shape == (500, 741) for _, _, npy, _ in results)  # the photo's own grid


def test_the_status_panel_in_the_browser(pixel_app, phone):
    app, _ = pixel_app
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(app.url, wait_until="load")
            expect(page.locator("#backend-panel")).to_contain_text("requests run on the phone", timeout=60_000)
            page.locator("#backend-panel").get_by_text("requests run on the phone").click()  # open the details
            panel = page.locator("#status-panel")
            expect(panel).to_contain_text(phone.serial, timeout=60_000)
            expect(panel).to_contain_text("Requests run on the Pixel")
            page.get_by_text("motorcycle", exact=True).first.click()
            expect(page.get_by_label("fx (px)")).to_have_value("994.978", timeout=30_000)
            page.get_by_role("button", name="Estimate depth").click()
            info = page.locator("#info-panel")
            expect(info).to_contain_text("Pixel 8a runner", timeout=60_000)
            expect(info).to_contain_text("transfer (USB)")
            expect(info).to_contain_text("Pixel compute")
            expect(info).to_contain_text("host post-processing")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "ui-pixel.png"), full_page=True)
            page.get_by_label("Host", exact=True).check()
            expect(panel).to_contain_text("Requests run on the host CPU", timeout=30_000)
            page.get_by_role("button", name="Look for the phone again").click()
            expect(panel).to_contain_text("Pixel 8a", timeout=30_000)
        finally:
            browser.close()


def test_unplugged_phone_falls_back_to_the_host_then_comes_back(pixel_app, phone):
    """Last in this module: it unplugs the phone (and plugs it back)."""
    _, client = pixel_app
    phone.device.unplug()
    _, _, npy, info = _predict(client)
    assert info["engine"] == "Host LiteRT" and info["backend"] == {"requested": "auto", "used": "host"}
    notice = info["engine_details"]["notice"]
    assert notice.startswith("Pixel disconnected") and phone.serial in notice
    assert notice.endswith("running on the host CPU")
    assert np.isfinite(np.load(npy)).all()

    with pytest.raises(Exception) as err:
        _predict(client, "device")
    assert "Pixel disconnected" in str(err.value) and "Look for the phone again" in str(err.value)
    status = client.predict(api_name="/status")
    assert status["device"] is None and status["device_problem"].startswith("Pixel disconnected")

    phone.device.replug()
    phone.client.connect(phone.serial, timeout=10)
    wait_for_state(phone.client, phone.serial, ("device",))
    status = client.predict(api_name="/look_for_phone")
    assert status["device"]["serial"] == phone.serial and status["device_problem"] is None
    _, _, _, info = _predict(client)
    assert info["backend"]["used"] == "device" and "notice" not in info["engine_details"]


def test_stopping_the_app_stops_the_runner_on_the_phone(stand_in_model, tmp_path):
    runner_dir = build_host().parent
    with emulated_phone(tmp_path / "phone") as own_phone:
        env = {"ANDROID_ADB_SERVER_PORT": str(own_phone.adb_port), "XDG_CACHE_HOME": str(tmp_path / "cache")}
        args = ["--backend", "device", "--runner-dir", str(runner_dir), "--temp-dir", str(tmp_path)]
        with running_app(stand_in_model, tmp_path / "app", args, env) as app:
            assert list(own_phone.device.processes().values()) == ["metric3d_runner"]
            assert app.stop() == 0
        assert own_phone.device.processes() == {}, app.log()[-2000:]


def test_without_the_android_build_the_app_says_how_to_build_it(stand_in_model, tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "empty-cache")}  # no LiteRT arm64 libraries there
    with running_app(stand_in_model, tmp_path / "app", ["--backend", "auto", "--temp-dir", str(tmp_path)],
                     env) as app:
        client = Client(app.url, verbose=False, download_files=str(tmp_path / "downloads"), analytics_enabled=False)
        status = client.predict(api_name="/status")
        _, _, npy, info = _predict(client)
    assert "python -m device build-android" in status["device_problem"]
    assert info["engine"] == "Host LiteRT" and info["backend"]["used"] == "host"
    assert info["engine_details"]["notice"].startswith("Pixel not available: The Pixel runner is not built yet")
    assert np.load(npy).shape == (500, 741)

    refused = run_app_to_exit(stand_in_model, tmp_path / "refused", ["--backend", "device"], env)
    assert refused.returncode == 2
    assert "python -m device build-android" in refused.stderr and "--backend auto" in refused.stderr


def test_status_panel_wording():
    build_problem = "Pixel not available: The Pixel runner is not built yet (missing x). ... build-android"
    no_phone = {"device": None, "device_problem": build_problem, "looked_for_phone": True, "host": None}
    auto = status_markdown(no_phone, "auto")
    assert BUILD_COMMAND in auto and "Running on the **host CPU**" in auto
    assert "Requests fail until the phone is found" in status_markdown(no_phone, "device")
    on_phone = {"device": {"device": "Pixel 8a", "serial": "S1", "runner_version": "9", "accelerator": "GPU (OpenCL, fp16)",
                           "compile_ms": "2213"}, "device_problem": None, "looked_for_phone": True, "host": None}
    text = status_markdown(on_phone, "auto")
    assert "serial `S1`" in text and "GPU (OpenCL, fp16)" in text and "2213 ms" in text
    assert "continue on the host CPU" in text and "host CPU" in status_markdown(on_phone, "host")


def test_timing_split_groups_every_stage_once():
    timings = {"decode": 3.0, "crop_resize": 1.0, "normalize": 0.5, "compute": 40.0, "transfer": 6.0,
               "metric_scale": 0.2, "colormap": 2.0, "point_cloud": 5.0, "write_ply": 1.3}
    split = timing_split(timings)
    assert split == pytest.approx({"host_preprocess": 4.0, "transfer": 6.0, "network": 40.5,
                                   "host_postprocess": 8.5, "total": 59.0})
    assert "transfer (USB) 6.0 ms" in timing_line(split, on_device=True)
    assert "Pixel compute 40.5 ms" in timing_line(split, on_device=True)
    assert "transfer" not in timing_line(split, on_device=False)
