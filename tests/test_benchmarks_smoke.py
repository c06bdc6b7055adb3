"""`python -m benchmarks --quick` runs every measurement path end to end on the stand-in model.

Timings are NOT asserted (two shared cores make them noisy; budgets live in
benchmarks/results.json). What is asserted: every key other tools read is there with a
finite positive value, the targets are judged from those values, the wire bytes are what
the protocol defines, and the PyTorch counterpart computes the same depth as the .tflite.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.report import BREAKDOWNS, REQUIRED, TARGETS, evaluate_targets, pixel_estimate, table
from benchmarks.timing import median_ms, medians
from device.protocol import HEADER_SIZE, INFER_REPLY

REPO = Path(__file__).resolve().parents[1]


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_run(stand_in_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--model", str(stand_in_model),
         "--output", str(out / "results.json"), "--cache-dir", str(out / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), proc.stdout


def test_every_headline_key_is_finite_and_positive(quick_run):
    results, _ = quick_run
    missing = [k for k in REQUIRED if k not in results]
    assert not missing
    assert {k: results[k] for k in REQUIRED if not _positive(results[k])} == {}
    for group in BREAKDOWNS:
        assert results[group] and all(math.isfinite(v) and v >= 0 for v in results[group].values()), group
    assert results["machine"]["cores"] >= 1 and results["machine"]["litert"] != "not installed"
    assert results["mode"] == "quick"


def test_ratios_and_targets_follow_from_the_measured_values(quick_run):
    results, stdout = quick_run
    assert results["litert_speedup"] == pytest.approx(results["torch_eager_ms"] / results["litert_cpu_ms"])
    assert results["resident_gain"] == pytest.approx(results["oneshot_overhead_ms"] / results["resident_overhead_ms"])
    assert set(results["targets"]) == set(TARGETS)
    assert results["targets"] == json.loads(json.dumps(evaluate_targets(results)))
    for key in REQUIRED:
        assert f"`{key}`" in stdout


def test_wire_bytes_are_those_of_the_protocol(quick_run, stand_in_model):
    results, _ = quick_run
    size = 448
    assert results["wire_request_bytes"] == HEADER_SIZE + size * size * 3
    assert results["wire_reply_bytes"] == HEADER_SIZE + INFER_REPLY.size + size * size * 2  # float16 depth
    assert results["wire_bytes_per_request"] == results["wire_request_bytes"] + results["wire_reply_bytes"]


def test_litert_and_pytorch_timings_are_of_the_same_network(quick_run, stand_in_model):
    results, _ = quick_run
    assert results["models"]["network"]["path"].endswith(stand_in_model.name)
    assert results["litert_torch_max_abs_diff_m"] < 1e-3  # depth spans 0.1-20 m: a different net differs by meters


def test_the_conversion_was_measured_in_this_run(quick_run):
    results, _ = quick_run
    assert results["convert_source"].startswith("this run")
    assert results["convert_wall_s"] >= results["convert_s"] * 0.5 and results["convert_output_bytes"] > 10_000


def test_targets_pass_and_fail_on_their_limits():
    at_limits = {"host_post_ms": 25.0, "rerender_ms": 100.0, "litert_speedup": 2.0, "resident_gain": 30.0,
                 "wire_bytes_per_request": 1.05e6, "link_overhead_ms": 5.0}
    assert all(v["pass"] for v in evaluate_targets(at_limits).values())
    worse = {"host_post_ms": 25.1, "rerender_ms": 100.1, "litert_speedup": 1.9, "resident_gain": 29.0,
             "wire_bytes_per_request": 1.06e6, "link_overhead_ms": float("nan")}
    assert not any(v["pass"] for v in evaluate_targets(worse).values())
    assert not evaluate_targets({})["host_post_ms"]["pass"]


def test_pixel_estimate_adds_up():
    measured = {"wire_bytes_per_request": 1_050_000.0, "link_overhead_ms": 2.0, "host_pre_ms": 30.0,
                "host_post_ms": 20.0}
    est = pixel_estimate(measured)
    assert est["usb2"]["usb_transfer"] == pytest.approx(30.0)  # 1.05 MB at 35 MB/s
    assert est["usb3"]["usb_transfer"] == pytest.approx(3.5)
    assert est["usb2"]["total"] == pytest.approx(44.0 + 30.0 + 2.0 + 30.0 + 20.0)
    assert est["usb3"]["vs_seed_app_x"] == pytest.approx(335.0 / (44.0 + 3.5 + 2.0 + 30.0 + 20.0))
    assert "Pixel 8a estimate, usb2" in table({"pixel_estimate_ms": est})


def test_medians_are_per_stage():
    assert medians([{"a": 1.0, "b": 5.0}, {"a": 3.0}, {"a": 2.0, "b": 7.0}]) == {"a": 2.0, "b": 6.0}
    calls = []
    assert median_ms(lambda: calls.append(1), repeats=3, warmup=2) >= 0 and len(calls) == 5
    with pytest.raises(ValueError):
        median_ms(lambda: None, repeats=0)


def test_gpu_keys_are_measured_or_the_missing_adapter_is_named(quick_run):
    from benchmarks.gpu import KEYS

    results, stdout = quick_run
    assert set(KEYS) <= set(results)
    if results.get("gpu_skipped"):
        assert "no Vulkan adapter" in results["gpu_skipped"] and "GPU | skipped" in stdout
        return
    assert results["gpu_fully_accelerated"] is True
    for precision in ("fp16", "fp32"):
        mean, p99, top = (results[f"gpu_{precision}_{k}_rel"] for k in ("mean", "p99", "max"))
        assert 0 <= mean <= top and 0 <= p99 <= top and math.isfinite(top)
        assert -1 <= results[f"gpu_{precision}_corr"] <= 1
    assert "`gpu_fp16_mean_rel`" in stdout and "`gpu_fully_accelerated` | True" in stdout
