"""Markdown for the app's info panel (one result) and status panel (where requests run).

Pure functions of JSON-ready dicts, so the wording can be tested without a server and
the API returns the same facts the page shows.
"""
from __future__ import annotations

BUILD_COMMAND = "export ANDROID_NDK_HOME=/path/to/android-ndk; python -m device build-android"
LOOK_AGAIN = "“Look for the phone again”"


def _fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}{unit}"


def timing_line(split: dict[str, float], on_device: bool) -> str:
    """Where the time went, in the order it was spent."""
    parts = [f"host pre-processing {split['host_preprocess']:.1f} ms"]
    if on_device:
        parts += [f"transfer (USB) {split['transfer']:.1f} ms", f"Pixel compute {split['network']:.1f} ms"]
    else:
        parts.append(f"host CPU compute {split['network']:.1f} ms")
    parts.append(f"host post-processing {split['host_postprocess']:.1f} ms")
    return f"**Time:** {' · '.join(parts)} · **total {split['total']:.0f} ms**"


def info_markdown(info: dict) -> str:
    """The info panel: what ran, which model, which camera, where the time went."""
    model, intr, depth = info["model"], info["intrinsics"], info["depth_m"]
    kind = ("published LiteRT conversion — known to deviate from upstream Metric3D"
            if model["published"] else f"this project's conversion ({model['source']})")
    stages = " · ".join(f"{k} {v:.1f} ms" for k, v in info["timings_ms"].items())
    on_device = info.get("backend", {}).get("used") == "device"
    i, n = intr["image"], intr["network"]
    notice = info["engine_details"].get("notice")
    return "\n\n".join(([f"⚠️ {notice}"] if notice else []) + [
        f"**Engine:** {info['engine']} — {info['accelerator']}",
        f"**Model:** {model['name']} · `{model['file']}` · {model['precision']} · "
        f"sha256 `{model['sha256'][:12]}…`",
        f"**Model origin:** {kind}",
        f"**Intrinsics source:** {intr['source']}",
        f"| | fx | fy | cx | cy |\n|---|---|---|---|---|\n"
        f"| photo ({info['image']['width']}×{info['image']['height']}) | {i['fx']:.1f} | {i['fy']:.1f} | "
        f"{i['cx']:.1f} | {i['cy']:.1f} |\n"
        f"| network ({info['image']['network_size']}²) | {n['fx']:.1f} | {n['fy']:.1f} | {n['cx']:.1f} | "
        f"{n['cy']:.1f} |",
        f"**Depth (m):** min {_fmt(depth['min'])} · median {_fmt(depth['median'])} · max {_fmt(depth['max'])}"
        f" · 2–98 % {_fmt(depth['p2'])}–{_fmt(depth['p98'])} · {info['points']:,} points",
        timing_line(info["timings_split_ms"], on_device),
        f"*Stages:* {stages}",
    ])


def _problem_markdown(problem: str) -> list[str]:
    """The reason the phone is not used: first line bold, runner log (if any) as a code block."""
    first, _, rest = problem.partition("\n")
    lines = [f"⚠️ **{first}**"]
    if rest.strip():
        lines.append(f"```text\n{rest.strip()}\n```")
    if "build-android" in problem:
        lines.append(f"Build the Pixel runner once: `{BUILD_COMMAND}`")
    return lines


def status_markdown(status: dict, choice: str) -> str:
    """The status panel for a page whose backend choice is `choice` (auto, host, host-gpu or device)."""
    device, problem, host = status["device"], status["device_problem"], status["host"]
    lines: list[str] = []
    if device:
        lines.append(f"**Pixel:** {device['device']} · serial `{device['serial']}` · runner "
                     f"{device['runner_version']} · accelerator **{device['accelerator']}** · model "
                     f"compiled in {device['compile_ms']} ms when the runner started")
        if device.get("gpu_error"):
            lines.append(f"GPU not used: {device['gpu_error']}")
    elif problem:
        lines += _problem_markdown(problem)
    else:
        lines.append(f"**Pixel:** not looked for yet (choose Auto or Pixel, or click {LOOK_AGAIN}).")
    host_engine = f"{host['engine']}, {host['accelerator']}" if host else "Host LiteRT, loaded on first use"
    if status.get("host_gpu"):
        lines.append(f"**Host GPU:** {status['host_gpu']['accelerator']}")
    if status.get("host_gpu_problem") and choice in ("auto", "host-gpu"):
        lines.append(status["host_gpu_problem"])
    if choice == "host-gpu":
        lines.append("Requests run on the **host GPU** (LiteRT's GPU accelerator, loaded on first use).")
    elif choice == "host":
        lines.append(f"Requests run on the **host CPU** ({host_engine}).")
    elif device:
        fallback = " If the phone goes away, requests continue on the host CPU." if choice == "auto" else ""
        lines.append(f"Requests run on the **Pixel**.{fallback}")
    elif choice == "device":
        lines.append(f"Requests fail until the phone is found: connect it and click {LOOK_AGAIN}, "
                     "or choose Auto or Host.")
    elif problem:
        lines.append(f"Running on the **host CPU** ({host_engine}). Connect the phone and click {LOOK_AGAIN}.")
    return "\n\n".join(lines)
