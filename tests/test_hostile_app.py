"""app.py under hostile local clients (issue 13): every attack is refused or bounded, and a
normal client is still answered promptly afterwards. Loopback only (127.0.0.1); every test is
bounded in time and in the number of connections it opens."""
from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import psutil
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import serving_app
from backend import serving
from testing import REPO, free_port
from testing.app import running_app

MOTORCYCLE = REPO / "examples" / "motorcycle.png"
QUOTA_MB = 48
MiB = 2**20


@pytest.fixture(scope="module")
def app(stand_in_model: Path, tmp_path_factory):
    work = tmp_path_factory.mktemp("hostile-app")
    temp_parent = work / "temp"
    temp_parent.mkdir()
    with running_app(stand_in_model, work / "app",
                     ["--backend", "host", "--temp-dir", str(temp_parent), "--disk-quota", str(QUOTA_MB)]) as running:
        (private,) = temp_parent.glob("metric3d-app-*")
        yield running, private


def _predict(url: str, **overrides):
    doc = json.loads(MOTORCYCLE.with_suffix(".json").read_text())
    values = {"fx": doc["fx"], "fy": doc["fy"], "cx": doc["cx"], "cy": doc["cy"], **overrides}
    client = Client(url, verbose=False, download_files=False, analytics_enabled=False)
    return client.predict(handle_file(str(MOTORCYCLE)), values["fx"], values["fy"], values["cx"], values["cy"],
                          api_name="/predict")


def _answers_promptly(url: str, within_s: float = 5.0) -> float:
    started = time.monotonic()
    reply = httpx.get(url + "/config", timeout=within_s)
    assert reply.status_code == 200
    return time.monotonic() - started


def _rss_mb(running) -> float:
    return psutil.Process(running.proc.pid).memory_info().rss / MiB


def test_other_host_names_and_foreign_origins_are_refused(app):
    running, private = app
    port = running.url.rsplit(":", 1)[1]
    rebinding = httpx.get(running.url + "/config", headers={"Host": f"evil.example:{port}",
                                                            "Origin": f"http://evil.example:{port}"})
    assert rebinding.status_code == 421 and "access-control-allow-origin" not in rebinding.headers
    before = {p for p in private.rglob("*") if p.is_file()}
    upload = httpx.post(running.url + "/gradio_api/upload", headers={"Origin": "http://evil.example"},
                        files={"files": ("cross.png", b"\x89PNG-not-really", "image/png")})
    assert upload.status_code == 403
    assert {p for p in private.rglob("*") if p.is_file()} == before, "a cross-site upload was stored"
    preflight = httpx.options(running.url + "/gradio_api/queue/join",
                              headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
    own = httpx.get(running.url + "/config", headers={"Origin": running.url})
    assert own.status_code == 200
    assert own.headers.get("access-control-allow-origin") in (None, running.url)


def test_monitoring_and_dev_routes_are_off(app):
    running, _ = app
    for path in ("/monitoring", "/monitoring/summary", "/gradio_api/monitoring", "/gradio_api/dev/reload"):
        assert httpx.get(running.url + path).status_code == 404, path


def test_huge_bodies_are_refused_and_memory_stays_flat(app):
    running, _ = app
    rss_before = _rss_mb(running)
    port = int(running.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # announces 100 MiB, sends 2 bytes
        sock.sendall((f"POST /gradio_api/queue/join HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {100 * MiB}\r\n\r\n{{}}").encode())
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b"at most" in answer
    chunk = b'{"data": ["' + b"x" * MiB

    def streamed():
        for _ in range(100):  # 100 MiB in one string field, without a Content-Length
            yield chunk

    for _ in range(5):
        try:
            reply = httpx.post(running.url + "/gradio_api/queue/join", content=streamed(),
                               headers={"Content-Type": "application/json"}, timeout=30)
            assert reply.status_code == 413
        except httpx.HTTPError:
            pass  # the server may close while we are still sending: also a refusal
    growth = _rss_mb(running) - rss_before
    print(f"\n[hostile] RSS growth after 5 x 100 MiB bodies: {growth:.1f} MiB")
    assert growth < 50
    _answers_promptly(running.url)


def test_an_aborted_upload_leaves_no_partial_file(app):
    running, private = app
    uploads = private / "gradio"
    port = int(running.url.rsplit(":", 1)[1])
    boundary = "hostileboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"cut.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall((f"POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                      f"Content-Length: {20 * MiB}\r\n\r\n").encode() + head + os.urandom(3 * MiB))
        time.sleep(0.5)
        partial = [p for p in uploads.iterdir() if p.is_file() and p.name.startswith("tmp")]
        assert partial, "the test should see the upload's temp file while it arrives"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(p.is_file() and p.name.startswith("tmp") for p in uploads.iterdir()):
        time.sleep(0.2)
    left = [p.name for p in uploads.iterdir() if p.is_file() and p.name.startswith("tmp")]
    assert not left, f"partial upload files left behind: {left}"


def test_uploads_are_limited_in_count_and_by_the_disk_quota(app):
    running, private = app
    many = [("files", (f"p{i}.png", os.urandom(1000), "image/png")) for i in range(serving.MAX_UPLOAD_FILES + 3)]
    reply = httpx.post(running.url + "/gradio_api/upload", files=many, timeout=30)
    assert reply.status_code == 413 and f"at most {serving.MAX_UPLOAD_FILES} files" in reply.text
    statuses = []
    for i in range(4):  # 4 x 15 MiB of distinct bytes into a 48 MiB quota
        reply = httpx.post(running.url + "/gradio_api/upload",
                           files={"files": (f"big{i}.png", os.urandom(15 * MiB), "image/png")}, timeout=60)
        statuses.append(reply.status_code)
        if reply.status_code == 507:
            assert "full" in reply.text
    assert statuses[0] == 200 and 507 in statuses, statuses
    used = sum(p.stat().st_size for p in private.rglob("*") if p.is_file())
    assert used <= QUOTA_MB * MiB, f"{used / MiB:.1f} MiB stored over a {QUOTA_MB} MiB quota"


@pytest.mark.parametrize("value, says", [("abc", "plain decimal"), ([1, 2], "got list"), (10**400, "far too large"),
                                         ("1_000", "plain decimal")])
def test_wrong_api_values_get_a_message_naming_the_field(app, value, says):
    running, _ = app
    with pytest.raises(Exception) as err:
        _predict(running.url, fx=value)
    text = str(err.value)
    assert "fx" in text and says in text, text
    assert "Traceback" not in running.log()


@pytest.mark.parametrize("literal, says", [("NaN", "finite"), ("Infinity", "finite"), ("1e400", "finite")])
def test_non_finite_numbers_sent_as_raw_json_are_refused_by_name(app, literal, says):
    """gradio_client will not send NaN, but Python's JSON parser on the server accepts it."""
    running, _ = app
    (path,) = httpx.post(running.url + "/gradio_api/upload",
                         files={"files": ("m.png", MOTORCYCLE.read_bytes(), "image/png")}).json()
    image = json.dumps({"path": path, "meta": {"_type": "gradio.FileData"}})
    body = f'{{"data": [{image}, 500, {literal}, 200, 150, null]}}'
    started = httpx.post(running.url + "/gradio_api/call/predict", content=body,
                         headers={"Content-Type": "application/json"})
    assert started.status_code == 200, started.text
    stream = httpx.get(running.url + f"/gradio_api/call/predict/{started.json()['event_id']}", timeout=60).text
    assert "event: error" in stream and "fy" in stream and says in stream, stream
    assert "Traceback" not in running.log()


def test_half_sent_requests_do_not_stop_the_server(app):
    """1,500 connections that send half a request line and stop (the original attack used ~20,000)."""
    running, _ = app
    port = int(running.url.rsplit(":", 1)[1])
    log_before = len(running.log())
    sockets = []
    try:
        for _ in range(1500):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            sockets.append(sock)
        time.sleep(2 * serving_app.WATCH_INTERVAL_S + 0.5)
        took = _answers_promptly(running.url)
        fds = psutil.Process(running.proc.pid).num_fds()
        print(f"\n[hostile] with 1500 half-sent requests: normal request {took * 1000:.0f} ms, server fds {fds}")
        assert fds < serving.MAX_IDLE_CONNECTIONS + 200
        deadline = time.monotonic() + serving.HEADER_TIMEOUT_S + 5
        open_left = sockets
        while open_left and time.monotonic() < deadline:
            time.sleep(0.5)
            open_left = [s for s in open_left if not _closed(s)]
        assert not open_left, f"{len(open_left)} half-sent requests still held after {serving.HEADER_TIMEOUT_S} s"
    finally:
        for sock in sockets:
            sock.close()
    grew = len(running.log()) - log_before
    assert grew < 20_000, f"the log grew by {grew} characters"
    _, _, npy, info = _predict(running.url)
    assert np.load(io.BytesIO(httpx.get(npy["url"]).content)).shape == (500, 741) and info["intrinsics"]  # Motorcycle, full photo


def _closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_one_client_cannot_fill_the_queue_and_cheap_calls_still_answer():
    """Depth runs held on purpose (a tiny Blocks with the app's pools, served in-process):
    one session gets SESSION_MAX_DEPTH_EVENTS in, many sessions fill only the depth pool's
    cap, and a cheap call from another client is answered at once."""
    release = threading.Event()

    def depth(x):
        release.wait(60)
        return x

    with gr.Blocks() as demo:
        box, out = gr.Textbox(), gr.Textbox()
        gr.Button().click(depth, box, out, api_name="depth", concurrency_id=serving.DEPTH_POOL,
                          concurrency_limit=1)
        gr.Button().click(lambda: "ok", None, out, api_name="cheap", concurrency_limit=serving.LIGHT_CONCURRENCY)
    serving_app.harden(demo)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}"
    try:
        fn_index = next(i for i, d in enumerate(demo.config["dependencies"]) if d["api_name"] == "depth")

        def join(session: str) -> httpx.Response:
            return httpx.post(url + "/gradio_api/queue/join", timeout=10,
                              json={"data": ["x"], "fn_index": fn_index, "session_hash": session, "event_data": None})
        tries = serving.SESSION_MAX_DEPTH_EVENTS + 4
        same = [join("attacker").status_code for _ in range(tries)]
        assert same == [200] * serving.SESSION_MAX_DEPTH_EVENTS + [503] * 4
        refused = join("attacker")
        assert "already has requests waiting" in refused.text
        many = [join(f"s{i}") for i in range(serving.QUEUE_MAX_SIZE + 10)]
        # the depth pool holds QUEUE_MAX_SIZE waiting, the attacker's included
        assert sum(r.status_code == 503 for r in many) >= 10 + serving.SESSION_MAX_DEPTH_EVENTS - 2
        assert "busy" in many[-1].text
        started = time.monotonic()
        answer = Client(url, verbose=False, download_files=False, analytics_enabled=False).predict(api_name="/cheap")
        assert answer == "ok" and time.monotonic() - started < 10
    finally:
        release.set()
        demo.close()


def test_the_share_path_runs_the_guard_inside_gradios_own_server(tmp_path):
    """--share needs demo.launch (Gradio's tunnel); the same guard then runs inside its app.
    Checked here without the tunnel: same launch arguments, share=False."""
    with gr.Blocks() as demo:
        gr.Textbox()
    options = serving_app.ServeOptions(host="127.0.0.1", port=free_port(), share=True, allowed_hosts=(),
                                       private_dir=tmp_path, upload_dir=tmp_path / "gradio")
    policy, quota = serving_app.guard_for(options)
    assert policy.allowed_names is None  # the tunnel arrives under its own name
    demo.launch(server_name="127.0.0.1", server_port=options.port, prevent_thread_lock=True, quiet=True,
                **serving_app.gradio_launch_guard(policy, quota))
    url = f"http://127.0.0.1:{options.port}"
    try:
        assert httpx.get(url + "/monitoring/summary").status_code == 404
        assert httpx.post(url + "/gradio_api/upload", headers={"Origin": "http://evil.example"},
                          files={"files": ("x.png", b"x", "image/png")}).status_code == 403
        assert httpx.post(url + "/gradio_api/queue/join", content=b"x" * (serving.MAX_BODY_BYTES + 1)).status_code == 413
        assert httpx.get(url + "/config").status_code == 200
    finally:
        demo.close()
