"""The converted graph on LiteRT's GPU accelerator, for real.

The ai-edge-litert wheel ships the ML Drift GPU delegate over WebGPU (Dawn); on a machine
without a GPU, Mesa's software Vulkan driver lavapipe gives Dawn an adapter
(scripts/vulkan-driver.sh installs it). These tests run the project's models there:
- every CI: the full architecture at 112 px (every op of the real graph) fully on the GPU;
- every CI: the full 448 px golden-weights model once per arithmetic precision (fp32 on the fp32
  file, fp16 on the fp16 file: the phone's path), against upstream's golden depth;
- the host runner and the host engine on the GPU (stand-in model).
Each model is compiled and run once per session (~100+ s a full-model run on lavapipe).
A test skips only when no Vulkan adapter exists; CI sets METRIC3D_REQUIRE_GPU=1 so it fails
instead.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from backend.engine import EngineError
from backend.host_engine import HostEngine, SoftwareGpuError
from conversion.predict import LiteRtRun, depth_errors, run_litert
from device.host_runner import launch_host_runner

# Issue 9's targets for fp16 arithmetic (the phone's numerics), vs upstream on the golden input:
FP16_TARGETS = {"mean_rel": 0.003, "p99_rel": 0.01, "max_rel": 0.10}
FP16_MIN_CORR = 0.9999


def _no_adapter(message: str) -> None:
    if os.environ.get("METRIC3D_REQUIRE_GPU"):
        pytest.fail(f"METRIC3D_REQUIRE_GPU is set but LiteRT's GPU has no Vulkan adapter: {message}")
    pytest.skip(f"no Vulkan adapter for LiteRT's GPU accelerator: {message}")


@pytest.fixture(scope="session")
def gpu_engine(stand_in_model: Path) -> HostEngine:
    """The host engine on LiteRT's GPU (stand-in model, fp32 arithmetic); skips only without an adapter."""
    try:
        engine = HostEngine(stand_in_model, accelerator="gpu", gpu_precision="fp32")
    except EngineError as exc:
        if "No adapters found" in str(exc):
            _no_adapter(str(exc).splitlines()[-1])
        raise
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def small_gpu_run(gpu_engine, small_model_fp32) -> tuple[LiteRtRun, LiteRtRun]:
    """The 112 px full-architecture model on the GPU (fp32 arithmetic) and on the CPU, same input."""
    x = np.random.default_rng(3).normal(0.0, 1.0, (1, 3, 112, 112)).astype(np.float32)
    return run_litert(small_model_fp32, x, "gpu", "fp32"), run_litert(small_model_fp32, x, "cpu")


@pytest.fixture(scope="session")
def golden_gpu(gpu_engine, golden_models, golden_dir) -> dict[str, LiteRtRun]:
    """The golden-weights model on the GPU, once per arithmetic precision: {"fp32": ..., "fp16": ...}."""
    x = np.load(golden_dir / "input_nchw_f32.npy")
    return {"fp32": run_litert(golden_models["fp32"], x, "gpu", "fp32"),
            "fp16": run_litert(golden_models["fp16"], x, "gpu", "fp16")}


@pytest.fixture(scope="session")
def golden_depth(golden_dir) -> np.ndarray:
    return np.load(golden_dir / "depth_canonical_f32.npy")


def _delegate_partitions(run: LiteRtRun) -> int:
    """How many graph pieces the WebGPU delegate took, from its own log (one line per piece)."""
    return sum("Initializing WebGPU-based API from graph" in line for line in run.native_log)


def _assert_all_on_the_gpu(run: LiteRtRun) -> None:
    assert run.accelerator == "gpu" and run.fully_accelerated, "some ops were left on the CPU"
    assert _delegate_partitions(run) == 1, "the GPU delegate split the graph"
    assert not any("not supported by GPU delegate" in line for line in run.native_log)


def test_the_gpu_engine_reports_the_adapter_and_runs_the_stand_in(gpu_engine, stand_in_engine):
    rgb = np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8)
    gpu, cpu = gpu_engine.infer(rgb).depth, stand_in_engine.infer(rgb).depth
    info = gpu_engine.info()
    assert gpu_engine.adapter is not None and gpu_engine.fully_accelerated
    assert info.accelerator.startswith("GPU (LiteRT WebGPU on ") and "fp32 arithmetic" in info.accelerator
    assert np.isfinite(gpu).all() and np.abs(gpu - cpu).max() > 0  # really a different path
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4)


def test_a_software_adapter_is_refused_when_asked(gpu_engine, stand_in_model):
    if not gpu_engine.adapter.is_software:
        pytest.skip(f"this machine's adapter is hardware ({gpu_engine.adapter.label})")
    with pytest.raises(SoftwareGpuError, match="software adapter .*30x slower"):
        HostEngine(stand_in_model, accelerator="gpu", allow_software_gpu=False)


def test_the_runner_on_the_gpu_says_so_and_matches_the_python_gpu_path(gpu_engine, stand_in_model):
    launched = launch_host_runner(stand_in_model, accelerator="gpu", precision="fp32", threads=2)
    try:
        client = launched.client(timeout=120)
        info = client.info()
        rgb = np.random.default_rng(1).integers(0, 256, (448, 448, 3), dtype=np.uint8)
        reply = client.infer(rgb, want="f32", timeout=300)
        client.quit()
    finally:
        launched.stop()
    assert launched.ready["accelerator"] == info["accelerator"] == "gpu-webgpu"
    assert info["gpu_library"] == "GPU WebGPU" and "reported by LiteRT" in info["accelerator_basis"]
    assert info["fully_accelerated"] is True and info["gpu_error"] == "" and info["precision"] == "fp32"
    assert reply.nonfinite == 0 and reply.compute_us > 0
    # Same accelerator, same precision, same normalization: measured bit-identical (fp32 and fp16).
    np.testing.assert_array_equal(reply.depth, gpu_engine.infer(rgb).depth)


def test_every_op_of_the_graph_runs_on_the_gpu(small_gpu_run):
    gpu, cpu = small_gpu_run
    _assert_all_on_the_gpu(gpu)
    assert np.isfinite(gpu.depth).all()
    errors = depth_errors(gpu.depth, cpu.depth)
    # fp32 arithmetic on both paths. Measured (random weights, this input): corr 0.9999966,
    # mean 0.17%, p99 0.82%, max 1.1%; fp16 arithmetic gives mean 0.97%, p99 3.9%, so these
    # limits (~3x the fp32 figures) also catch an fp32 request that silently ran in fp16.
    assert errors["corr"] >= 0.99999 and errors["mean_rel"] <= 0.005 and errors["p99_rel"] <= 0.025, errors


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_the_full_model_runs_entirely_on_the_gpu(golden_gpu, precision):
    run = golden_gpu[precision]
    _assert_all_on_the_gpu(run)
    assert run.depth.shape == (1, 1, 448, 448) and np.isfinite(run.depth).all()


# GPU fp32 arithmetic (fp32 file) vs upstream on the golden input, measured here (lavapipe,
# ai-edge-litert 2.3.0): corr 0.9999978, mean 0.028%, p99 0.45%, max 0.66%. fp16 arithmetic
# measured mean 0.73%, p99 2.5%, so these limits (2-7x the fp32 figures) also catch an fp32
# request that silently ran in fp16. (The random-weights model showed single small-depth
# pixels up to 26% off in fp32, so max_rel keeps more room than the others.)
GPU_FP32_LIMITS = {"mean_rel": 0.001, "p99_rel": 0.01, "max_rel": 0.05}


def test_gpu_fp32_fidelity_against_upstream(golden_gpu, golden_depth):
    errors = depth_errors(golden_gpu["fp32"].depth, golden_depth)
    assert errors["corr"] >= 0.99999, errors
    assert all(errors[k] <= v for k, v in GPU_FP32_LIMITS.items()), errors


def test_gpu_fp16_stays_close_to_upstream(golden_gpu, golden_depth):
    # A loose guard (measured before the fp16-robust rewrites: corr 0.99981, mean 0.73%, p99 2.5%, max 4.6%).
    errors = depth_errors(golden_gpu["fp16"].depth, golden_depth)
    assert errors["corr"] >= 0.999 and errors["mean_rel"] <= 0.03, errors


# fp16 GPU arithmetic vs upstream after the fp16-robust rewrites (d/100 GRU state, interior-exact
# clamps, blocked expectation), measured here (lavapipe, ai-edge-litert 2.3.0): mean 0.635%,
# p99 2.31%, max 3.40%, corr 0.999822 (before them: mean 0.73%, p99 2.5%, max 4.6%). Bounds just
# above the after-figures and below the before-figures, so a change that loses the rewrites'
# fp16 accuracy (e.g. back to the (d-200)/100 state) fails here.
FP16_AFTER_REWRITES_LIMITS = {"mean_rel": 0.0070, "p99_rel": 0.0245, "max_rel": 0.042}
FP16_AFTER_REWRITES_MIN_CORR = 0.9997


def test_gpu_fp16_keeps_the_accuracy_of_the_fp16_robust_rewrites(golden_gpu, golden_depth):
    errors = depth_errors(golden_gpu["fp16"].depth, golden_depth)
    print(f"golden fp16 GPU vs upstream: {errors}")
    print(f"golden fp32 GPU vs upstream: {depth_errors(golden_gpu['fp32'].depth, golden_depth)}")
    assert errors["corr"] >= FP16_AFTER_REWRITES_MIN_CORR, errors
    assert all(errors[k] <= v for k, v in FP16_AFTER_REWRITES_LIMITS.items()), errors


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="issue 9 item 3: fp16 arithmetic still misses the targets after the fp16-robust rewrites "
                          "(measured: mean 0.64%, p99 2.3%, max 3.4%, corr 0.99982); the cause is fp16 "
                          "accumulation in every long matmul/conv sum, which a graph rewrite cannot remove")
def test_gpu_fp16_meets_the_fidelity_targets(golden_gpu, golden_depth):
    errors = depth_errors(golden_gpu["fp16"].depth, golden_depth)
    assert errors["corr"] >= FP16_MIN_CORR, errors
    assert all(errors[k] <= v for k, v in FP16_TARGETS.items()), errors


def _no_phone():
    raise EngineError("no phone in this test")


def test_auto_keeps_a_software_gpu_off_and_says_why(gpu_engine, stand_in_model):
    from device.backends import Backends

    if not gpu_engine.adapter.is_software:
        pytest.skip(f"this machine's adapter is hardware ({gpu_engine.adapter.label})")
    backends = Backends(lambda: HostEngine(stand_in_model, threads=1), _no_phone,
                        lambda allow_software: HostEngine(stand_in_model, accelerator="gpu",
                                                          allow_software_gpu=allow_software))
    try:
        auto = backends.pick("auto")
        assert auto.where == "host" and auto.notice.endswith("running on the host CPU")
        assert "Host GPU not used" in auto.notice and "software adapter" in auto.notice
        explicit = backends.pick("host-gpu")  # asked for by name: a software GPU is allowed
        assert explicit.where == "host-gpu" and explicit.engine.info().accelerator.startswith("GPU (")
        assert backends.pick("auto").where == "host"  # and auto still does not take it
        status = backends.status()
        assert status["host_gpu"]["accelerator"].startswith("GPU (") and "software" in status["host_gpu_problem"]
    finally:
        backends.close()


def test_predict_cli_runs_the_gpu_path(gpu_engine, stand_in_model, tmp_path):
    import subprocess
    import sys

    x = np.random.default_rng(4).normal(0.0, 1.0, (1, 3, 448, 448)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    cli = [sys.executable, "-m", "conversion", "predict", "--input", str(tmp_path / "x.npy")]
    outputs = {}
    for name, extra in {"cpu": [], "fp32": ["--accelerator", "gpu", "--gpu-precision", "fp32"],
                        "fp16": ["--accelerator", "gpu"]}.items():
        proc = subprocess.run([*cli, "--output", str(tmp_path / f"{name}.npy"), "--model", str(stand_in_model), *extra],
                              capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs[name] = np.load(tmp_path / f"{name}.npy")
    np.testing.assert_allclose(outputs["fp32"], outputs["cpu"], rtol=1e-4, atol=1e-4)
    fp16_error = np.abs(outputs["fp16"] - outputs["cpu"]).max()
    assert fp16_error > np.abs(outputs["fp32"] - outputs["cpu"]).max()  # the precision switch takes effect
    refused = subprocess.run([*cli, "--output", str(tmp_path / "t.npy"), "--checkpoint", "x.pth", "--accelerator", "gpu"],
                             capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert refused.returncode == 2 and "--accelerator applies to --model" in refused.stderr
