"""The conversion CLI end to end: convert (checkpoint and random weights), quantize, predict, metadata,
and fidelity of the LiteRT models against the golden upstream depth."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.model_info import METADATA_NAME
from conversion.metadata import embed_metadata, read_metadata
from _conversion_helpers import run_litert

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conversion", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _compare(depth: np.ndarray, golden: np.ndarray) -> tuple[float, float]:
    corr = float(np.corrcoef(depth.ravel(), golden.ravel())[0, 1])
    return corr, float(np.mean(np.abs(depth - golden) / golden))


@pytest.fixture(scope="module")
def golden_input(golden_dir) -> np.ndarray:
    return np.load(golden_dir / "input_nchw_f32.npy")


@pytest.fixture(scope="module")
def golden_depth(golden_dir) -> np.ndarray:
    return np.load(golden_dir / "depth_canonical_f32.npy")


def test_fp32_litert_matches_golden(golden_models, golden_input, golden_depth, tmp_path):
    out = tmp_path / "depth_fp32.npy"
    _ok(_cli("predict", "--input", _save(tmp_path, golden_input),
             "--output", str(out), "--model", str(golden_models["fp32"])))
    depth = np.load(out)
    assert depth.shape == (1, 1, 448, 448) and depth.dtype == np.float32
    corr, mean_rel = _compare(depth, golden_depth)
    print(f"LiteRT fp32 vs golden: corr {corr:.9f}, mean rel {mean_rel:.3e}, "
          f"max rel {float(np.max(np.abs(depth - golden_depth) / golden_depth)):.3e}")
    assert corr >= 0.99999 and mean_rel <= 1e-4


def test_fp16_litert_matches_golden(golden_models, golden_input, golden_depth):
    depth = run_litert(golden_models["fp16"], golden_input)
    corr, mean_rel = _compare(depth, golden_depth)
    print(f"LiteRT fp16 vs golden: corr {corr:.9f}, mean rel {mean_rel:.3e}")
    assert corr >= 0.9999 and mean_rel <= 1e-3
    assert golden_models["fp16"].stat().st_size < 0.6 * golden_models["fp32"].stat().st_size


def _save(tmp_path: Path, x: np.ndarray) -> str:
    path = tmp_path / "input.npy"
    np.save(path, x)
    return str(path)


def test_converted_models_pass_the_gpu_audit(golden_models):
    for path in golden_models.values():
        proc = _cli("audit", str(path), timeout=120)
        assert proc.returncode == 0, proc.stdout
        assert "BATCH_MATMUL" in proc.stdout and "GPU-safe: yes" in proc.stdout


def test_metadata_and_stats_describe_the_conversion(golden_models, golden_checkpoint):
    sha = hashlib.sha256(golden_checkpoint.read_bytes()).hexdigest()
    for precision, path in golden_models.items():
        doc = read_metadata(path)
        assert doc["precision"] == precision
        assert doc["source"] == {"checkpoint_sha256": sha}
        assert doc["input"]["name"] == "image" and doc["input"]["shape"] == [1, 3, 448, 448]
        assert doc["output"]["name"] == "depth" and doc["output"]["shape"] == [1, 1, 448, 448]
        assert doc["converter"]["version"]
    stats = json.loads(Path(str(golden_models["fp32"]) + ".json").read_text())
    assert stats["seconds"] > 0 and stats["peak_rss_mb"] > 100 and stats["precision"] == "fp32"
    assert stats["output_bytes"] == golden_models["fp32"].stat().st_size


def test_signature_names_and_shapes(golden_models):
    from ai_edge_litert.compiled_model import CompiledModel

    model = CompiledModel.from_file(str(golden_models["fp16"]))
    assert model.get_signature_list() == {"serving_default": {"inputs": ["image"], "outputs": ["depth"]}}
    assert model.get_input_tensor_details("serving_default")["image"]["shape"] == [1, 3, 448, 448]
    assert model.get_output_tensor_details("serving_default")["depth"]["shape"] == [1, 1, 448, 448]


def test_predict_with_pytorch_checkpoint_matches_golden(golden_checkpoint, golden_input, golden_depth, tmp_path):
    out = tmp_path / "depth_torch.npy"
    _ok(_cli("predict", "--input", _save(tmp_path, golden_input), "--output", str(out),
             "--checkpoint", str(golden_checkpoint)))
    depth = np.load(out)
    err = np.abs(depth - golden_depth)
    assert np.all(err <= 1e-4 + 5e-5 * golden_depth) and float(np.mean(err / golden_depth)) <= 5e-6


def test_random_weight_models_from_conftest(full_model_fp32, full_model_fp16, golden_input):
    for precision, path in (("fp32", full_model_fp32), ("fp16", full_model_fp16)):
        assert _cli("audit", str(path), timeout=120).returncode == 0
        doc = read_metadata(path)
        assert doc["source"] == {"random_seed": 0} and doc["precision"] == precision
    d32, d16 = run_litert(full_model_fp32, golden_input), run_litert(full_model_fp16, golden_input)
    assert np.all(np.isfinite(d32)) and d32.min() >= 0.1 and d32.max() <= 200.0
    assert d32.std() / d32.mean() > 0.05  # not a flat map: the random weights are non-degenerate
    assert float(np.mean(np.abs(d16 - d32) / d32)) <= 1e-3


def test_predict_rejects_bad_input_clearly(golden_models, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 448, 448), np.float32))
    proc = _cli("predict", "--input", str(bad), "--output", str(tmp_path / "o.npy"),
                "--model", str(golden_models["fp32"]), timeout=120)
    assert proc.returncode == 2 and "[1,3,H,W]" in proc.stderr and "Traceback" not in proc.stderr
    wrong_size = tmp_path / "small.npy"
    np.save(wrong_size, np.zeros((1, 3, 224, 224), np.float32))
    proc = _cli("predict", "--input", str(wrong_size), "--output", str(tmp_path / "o.npy"),
                "--model", str(golden_models["fp32"]), timeout=120)
    assert proc.returncode == 2 and "expects input shape [1, 3, 448, 448]" in proc.stderr


def test_convert_reports_missing_checkpoint(tmp_path):
    proc = _cli("convert", "--checkpoint", str(tmp_path / "nope.pth"), "--output", str(tmp_path / "x.tflite"),
                timeout=120)
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr


def test_embed_metadata_replaces_entry_and_keeps_model_working(stand_in_model, tmp_path, golden_input):
    path = tmp_path / "copy.tflite"
    path.write_bytes(stand_in_model.read_bytes())
    before = run_litert(path, golden_input)
    embed_metadata(path, {"format": 1, "note": "first"})
    embed_metadata(path, {"format": 1, "note": "second"})
    assert read_metadata(path) == {"format": 1, "note": "second"}
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    names = [model.Metadata(i).Name().decode() for i in range(model.MetadataLength())]
    assert names.count(METADATA_NAME) == 1
    np.testing.assert_array_equal(run_litert(path, golden_input), before)


def _externalize_buffers(src: Path, dst: Path) -> int:
    """Rewrite `src` with its constant data after the flatbuffer (offset/size), as big models do."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(src.read_bytes(), 0)
    moved = [b for b in model.buffers if b.data is not None and len(b.data) >= 64]
    payloads = [bytes(np.asarray(b.data, np.uint8)) for b in moved]
    for b, p in zip(moved, payloads):
        b.data, b.offset, b.size = None, 1 << 40, len(p)  # placeholder keeps the flatbuffer size fixed
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    head = len(builder.Output())
    blob, pos = bytearray(), (head + 63) // 64 * 64
    for b, p in zip(moved, payloads):
        b.offset = pos + len(blob)
        blob += p + b"\0" * (-len(p) % 64)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    fb = builder.Output()
    assert len(fb) == head
    dst.write_bytes(fb + b"\0" * (pos - head) + bytes(blob))
    return len(moved)


def test_embed_metadata_handles_buffers_outside_the_flatbuffer(stand_in_model, tmp_path, golden_input):
    path = tmp_path / "external.tflite"
    assert _externalize_buffers(stand_in_model, path) > 0
    before = run_litert(path, golden_input)
    embed_metadata(path, {"format": 1, "note": "external"})
    assert read_metadata(path) == {"format": 1, "note": "external"}
    np.testing.assert_array_equal(run_litert(path, golden_input), before)
