"""The pieces that keep the app up under hostile clients, each on its own (no server process):
the request guard on a tiny ASGI app, the disk quota, the log rate limit, field checks,
public messages, and the header-only image probe against the full decoder."""
from __future__ import annotations

import asyncio
import io
import logging
import math
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from backend import serving
from backend.fields import MIN_VOXEL_M, FieldError, cloud_filter, number
from backend.guard import DiskQuota, GuardPolicy, RequestGuard, host_allowed, same_origin
from backend.imageio import ImageError, load_image
from backend.probe import probe_image

REPO = Path(__file__).resolve().parents[1]
POLICY = GuardPolicy(allowed_names=frozenset({"demo.lan"}), max_body_bytes=1000, max_upload_bytes=5000,
                     max_upload_files=2, body_idle_s=0.3, body_deadline_s=2.0, upload_deadline_s=2.0,
                     blocked_prefixes=("/monitoring",))


class _Echo:
    """An ASGI app that reads the whole body and answers its length (what the guard protects)."""

    def __init__(self):
        self.calls = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        self.calls += 1
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionAbortedError("client went away")  # what Starlette's ClientDisconnect does
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = str(size).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"access-control-allow-origin", b"http://127.0.0.1:7860")]})
        await send({"type": "http.response.body", "body": body})


def _request(guard, method="GET", path="/", headers=None, content=None):
    async def go():
        transport = httpx.ASGITransport(app=guard)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:7860") as client:
            return await client.request(method, path, headers=headers, content=content)
    return asyncio.run(go())


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1:7860", True), ("localhost:7860", True), ("[::1]:7860", True), ("192.168.1.20:7860", True),
    ("demo.lan:7860", True), ("DEMO.LAN", True), ("evil.example:7860", False), ("127.0.0.1.evil.example", False),
    ("", False), (None, False)])
def test_host_names_outside_the_allowed_set_are_refused(host, ok):
    assert host_allowed(host, frozenset({"demo.lan"})) is ok
    assert host_allowed(host, None) is True  # --share: the tunnel's own name


def test_only_the_pages_own_origin_counts_as_same_origin():
    assert same_origin(None, "127.0.0.1:7860")
    assert same_origin("http://127.0.0.1:7860", "127.0.0.1:7860")
    for origin in ("http://evil.example", "http://127.0.0.1:7861", "null", "file://", "http://127.0.0.1"):
        assert not same_origin(origin, "127.0.0.1:7860"), origin


def test_guard_refuses_bad_hosts_foreign_origins_and_blocked_routes_before_the_app():
    app = _Echo()
    guard = RequestGuard(app, POLICY)
    reply = _request(guard, headers={"host": "evil.example:7860", "origin": "http://evil.example:7860"})
    assert reply.status_code == 421 and "--allowed-host" in reply.text
    assert "access-control-allow-origin" not in reply.headers
    reply = _request(guard, "POST", "/gradio_api/upload", headers={"origin": "http://evil.example"}, content=b"x")
    assert reply.status_code == 403 and "other web sites" in reply.text
    reply = _request(guard, "OPTIONS", "/gradio_api/upload",
                     headers={"origin": "http://evil.example", "access-control-request-method": "POST"})
    assert reply.status_code == 403 and "access-control-allow-origin" not in reply.headers
    assert _request(guard, path="/monitoring/summary").status_code == 404
    assert app.calls == 0
    ok = _request(guard, "POST", "/x", headers={"origin": "http://127.0.0.1:7860"}, content=b"abc")
    assert ok.status_code == 200 and ok.text == "3" and app.calls == 1


def test_guard_caps_bodies_by_declared_and_by_counted_size():
    app = _Echo()
    guard = RequestGuard(app, POLICY)
    assert _request(guard, "POST", "/gradio_api/queue/join", content=b"x" * 1001).status_code == 413
    assert app.calls == 0  # Content-Length alone was enough

    async def chunks():  # no Content-Length: chunked, counted as it arrives
        for _ in range(100):
            yield b"x" * 100
    reply = _request(guard, "POST", "/gradio_api/queue/join", content=chunks())
    assert reply.status_code == 413 and "at most" in reply.text
    assert _request(guard, "POST", "/gradio_api/upload", content=b"x" * 4000).status_code == 200  # upload cap


def test_guard_cuts_off_a_body_that_stalls():
    guard = RequestGuard(_Echo(), POLICY)

    async def stalling():
        yield b"x" * 10
        await asyncio.sleep(1.0)  # longer than body_idle_s
        yield b"x"
    started = time.monotonic()
    reply = _request(guard, "POST", "/gradio_api/queue/join", content=stalling())
    assert reply.status_code == 408 and "too slowly" in reply.text
    assert time.monotonic() - started < 1.0


def test_guard_limits_the_files_in_one_upload():
    guard = RequestGuard(_Echo(), POLICY)
    files = [("files", (f"f{i}.png", b"p" * 10, "image/png")) for i in range(3)]
    body, content_type = _multipart(files)
    reply = _request(guard, "POST", "/gradio_api/upload", headers={"content-type": content_type}, content=body)
    assert reply.status_code == 413 and "at most 2 files" in reply.text
    body, content_type = _multipart(files[:2])
    reply = _request(guard, "POST", "/gradio_api/upload", headers={"content-type": content_type}, content=body)
    assert reply.status_code == 200


def _multipart(files) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", files=files)
    return request.read(), request.headers["content-type"]


def test_disk_quota_counts_the_folder_and_uploads_in_flight(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "old.ply").write_bytes(b"r" * 600)
    quota = DiskQuota(tmp_path, max_bytes=1000)
    assert quota.usage() == 600
    assert quota.reserve(300)
    assert not quota.reserve(200)  # 600 on disk + 300 arriving + 200 > 1000
    quota.release(300)
    assert quota.reserve(400)
    quota.release(400)
    guard = RequestGuard(_Echo(), POLICY, DiskQuota(tmp_path, max_bytes=1000))
    reply = _request(guard, "POST", "/gradio_api/upload", content=b"x" * 500)
    assert reply.status_code == 507 and "full" in reply.text


def test_partial_uploads_are_removed_once_no_upload_is_in_flight(tmp_path):
    uploads = tmp_path / "gradio"
    (uploads / "abc123").mkdir(parents=True)
    kept = uploads / "abc123" / "photo.png"
    kept.write_bytes(b"done")
    partial = uploads / "tmpk2j3h4"
    partial.write_bytes(b"half")
    quota = DiskQuota(tmp_path, max_bytes=10**6, upload_dir=uploads, stale_after_s=60)
    assert quota.reserve(10) and quota.reserve(10)
    quota.release(10)
    assert partial.exists(), "another upload is still arriving: its temp file may be this one"
    quota.release(10)
    assert not partial.exists() and kept.exists()


def test_log_rate_limit_drops_floods_and_says_how_many():
    now = [0.0]
    limit = serving.RateLimitedLog(burst=3, window_s=10.0, clock=lambda: now[0])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(limit)
    logger = logging.getLogger("test.flood")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(1000):
            logger.warning("Invalid HTTP request received from %d", i)
        logger.warning("another message")
        now[0] = 11.0
        logger.warning("Invalid HTTP request received from %d", 0)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 + 1 + 1
    assert "997 more like this" in lines[-1]


@pytest.mark.parametrize("value, message", [
    ("abc", "plain decimal"), ([1, 2], "number, got list"), (10**400, "far too large"),
    ("1_000", "plain decimal"), (math.nan, "finite"), ("nan", "plain decimal"), (math.inf, "finite"),
    ("1e999", "finite"), (True, "number, got bool"), ({"a": 1}, "number, got dict"), (-1, "at least 0")])
def test_wrong_field_values_get_a_message_naming_the_field(value, message):
    with pytest.raises(FieldError, match=message) as err:
        number("fx", value, minimum=0)
    assert str(err.value).startswith("fx ")


def test_plain_numbers_pass():
    assert number("fx", 1000) == 1000.0
    assert number("fx", " 12.5 ") == 12.5
    assert number("fx", "-3e2") == -300.0
    assert number("fx", None, optional=True) is None
    with pytest.raises(FieldError, match="Please fill in fx"):
        number("fx", None)


def test_cloud_filter_refuses_nan_absurd_and_empty_ranges():
    assert cloud_filter(0.1, 80, 0.05, 0.0).voxel_size == 0.0
    for args, what in [((math.nan, 80, 0.05, 0), "Nearest"), ((0.1, 1e30, 0.05, 0), "Farthest"),
                       ((5, 2, 0.05, 0), "empty"), ((0.1, 80, 0.05, 1e-9), "Voxel"), ((0.1, 80, -1, 0), "edges"),
                       ((0.1, 80, 0.05, math.inf), "Voxel")]:
        with pytest.raises(FieldError, match=what):
            cloud_filter(*args)
    assert cloud_filter(0.1, 80, 0.05, MIN_VOXEL_M).voxel_size == MIN_VOXEL_M


def test_public_text_removes_paths_and_terminal_codes():
    open3d = ("\x1b[1;31m[Open3D Error] (static std::shared_ptr<VoxelGrid> CreateFromPointCloud() "
              "/root/Open3D/cpp/open3d/geometry/VoxelGridFactory.cpp:62: voxel_size is too small.\x1b[0;m")
    text = serving.public_text(open3d)
    assert "\x1b" not in text and "/root" not in text and "voxel_size is too small" in text
    text = serving.public_text("The image file '/tmp/metric3d-app-x/gradio/ab12/photo.png' cannot be opened")
    assert "/tmp" not in text and "photo.png" in text
    status = serving.public_data({"device_problem": "No runner in /home/me/build/android\nlog", "n": 3})
    assert status == {"device_problem": "No runner in …/android\nlog", "n": 3}
    assert len(serving.public_text("x" * 5000)) <= serving.MAX_PUBLIC_MESSAGE_CHARS + 1


def test_allowed_host_names():
    assert serving.allowed_host_names("127.0.0.1") == frozenset()
    assert serving.allowed_host_names("0.0.0.0", ["Demo.LAN"]) == {"demo.lan"}
    assert serving.allowed_host_names("myhost.local") == {"myhost.local"}
    with pytest.raises(ValueError):
        serving.host_name("evil.example/x")


def _exif_rotated_jpeg(path: Path) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 64, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the upright image is 40 wide, 64 high
    exif[0x010F] = "Google"
    exif.get_ifd(0x8769)[0x920A] = 4.38
    exif.get_ifd(0x8769)[0xA405] = 26
    image.save(path, exif=exif.tobytes())


def test_probe_reports_what_the_full_decoder_reports(tmp_path):
    paths = sorted((REPO / "examples").glob("*.png")) + sorted((REPO / "examples").glob("*.jpg"))
    rotated = tmp_path / "rotated.jpg"
    _exif_rotated_jpeg(rotated)
    webp = tmp_path / "photo.webp"
    Image.new("RGB", (50, 30), (10, 20, 30)).save(webp, lossless=True)
    for path in [*paths, rotated, webp]:
        probed, decoded = probe_image(path), load_image(path)
        assert (probed.width, probed.height) == (decoded.width, decoded.height), path
        assert probed.exif == decoded.exif, path
    assert (probe_image(rotated).width, probe_image(rotated).height) == (40, 64)


def test_probe_refuses_what_the_decoder_refuses_without_decoding(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "note.png"
    text.write_text("hello")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (8, 8)).save(tiny)
    cut = tmp_path / "cut.jpg"
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (192, 256, 3), dtype=np.uint8)).save(buffer, "JPEG")
    cut.write_bytes(buffer.getvalue()[:1500])  # a JPEG cut short: caught by the 1/8-scale decode
    for path, message in [(empty, "empty"), (text, "not an image"), (tiny, "at least 16"),
                          (cut, "damaged or incomplete")]:
        with pytest.raises(ImageError, match=message):
            probe_image(path)
        with pytest.raises(ImageError, match=message):
            load_image(path)
    with pytest.raises(ImageError) as err:
        probe_image(tmp_path / "missing.png")
    assert str(tmp_path) not in str(err.value)


# VmHWM (this process's peak RSS, KiB), not ru_maxrss, which a child inherits from its parent.
_PEAK_SCRIPT = """
import sys
from backend.imageio import load_image
from backend.probe import probe_image
def peak():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
before = peak()
facts = (probe_image if sys.argv[1] == "probe" else load_image)(sys.argv[2])
print(facts.width, facts.height, peak() - before)
"""


def _peak_growth_kib(kind: str, path: Path) -> tuple[int, int, int]:
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, kind, str(path)], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    return int(out[0]), int(out[1]), int(out[2])


def test_probing_a_huge_lossless_webp_does_not_decode_it(tmp_path):
    """16383 x 2000 of one colour compresses to ~1 KB; its RGB array alone is 98 MB (the
    decoder's own figure, measured the same way, is the reference)."""
    path = tmp_path / "wide.webp"
    Image.new("RGB", (16383, 2000), (200, 10, 10)).save(path, lossless=True)
    assert path.stat().st_size < 10_000
    width, height, probe_kib = _peak_growth_kib("probe", path)
    assert (width, height) == (16383, 2000)
    _, _, decode_kib = _peak_growth_kib("load", path)
    print(f"\n[probe] peak RSS growth: header probe {probe_kib / 1024:.1f} MiB, full decode {decode_kib / 1024:.1f} MiB")
    assert decode_kib > 90 * 1024, "the reference decode should need the full RGB array"
    assert probe_kib < 8 * 1024


def test_public_text_leaves_an_already_shortened_path_alone():
    """The status panel shortens paths first (panels.shorten_paths); public_text must not add a second ellipsis."""
    assert serving.public_text("runner …/build/metric3d_runner missing", limit=None) == \
        "runner …/build/metric3d_runner missing"
    assert serving.public_text("runner /srv/app/build/metric3d_runner missing", limit=None) == \
        "runner …/metric3d_runner missing"
