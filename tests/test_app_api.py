"""The `predict` API of a real app.py subprocess, through gradio_client over loopback."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from testing import REPO
from testing.clouds import read_cloud
from testing.app import running_app

MOTORCYCLE = REPO / "examples" / "motorcycle.png"


@pytest.fixture(scope="module")
def client(stand_in_model: Path, tmp_path_factory) -> Client:
    logs = tmp_path_factory.mktemp("app")
    with running_app(stand_in_model, logs / "app") as app:
        yield Client(app.url, verbose=False, download_files=str(logs / "downloads"), analytics_enabled=False)


def _motorcycle_intrinsics() -> dict:
    doc = json.loads(MOTORCYCLE.with_suffix(".json").read_text())
    return {k: doc[k] for k in ("fx", "fy", "cx", "cy")}


def _predict(client: Client, image: Path, intr: dict):
    return client.predict(handle_file(str(image)), intr["fx"], intr["fy"], intr["cx"], intr["cy"],
                          api_name="/predict")


def test_predict_returns_files_that_parse(client):
    intr = _motorcycle_intrinsics()
    colormap_path, ply_path, npy_path, info = _predict(client, MOTORCYCLE, intr)

    depth = np.load(npy_path)
    assert depth.shape == (448, 448) and depth.dtype == np.float32
    assert np.isfinite(depth).all() and depth.min() > 0

    colored = np.asarray(Image.open(colormap_path).convert("RGB"))
    assert colored.shape[0] == 448 and colored.shape[1] > 448  # depth plus its colorbar
    assert colored[:, :448].reshape(-1, 3).std(axis=0).max() > 5  # not a flat picture

    xyz, rgb = read_cloud(ply_path)
    assert len(xyz) == info["points"] > 0 and rgb.shape == (len(xyz), 3)
    assert np.isclose(xyz[:, 2].max(), depth.max(), rtol=1e-5)

    assert info["intrinsics"]["image"]["fx"] == pytest.approx(intr["fx"], abs=1e-3)
    side = min(741, 500)
    assert info["intrinsics"]["network"]["fx"] == pytest.approx(intr["fx"] * 448 / side, rel=1e-4)
    assert info["engine"] == "Host LiteRT" and info["model"]["published"] is False
    assert {"decode", "compute", "point_cloud"} <= set(info["timings_ms"])


def test_bad_upload_is_explained_then_the_app_still_works(client, tmp_path):
    broken = tmp_path / "holiday.jpg"
    broken.write_bytes(b"this is not a JPEG at all" * 10)
    with pytest.raises(Exception) as err:
        _predict(client, broken, _motorcycle_intrinsics())
    assert "not an image this demo can read" in str(err.value)

    with pytest.raises(Exception) as err:
        _predict(client, MOTORCYCLE, {"fx": 5.0, "fy": 5.0, "cx": 300.0, "cy": 250.0})
    assert "implausible" in str(err.value) and "pixels" in str(err.value)

    _, _, npy_path, _ = _predict(client, MOTORCYCLE, _motorcycle_intrinsics())
    assert np.load(npy_path).shape == (448, 448)
