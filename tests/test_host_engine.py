"""HostEngine on real LiteRT: contract checks, determinism, thread safety, error messages."""
from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from backend.engine import EngineError
from backend.host_engine import HostEngine
from backend.preprocess import normalize
from testing import REPO


@pytest.fixture(scope="module")
def wrong_shape_model(tmp_path_factory) -> Path:
    """A real conversion with the wrong contract: [1,3,64,64] -> [1,1,64,64], no metadata."""
    import litert_torch
    import torch

    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 1, 3, padding=1).eval()
    out = tmp_path_factory.mktemp("wrong") / "wrong_shape.tflite"
    litert_torch.signature("serving_default", net, sample_kwargs={"input": torch.zeros(1, 3, 64, 64)}) \
        .convert().export(str(out))
    return out


def _images(n: int, size: int = 448) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_output_shape_dtype_and_determinism(stand_in_engine):
    a, b = _images(2)
    first, again, other = stand_in_engine.infer(a), stand_in_engine.infer(a), stand_in_engine.infer(b)
    assert first.depth.shape == (448, 448) and first.depth.dtype == np.float32
    assert np.isfinite(first.depth).all()
    np.testing.assert_array_equal(first.depth, again.depth)
    assert np.abs(first.depth - other.depth).max() > 1e-3  # the output depends on the image
    assert set(first.timings_ms) == {"normalize", "compute"} and all(v >= 0 for v in first.timings_ms.values())


def test_matches_the_plain_litert_interpreter(stand_in_engine, stand_in_model):
    from ai_edge_litert.interpreter import Interpreter

    (rgb,) = _images(1)
    info = stand_in_engine.info().model
    interp = Interpreter(model_path=str(stand_in_model))
    runner = interp.get_signature_runner()
    reference = runner(image=normalize(rgb, info.mean, info.std))["depth"][0, 0]
    np.testing.assert_allclose(stand_in_engine.infer(rgb).depth, reference, rtol=1e-5, atol=1e-5)


def test_concurrent_requests_get_their_own_results(stand_in_engine):
    images = _images(6)
    serial = [stand_in_engine.infer(im).depth for im in images]
    with ThreadPoolExecutor(max_workers=6) as pool:
        parallel = list(pool.map(lambda im: stand_in_engine.infer(im).depth, images * 3))
    for i, depth in enumerate(parallel):
        np.testing.assert_array_equal(depth, serial[i % len(images)])


def test_info_reports_threads_and_model(stand_in_model):
    one = HostEngine(stand_in_model, threads=1)
    try:
        info = one.info()
        assert info.engine == "Host LiteRT"
        assert info.accelerator == "CPU (XNNPACK, 1 thread)"
        assert info.model.published is False and info.model.input_size == one.input_size == 448
        assert "image -> depth" in info.details["signature"]
    finally:
        one.close()


def test_wrong_signature_is_explained(wrong_shape_model):
    with pytest.raises(EngineError) as err:
        HostEngine(wrong_shape_model)
    text = str(err.value)
    assert "expected one float32 input [1, 3, 448, 448]" in text
    assert "input [1, 3, 64, 64] float32" in text  # what the file really has


def test_not_a_model_is_explained(tmp_path):
    fake = tmp_path / "photo.tflite"
    fake.write_bytes(b"\xff\xd8\xff\xe0 definitely a jpeg" * 4)
    with pytest.raises(EngineError, match="not a TFLite model"):
        HostEngine(fake)


def test_wrong_input_and_closed_engine(stand_in_model):
    eng = HostEngine(stand_in_model)
    with pytest.raises(EngineError, match=r"uint8 \[448,448,3\]"):
        eng.infer(np.zeros((224, 224, 3), np.uint8))
    eng.close()
    with pytest.raises(EngineError, match="closed"):
        eng.infer(_images(1)[0])


def test_litert_info_lines_stay_off_the_console(stand_in_model):
    code = ("import numpy as np, sys; from backend.host_engine import HostEngine; "
            f"e = HostEngine({str(stand_in_model)!r}); e.infer(np.zeros((448, 448, 3), np.uint8)); "
            "print('loaded', file=sys.stderr, flush=True)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    before_exit = proc.stderr.split("loaded")[0]
    assert "INFO" not in before_exit and "XNNPACK" not in before_exit, before_exit


def test_full_architecture_fp16_runs_on_the_host(full_model_fp16):
    """The real Metric3D graph (random weights): the engine accepts our conversion's signature."""
    eng = HostEngine(full_model_fp16)
    try:
        info = eng.info()
        assert info.model.precision == "fp16" and info.model.published is False
        assert "random weights" in info.model.source
        result = eng.infer(_images(1)[0])
        assert result.depth.shape == (448, 448) and np.isfinite(result.depth).all()
        assert 0.1 - 1e-3 <= result.depth.min() and result.depth.max() <= 200 + 1e-3  # the head's clamp
    finally:
        eng.close()
