"""Targets, the Pixel 8a estimate, results.json and the printed table."""
from __future__ import annotations

import json
import math
import operator
from pathlib import Path

# key -> (comparison, limit, unit)
TARGETS: dict[str, tuple[str, float, str]] = {
    "host_post_ms": ("<=", 25.0, "ms"),
    "rerender_ms": ("<=", 100.0, "ms"),
    "litert_speedup": (">=", 2.0, "x"),
    "resident_gain": (">=", 30.0, "x"),
    "wire_bytes_per_request": ("<=", 1.05e6, "B"),
    "link_overhead_ms": ("<=", 5.0, "ms"),
}
REQUIRED = ("host_post_ms", "rerender_ms", "host_pre_ms", "litert_cpu_ms", "torch_eager_ms", "litert_speedup",
            "resident_overhead_ms", "oneshot_overhead_ms", "resident_gain", "wire_bytes_per_request",
            "link_overhead_ms", "runner_start_ms", "convert_s", "convert_peak_rss_mb")
BREAKDOWNS = ("host_post_breakdown_ms", "resident_breakdown_ms", "oneshot_breakdown_ms", "runner_start_breakdown_ms",
              "link_breakdown_ms")
EXTRA_ROWS = ("rerender_cpu_ms", "rerender_12mp_ms", "rerender_12mp_cpu_ms", "rerender_recolour_12mp_ms", "host_request_ms", "litert_cpu_ms_1thread", "torch_eager_ms_1thread", "litert_speedup_1thread")
GPU_ROWS = ("gpu_fp16_mean_rel", "gpu_fp16_p99_rel", "gpu_fp32_mean_rel", "gpu_fully_accelerated",
            "gpu_fp16_max_rel", "gpu_fp16_corr", "gpu_fp32_p99_rel", "gpu_fp32_max_rel", "gpu_fp32_corr")
UNITS = {"litert_speedup": "x", "litert_speedup_1thread": "x", "resident_gain": "x",
         "wire_bytes_per_request": "B", "convert_s": "s", "convert_peak_rss_mb": "MiB",
         **{k: "%" for k in GPU_ROWS if "_rel" in k}, "gpu_fp16_corr": "", "gpu_fp32_corr": "",
         "gpu_fully_accelerated": ""}
_COMPARE = {"<=": operator.le, ">=": operator.ge}

# The worked estimate for a Pixel 8a over USB (README): measured GPU run on the phone and
# effective adb throughput of the two USB generations, plus what this machine measured.
PIXEL_GPU_MS = 44.0
USB_BYTES_PER_S = {"usb2": 35e6, "usb3": 300e6}
SEED_APP_MS = 335.0


def evaluate_targets(results: dict) -> dict[str, dict[str, object]]:
    out = {}
    for key, (op, limit, unit) in TARGETS.items():
        value = results.get(key)
        ok = isinstance(value, (int, float)) and math.isfinite(value) and _COMPARE[op](value, limit)
        out[key] = {"target": f"{op} {limit:g} {unit}", "value": value, "pass": bool(ok)}
    return out


def pixel_estimate(results: dict) -> dict[str, dict[str, float]]:
    """Per-image time on a Pixel 8a over USB 2 / USB 3, for a 12 MP photo, vs the seed phone app.

    GPU run + wire bytes at the link's effective rate + adb/runner software overhead
    (as measured through the emulated device, which already includes a loopback copy of
    the bytes, so this errs on the slow side) + host crop/resize of the photo + host post.
    """
    estimate = {}
    for link, rate in USB_BYTES_PER_S.items():
        parts = {
            "gpu_compute": PIXEL_GPU_MS,
            "usb_transfer": results["wire_bytes_per_request"] / rate * 1000.0,
            "link_software": results["link_overhead_ms"],
            "host_pre_12mp": results["host_pre_ms"],
            "host_post": results["host_post_ms"],
        }
        total = sum(parts.values())
        estimate[link] = {**parts, "total": total, "vs_seed_app_x": SEED_APP_MS / total}
    return estimate


def write_json(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def _fmt(value: object, unit: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if unit == "%":
        return f"{value * 100:.4f} %"
    if "corr" in unit:
        return f"{value:.6f}"
    if unit == "B":
        return f"{value:,.0f} B"
    if unit == "x":
        return f"{value:.1f}x"
    text = f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return f"{text} {unit}".strip()


def table(results: dict) -> str:
    """A markdown table: every headline key, its value, and its target where it has one."""
    targets = results.get("targets", {})
    rows = ["| key | value | target | |", "|---|---|---|---|"]
    for key in REQUIRED + EXTRA_ROWS + GPU_ROWS:
        if key not in results:
            continue
        unit = UNITS.get(key, "ms") if not key.endswith("_corr") else "corr"
        goal = targets.get(key)
        verdict = ("pass" if goal["pass"] else "FAIL") if goal else ""
        rows.append(f"| `{key}` | {_fmt(results.get(key), unit)} | {goal['target'] if goal else ''} | {verdict} |")
    if results.get("gpu_skipped"):
        rows.append(f"| GPU | skipped: {results['gpu_skipped']} | | |")
    elif "gpu_adapter" in results:
        rows.append(f"| GPU | {results['gpu_adapter']}; times (s) "
                    + ", ".join(f"{k} {v}" for k, v in (results.get("gpu_times_s") or {}).items()) + " | | |")
    for group in BREAKDOWNS:
        parts = results.get(group) or {}
        rows.append(f"| `{group}` | " + ", ".join(f"{k} {_fmt(v)}" for k, v in parts.items()) + " | | |")
    for link, parts in (results.get("pixel_estimate_ms") or {}).items():
        rows.append(f"| Pixel 8a estimate, {link} | {_fmt(parts['total'], 'ms')} per 12 MP photo "
                    f"(seed app {SEED_APP_MS:g} ms / estimate = {parts['vs_seed_app_x']:.1f}x) | | |")
    return "\n".join(rows)
