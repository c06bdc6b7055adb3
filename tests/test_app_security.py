"""How the app is exposed: loopback only by default, a warning before anything is public, an
upload size cap, and uploads/results kept in a private folder that empties itself."""
from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file

import app
from backend import serving
from backend.outputs import OutputStore
from testing import REPO
from testing.app import running_app

MOTORCYCLE = REPO / "examples" / "motorcycle.png"
LISTEN = "0A"  # TCP state code in /proc/net/tcp


def _predict(client: Client, image: Path):
    doc = json.loads(MOTORCYCLE.with_suffix(".json").read_text())
    return client.predict(handle_file(str(image)), doc["fx"], doc["fy"], doc["cx"], doc["cy"], api_name="/predict")


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as the kernel writes them) with a socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == LISTEN:
                found.add(address)
    return found


def _private_dirs(parent: Path) -> list[Path]:
    return sorted(parent.glob("metric3d-app-*"))


@pytest.fixture(scope="module")
def served(stand_in_model: Path, tmp_path_factory):
    """The app with results kept 3 s, its temp folder under a folder this test can inspect."""
    work = tmp_path_factory.mktemp("secure-app")
    temp_parent = work / "temp"
    temp_parent.mkdir()
    with running_app(stand_in_model, work / "app",
                     ["--backend", "host", "--temp-dir", str(temp_parent), "--keep-results", "3"]) as running:
        client = Client(running.url, verbose=False, download_files=str(work / "downloads"), analytics_enabled=False)
        yield running, client, temp_parent, work


def test_the_server_listens_on_loopback_only(served):
    running, *_ = served
    port = int(running.url.rsplit(":", 1)[1])
    assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0 or a LAN address


def test_an_oversize_upload_is_refused_with_the_limit_then_the_app_still_works(served, tmp_path):
    running, client, *_ = served
    huge = tmp_path / "huge.png"
    with huge.open("wb") as f:
        f.truncate(serving.MAX_UPLOAD_BYTES + 1)
    with pytest.raises(ValueError) as err:  # gradio_client reads the cap from the server and refuses first
        _predict(client, huge)
    assert f"exceeds the maximum file size of {serving.MAX_UPLOAD_BYTES} bytes" in str(err.value)
    with huge.open("rb") as f:  # a client that ignores the cap: the server itself refuses
        reply = httpx.post(f"{running.url}/gradio_api/upload", files={"files": ("huge.png", f, "image/png")},
                           timeout=60)
    assert reply.status_code == 413 and f"maximum allowed size of {serving.MAX_UPLOAD_BYTES} bytes" in reply.text
    _, _, npy, _ = _predict(client, MOTORCYCLE)
    assert np.load(npy).shape == (448, 448)


def test_uploads_and_results_stay_in_a_private_folder_and_expire(served):
    running, client, temp_parent, work = served
    (private,) = _private_dirs(temp_parent)
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    _predict(client, MOTORCYCLE)
    made = {p.name for p in private.rglob("*") if p.is_file()}
    assert {"motorcycle.png", "point_cloud.ply", "depth_m.npy", "depth_mm.png"} <= made
    assert any(private.glob("metric3d-*/req-*")), "no per-request result folder"

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = {p.name for p in private.rglob("*") if p.is_file()}
        if not any(private.glob("metric3d-*/req-*")) and not left & {"point_cloud.ply", "depth_m.npy"}:
            break
        time.sleep(0.5)
    assert not any(private.glob("metric3d-*/req-*")), "result folders outlived --keep-results"
    assert not left & {"point_cloud.ply", "depth_m.npy"}, f"Gradio's cached copies outlived --keep-results: {left}"
    assert running.proc.poll() is None


def test_stopping_the_app_removes_its_private_folder(stand_in_model, tmp_path):
    with running_app(stand_in_model, tmp_path / "app", ["--backend", "host", "--temp-dir", str(tmp_path)]) as run:
        assert len(_private_dirs(tmp_path)) == 1
        assert run.stop() == 0
    assert _private_dirs(tmp_path) == []


def test_defaults_are_local_and_share_is_explicit():
    args = app.parse_args([])
    assert (args.host, args.share, args.backend) == ("127.0.0.1", False, "auto")
    assert app.parse_args(["--share"]).share is True
    assert serving.exposure_warnings("127.0.0.1", False) == []
    (public,) = serving.exposure_warnings("127.0.0.1", True)
    assert "PUBLIC" in public and "Anyone with the link" in public and "phone" in public
    (lan,) = serving.exposure_warnings("0.0.0.0", False)
    assert "0.0.0.0" in lan and "network" in lan
    with pytest.raises(SystemExit):
        app.parse_args(["--keep-results", "0"])


def test_cache_schedule_sweeps_often_enough_for_the_age():
    assert serving.cache_schedule(3) == (1, 3)
    assert serving.cache_schedule(3600) == (600, 3600)
    assert serving.cache_schedule(400) == (100, 400)
    with pytest.raises(ValueError):
        serving.cache_schedule(0)


def test_output_store_prunes_folders_by_age(tmp_path):
    store = OutputStore(root=tmp_path, max_age_s=60)
    old = store.new_folder()
    between = time.monotonic()
    newer = store.new_folder()
    assert store.prune(now=between + 30) == 0 and old.is_dir()
    assert store.prune(now=between + 60) == 1
    assert not old.exists() and newer.is_dir()
    assert OutputStore(root=tmp_path).prune(now=between + 10**6) == 0  # no age limit: nothing expires
