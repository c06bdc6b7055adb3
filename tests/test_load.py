"""Load (issue 5.3): 16 concurrent API clients x 10 requests, each with its own image and camera,
against ONE app.py subprocess. Zero errors, and every reply belongs to its own request: its
depth must equal what backend.pipeline gives locally for that image and camera with the same
model (a reply swapped between two requests, or mixed up in the cache, cannot pass: every
image and every focal length is different). The wall time is printed, not asserted.
"""
from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from backend.host_engine import HostEngine
from backend.imageio import load_image
from backend.intrinsics import Intrinsics
from backend.pipeline import run
from testing.app import running_app
from testing.images import distinct_photo

CLIENTS = 16
REQUESTS_EACH = 10
REQUEST_TIMEOUT_S = 120.0  # 160 requests share two CPU cores: a request may wait behind ~15 others


@dataclass(frozen=True)
class Request:
    client: int
    index: int
    path: Path
    intrinsics: Intrinsics


def make_requests(folder: Path) -> list[list[Request]]:
    """CLIENTS lists of REQUESTS_EACH requests; all images and focal lengths distinct."""
    folder.mkdir(parents=True, exist_ok=True)
    plans = []
    for c in range(CLIENTS):
        plan = []
        for i in range(REQUESTS_EACH):
            n = c * REQUESTS_EACH + i
            path = folder / f"client{c:02d}_request{i}.png"
            photo = distinct_photo(n)
            height, width = photo.shape[:2]
            Image.fromarray(photo).save(path)
            focal = 300.0 + 2.5 * n
            plan.append(Request(c, i, path, Intrinsics(focal, focal, (width - 1) / 2 + i, (height - 1) / 2 - i)))
        plans.append(plan)
    return plans


def serve_one_client(url: str, plan: list[Request]) -> list[tuple[Request, dict | None, bytes | None, str]]:
    """One API user sending its requests one after another; returns (request, info, depth .npy bytes, error)."""
    client = Client(url, verbose=False, download_files=False)
    answers = []
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as http:
        for request in plan:
            k = request.intrinsics
            try:
                _, _, npy, info = client.submit(handle_file(str(request.path)), k.fx, k.fy, k.cx, k.cy,
                                                api_name="/predict").result(timeout=REQUEST_TIMEOUT_S)
                fetched = http.get(npy["url"])
                fetched.raise_for_status()
                answers.append((request, info, fetched.content, ""))
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown below
                answers.append((request, None, None, f"{type(exc).__name__}: {exc}"))
    return answers


def test_sixteen_concurrent_clients_get_their_own_correct_answers(stand_in_model: Path, tmp_path):
    plans = make_requests(tmp_path / "photos")
    with running_app(stand_in_model, tmp_path / "app") as app:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            answers = [a for done in pool.map(lambda plan: serve_one_client(app.url, plan), plans) for a in done]
        wall = time.perf_counter() - started
    total = CLIENTS * REQUESTS_EACH
    print(f"\n[load] {total} requests from {CLIENTS} concurrent clients in {wall:.1f} s "
          f"({total / wall:.1f} requests/s)")

    errors = [f"client {r.client} request {r.index}: {e}" for r, _, _, e in answers if e]
    assert len(answers) == total
    assert not errors, f"{len(errors)} of {total} requests failed:\n" + "\n".join(errors[:10])

    engine = HostEngine(stand_in_model)
    try:
        wrong = []
        for request, info, npy, _ in answers:
            k = request.intrinsics
            used = info["intrinsics"]["image"]
            if (used["fx"], used["cx"], used["cy"]) != pytest.approx((k.fx, k.cx, k.cy), abs=1e-3):
                wrong.append(f"client {request.client} request {request.index}: camera {used} is not its own")
                continue
            got = np.load(io.BytesIO(npy))
            expected = run(load_image(request.path), k, engine).depth
            if got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=1e-5):
                wrong.append(f"client {request.client} request {request.index}: depth differs from its own image's "
                             f"(max |diff| {np.abs(got - expected).max() if got.shape == expected.shape else 'shape'})")
    finally:
        engine.close()
    assert not wrong, f"{len(wrong)} replies do not belong to their request:\n" + "\n".join(wrong[:10])


def test_the_load_images_really_are_distinct(tmp_path):
    """The check above is only as strong as its inputs: no two requests may share a picture."""
    photos = [distinct_photo(n) for n in range(CLIENTS * REQUESTS_EACH)]
    digests = {p.tobytes() for p in photos}
    assert len(digests) == len(photos)
    closest = min(np.abs(photos[a].astype(int) - photos[b].astype(int)).mean()
                  for a in range(0, len(photos), 7) for b in range(a + 1, min(a + 8, len(photos))))
    assert closest > 10  # mean per-pixel difference of neighbouring seeds, in 0-255 units
