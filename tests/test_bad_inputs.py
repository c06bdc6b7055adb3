"""Bad inputs end to end (issue 5.1): the generated corpus (tests/_bad_inputs.py) through the
backend, through the API of ONE real app.py subprocess, and a few through the page in headless
Chromium. Every broken file or impossible camera must be explained in words a person
understands, every odd-but-valid file must work upright and at the right size, the server
must keep serving after each batch, and a failed request must leave no files behind.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from backend.imageio import ExifCamera, ImageError, LoadedImage, load_image
from backend.intrinsics import Intrinsics, IntrinsicsError, centered
from backend.pipeline import run
from testing import REPO
from _bad_inputs import (EXIF_ROT90_K, GOOD_INTRINSICS, INTRINSICS_IMAGE_SIZE, ImageCase, IntrinsicsCase,
                               encode, image_cases, intrinsics_cases, quadrants)
from testing.app import AppProcess, running_app
from test_ui_browser import CHROMIUM, CHROMIUM_ARGS

IMAGE_CASES = image_cases()
INTRINSICS_CASES = intrinsics_cases()
BAD_FILES = [c for c in IMAGE_CASES if not c.valid]
ODD_FILES = [c for c in IMAGE_CASES if c.valid]
MOTORCYCLE = REPO / "examples" / "motorcycle.png"
REQUEST_TIMEOUT_S = 60.0  # generous for 2 shared cores; a hang fails instead of blocking the suite
UPLOAD = re.compile(r"[0-9a-f]{64}")  # Gradio keeps each upload as <sha256 of the content>/<file name>


def _batches(cases: list, size: int) -> list[list]:
    return [cases[i:i + size] for i in range(0, len(cases), size)]


def _centred_for(width: int, height: int) -> Intrinsics:
    """A plausible camera for any image: focal = image diagonal (~53° diagonal field of view)."""
    return centered(float(np.hypot(width, height)), width, height)


def _photo_intrinsics() -> tuple[float, float, float, float]:
    doc = json.loads(MOTORCYCLE.with_suffix(".json").read_text())
    return tuple(float(doc[k]) for k in ("fx", "fy", "cx", "cy"))


def _intrinsics_photo() -> bytes:
    return encode(Image.fromarray(quadrants(*INTRINSICS_IMAGE_SIZE)), "PNG")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def app(stand_in_model: Path, tmp_path_factory) -> AppProcess:
    with running_app(stand_in_model, tmp_path_factory.mktemp("bad-inputs-app")) as running:
        yield running


@pytest.fixture(scope="module")
def client(app: AppProcess, tmp_path_factory) -> Client:
    return Client(app.url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def _predict(client: Client, path: Path, values) -> tuple:
    job = client.submit(handle_file(str(path)), *values, api_name="/predict")
    return job.result(timeout=REQUEST_TIMEOUT_S)


def _error_of(client: Client, path: Path, values) -> str:
    """The message the API returned; fails when the request succeeded."""
    try:
        _predict(client, path, values)
    except Exception as exc:  # noqa: BLE001 - gradio_client's AppError; a timeout would not match the words
        return str(exc)
    return "<the request succeeded>"


def _missing_words(message: str, words: tuple[str, ...]) -> list[str]:
    return [w for w in words if w not in message]


def _assert_still_serving(client: Client) -> None:
    _, _, npy, info = _predict(client, MOTORCYCLE, _photo_intrinsics())
    depth = np.load(npy)
    assert depth.shape == (448, 448) and np.isfinite(depth).all() and depth.min() > 0
    assert (info["image"]["width"], info["image"]["height"]) == (741, 500)


def _leftovers(app: AppProcess, before: set[Path], uploaded_names: set[str]) -> list[str]:
    """Files that appeared since `before` other than the uploads themselves (which Gradio's cache
    sweep owns) and the empty files of Gradio's gr.File leak (their own test below)."""
    found = []
    for path in sorted(app.files() - before):
        is_upload = path.name in uploaded_names and UPLOAD.fullmatch(path.parent.name)
        if not is_upload and not _gradio_empty_tempfile(path):
            found.append(str(path))
    return found


def _gradio_empty_tempfile(path: Path) -> bool:
    return path.name.startswith("tmp") and path.stat().st_size == 0 and not UPLOAD.fullmatch(path.parent.name)


# ----------------------------------------------------------------------------- the corpus itself


def test_corpus_is_broad_and_its_names_are_distinct():
    names = [c.name for c in IMAGE_CASES] + [c.name for c in INTRINSICS_CASES]
    assert len(names) >= 30 and len(set(names)) == len(names)
    assert len(BAD_FILES) >= 15 and len(ODD_FILES) >= 12
    assert sum(not c.error for c in INTRINSICS_CASES) >= 1 and sum(bool(c.error) for c in INTRINSICS_CASES) >= 10


# ----------------------------------------------------------------------------- backend


@pytest.mark.parametrize("case", IMAGE_CASES, ids=[c.name for c in IMAGE_CASES])
def test_backend_explains_bad_files_and_decodes_odd_ones(case: ImageCase, stand_in_engine, tmp_path):
    path = tmp_path / case.filename
    path.write_bytes(case.make())
    if case.error:
        with pytest.raises(ImageError) as err:
            load_image(path)
        assert not _missing_words(str(err.value), case.error), str(err.value)
        return
    image = load_image(path)
    assert (image.width, image.height) == case.size
    for x, y, want in case.probes:
        got = image.rgb[y, x].astype(int)
        assert np.abs(got - want).max() <= case.tolerance, f"pixel ({x}, {y}) is {got.tolist()}, expected {want}"
    result = run(image, _centred_for(image.width, image.height), stand_in_engine)
    assert result.image_size == case.size
    assert result.depth.shape == (448, 448) and np.isfinite(result.depth).all()


@pytest.mark.parametrize("case", INTRINSICS_CASES, ids=[c.name for c in INTRINSICS_CASES])
def test_backend_explains_impossible_cameras(case: IntrinsicsCase, stand_in_engine):
    image = load_image(_intrinsics_photo())
    intrinsics = Intrinsics(*case.values)  # type: ignore[arg-type]
    if case.error:
        with pytest.raises(IntrinsicsError) as err:
            run(image, intrinsics, stand_in_engine)
        words = case.backend_error or case.error
        assert not _missing_words(str(err.value), words), str(err.value)
        return
    result = run(image, intrinsics, stand_in_engine)
    side = min(INTRINSICS_IMAGE_SIZE)
    assert result.network_intrinsics.fx == pytest.approx(case.values[0] * 448 / side)
    assert result.network_intrinsics.fy == pytest.approx(case.values[1] * 448 / side)
    assert np.isfinite(result.depth).all()


# ----------------------------------------------------------------------------- the API


@pytest.mark.parametrize("batch", _batches(BAD_FILES, 6), ids=lambda b: f"{b[0].name}..{b[-1].name}")
def test_api_explains_bad_files_then_serves_a_good_request(batch: list[ImageCase], app, client, tmp_path):
    before = app.files()
    problems = []
    for case in batch:
        path = tmp_path / case.filename
        path.write_bytes(case.make())
        message = _error_of(client, path, GOOD_INTRINSICS)
        missing = _missing_words(message, case.error)
        if missing:
            problems.append(f"{case.name}: message {message!r} lacks {missing}")
    leftovers = _leftovers(app, before, {c.filename for c in batch})
    assert not problems, "\n".join(problems)
    assert not leftovers, f"failed requests left files behind: {leftovers}"
    _assert_still_serving(client)


def test_api_works_for_odd_but_valid_files(app, client, stand_in_engine, tmp_path):
    problems = []
    for case in ODD_FILES:
        path = tmp_path / case.filename
        path.write_bytes(case.make())
        k = _centred_for(*case.size)  # type: ignore[misc]
        try:
            _, _, npy, info = _predict(client, path, (k.fx, k.fy, k.cx, k.cy))
        except Exception as exc:  # noqa: BLE001 - collect every failing case, not just the first
            problems.append(f"{case.name}: {exc}")
            continue
        size = (info["image"]["width"], info["image"]["height"])
        if size != case.size:
            problems.append(f"{case.name}: the app saw {size}, expected {case.size}")
        if case.exif_orientation:
            expected = _depth_of_upright_by_hand(path, case.exif_orientation, stand_in_engine)
            if not np.allclose(np.load(npy), expected, atol=1e-5, rtol=0):
                problems.append(f"{case.name}: depth differs from the hand-rotated photo's")
    assert not problems, "\n".join(problems)


def _depth_of_upright_by_hand(path: Path, orientation: int, stand_in_engine) -> np.ndarray:
    """Depth of the stored pixels rotated by numpy as EXIF says (not by the app's own EXIF code)."""
    with Image.open(path) as im:
        stored = np.asarray(im.convert("RGB"))
    upright = np.ascontiguousarray(np.rot90(stored, EXIF_ROT90_K[orientation]))
    image = LoadedImage(upright, ExifCamera(), "JPEG", "RGB")
    return run(image, _centred_for(image.width, image.height), stand_in_engine).depth


def test_api_explains_impossible_cameras_then_serves(app, client, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(_intrinsics_photo())
    sendable = [c for c in INTRINSICS_CASES if c.json_safe]
    before = app.files()
    problems = []
    for case in (c for c in sendable if c.error):
        message = _error_of(client, photo, case.values)
        missing = _missing_words(message, case.error)
        if missing:
            problems.append(f"{case.name}: message {message!r} lacks {missing}")
    leftovers = _leftovers(app, before, {photo.name})
    for case in (c for c in sendable if not c.error):
        _, _, _, info = _predict(client, photo, case.values)
        used = info["intrinsics"]["image"]
        if (used["fx"], used["fy"], used["cx"], used["cy"]) != pytest.approx(case.values, abs=1e-3):
            problems.append(f"{case.name}: the app used {used}, not {case.values}")
    assert not problems, "\n".join(problems)
    assert not leftovers, f"failed requests left files behind: {leftovers}"
    _assert_still_serving(client)


def _raw_predict(url: str, upload_path: str, numbers: str) -> tuple[str, str]:
    """POST to Gradio's REST route with hand-written JSON, so NaN and Infinity can be sent as
    any HTTP client can (gradio_client refuses them); returns (SSE event, data). Parameters
    after the four numbers get the defaults the server advertises."""
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as http:
        params = http.get("/gradio_api/info").json()["named_endpoints"]["/predict"]["parameters"]
        rest = "".join(f", {json.dumps(p['parameter_default'])}" for p in params[5:])
        body = ('{"data": [{"path": %s, "meta": {"_type": "gradio.FileData"}}, %s%s]}'
                % (json.dumps(upload_path), numbers, rest))
        started = http.post("/gradio_api/call/predict", content=body, headers={"content-type": "application/json"})
        started.raise_for_status()
        stream = http.get(f"/gradio_api/call/predict/{started.json()['event_id']}").text
    events = re.findall(r"event: (\w+)\ndata: (.*)", stream)
    assert events, f"no event in the reply: {stream!r}"
    return events[-1]


def _json_number(value: float) -> str:
    if np.isnan(value):
        return "NaN"
    if np.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(float(value))


def test_api_explains_nan_and_infinite_intrinsics(app, client, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(_intrinsics_photo())
    with httpx.Client(base_url=app.url, timeout=REQUEST_TIMEOUT_S) as http:
        with photo.open("rb") as f:
            uploaded = http.post("/gradio_api/upload", files={"files": ("photo.png", f)}).json()[0]
    cases = [c for c in INTRINSICS_CASES if not c.json_safe]
    assert cases
    for case in cases:
        event, data = _raw_predict(app.url, uploaded, ", ".join(_json_number(v) for v in case.values))
        assert event == "error", f"{case.name}: {event} {data}"
        message = json.loads(data)["error"]
        assert not _missing_words(message, case.error), f"{case.name}: {message!r}"
    _assert_still_serving(client)


def test_api_requests_leave_no_empty_temp_files(app, client, tmp_path):
    """Gradio's gr.File(type="filepath") makes an empty NamedTemporaryFile per request and never
    deletes it (not even its delete_cache sweep knows it): one leaked file per API call."""
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not a picture\n" * 10)
    before = app.files()
    _error_of(client, bad, GOOD_INTRINSICS)
    empty = [str(p) for p in app.files() - before if _gradio_empty_tempfile(p)]
    assert not empty, f"a failed request leaked empty temp files: {empty}"


# ----------------------------------------------------------------------------- the page


@pytest.mark.browser
def test_ui_shows_the_reason_for_broken_uploads_then_an_example_still_works(app, tmp_path):
    broken = {case.filename: case for case in BAD_FILES
              if case.name in ("text file renamed .png", "truncated JPEG", "HEIC signature")}
    assert len(broken) == 3
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for name, case in broken.items():
                path = tmp_path / name
                path.write_bytes(case.make())
                page = _open(browser, app.url)
                page.locator("input[type=file]").first.set_input_files(str(path))
                toast = page.get_by_test_id("toast-text").first
                expect(toast, f"{case.name}: no message shown").to_be_visible(timeout=30_000)
                for word in case.error:
                    expect(toast, f"{case.name}: the message lacks {word!r}").to_contain_text(word)
                page.close()

            page = _open(browser, app.url)
            page.get_by_text("motorcycle", exact=True).first.click()
            expect(page.get_by_label("fx (px)")).to_have_value("994.978", timeout=30_000)
            page.get_by_role("button", name="Estimate depth").click()
            depth_img = page.locator("#depth-colormap img")
            expect(depth_img).to_be_visible(timeout=60_000)
            pixels = np.asarray(Image.open(io.BytesIO(depth_img.screenshot())).convert("RGB"), np.float32)
            assert pixels.std(axis=(0, 1)).max() > 10, "depth colormap looks blank"
            expect(page.get_by_test_id("toast-text")).to_have_count(0)
        finally:
            browser.close()


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1700})
    page.goto(url, wait_until="load")
    expect(page.get_by_role("button", name="Estimate depth")).to_be_visible(timeout=60_000)
    return page
