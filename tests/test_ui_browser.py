"""End to end in a real headless Chromium: example -> intrinsics filled -> run -> pictures drawn.

Writes test-artifacts/ui.png; with UPDATE_SCREENSHOT=1 also docs/screenshot.png (README).
"""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from testing import REPO
from testing.app import running_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO / "test-artifacts"


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)


@pytest.fixture(scope="module")
def app_url(stand_in_model: Path, tmp_path_factory):
    with running_app(stand_in_model, tmp_path_factory.mktemp("ui")) as app:
        yield app.url


def test_example_run_draws_depth_and_point_cloud(app_url):
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            page.goto(app_url, wait_until="load")
            expect(page.get_by_role("button", name="Estimate depth")).to_be_visible(timeout=60_000)

            page.get_by_text("motorcycle", exact=True).first.click()
            expect(page.get_by_text("Middlebury 2014 calibration")).to_be_visible(timeout=30_000)
            expect(page.get_by_label("fx (px)")).to_have_value("994.978")

            page.get_by_role("button", name="Estimate depth").click()
            depth_img = page.locator("#depth-colormap img")
            expect(depth_img).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Host LiteRT").first).to_be_visible(timeout=30_000)
            colormap = _pixels(depth_img.screenshot())
            assert colormap.std(axis=(0, 1)).max() > 10, "depth colormap looks blank"

            canvas = page.locator("#point-cloud canvas")
            expect(canvas).to_be_visible(timeout=30_000)
            page.wait_for_timeout(6_000)  # software WebGL: the first 200k-point frame takes seconds
            cloud = _pixels(canvas.screenshot())
            assert cloud.std(axis=(0, 1)).max() > 5, "3D point-cloud canvas looks blank"

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "ui.png"), full_page=True)
            if os.environ.get("UPDATE_SCREENSHOT") == "1":
                (REPO / "docs").mkdir(exist_ok=True)
                shutil.copyfile(ARTIFACTS / "ui.png", REPO / "docs" / "screenshot.png")
        finally:
            browser.close()
