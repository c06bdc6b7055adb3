"""Markdown for the app's info panel (one result) and status panel (where requests run).

Pure functions of JSON-ready dicts, so the wording can be tested without a server and
the API returns the same facts the page shows.
"""
from __future__ import annotations

import re

BUILD_COMMAND = "export ANDROID_NDK_HOME=$HOME/android-ndk-r27; .venv/bin/python -m device build-android"
LOOK_AGAIN = "“Look for the phone again”"
_LONG_PATH = re.compile(r"(?<![\w.:/])/(?:[^/\s,;:()'\"`]+/)+([^/\s,;:()'\"`]+/[^/\s,;:()'\"`]+)")


def shorten_paths(text: str) -> str:
    """Absolute paths cut to their last two parts ("…/lib/libLiteRt.so"): the page stays
    readable and does not show the server's folder layout; the server log has them whole."""
    return _LONG_PATH.sub(lambda m: "…/" + m.group(1) if m.group(0).count("/") > 3 else m.group(0), text)


def _fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}{unit}"


def intrinsics_line(provenance: dict) -> str:
    """Where the intrinsics come from, how sure that is and why (IntrinsicsChoice.provenance())."""
    return (f"*Intrinsics from:* {provenance['source']} · **confidence: {provenance['confidence']}** — "
            f"{provenance['reason']}")


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
    session = info.get("session")
    downloads = info.get("downloads")
    rows = [f"| photo ({info['image']['width']}×{info['image']['height']}) | {i['fx']:.1f} | {i['fy']:.1f} | "
            f"{i['cx']:.1f} | {i['cy']:.1f} |",
            f"| network ({info['image']['network_size']}²) | {n['fx']:.1f} | {n['fy']:.1f} | {n['cx']:.1f} | "
            f"{n['cy']:.1f} |"]
    if downloads and "downloads" in intr:
        d = intr["downloads"]
        rows.append(f"| downloads ({downloads['width']}×{downloads['height']}) | {d['fx']:.1f} | {d['fy']:.1f} | "
                    f"{d['cx']:.1f} | {d['cy']:.1f} |")
    lines = ([session_line(session)] if session else []) + [
        f"**Engine:** {info['engine']} — {info['accelerator']}",
        f"**Model:** {model['name']} · `{model['file']}` · {model['precision']} · "
        f"sha256 `{model['sha256'][:12]}…`",
        f"**Model origin:** {kind}",
        f"**Intrinsics source:** {intr['source']} · **confidence: {intr['confidence']}** — {intr['reason']}"
        + (f" · **Field of view:** {info['image']['field_of_view']}" if "field_of_view" in info["image"] else ""),
        "| | fx | fy | cx | cy |\n|---|---|---|---|---|\n" + "\n".join(rows),
        f"**Depth (m):** min {_fmt(depth['min'])} · median {_fmt(depth['median'])} · max {_fmt(depth['max'])}"
        f" · 2–98 % {_fmt(depth['p2'])}–{_fmt(depth['p98'])} · {info['points']:,} points",
    ]
    if downloads:
        lines.append(png_line(downloads))
    return "\n\n".join(lines + [timing_line(info["timings_split_ms"], on_device), f"*Stages:* {stages}"])


def png_line(downloads: dict) -> str:
    """What the 16-bit PNG cannot hold: depths beyond its far limit are written as 0 ("no depth")."""
    limit, beyond = downloads["png_far_limit_m"], downloads["beyond_png_range_pixels"]
    if not beyond:
        return f"**Depth PNG:** every depth fits its {limit:g} m range (mm in 16 bits)."
    return (f"**Depth PNG:** {beyond:,} pixels lie beyond its {limit:g} m limit and are written as 0 "
            "(“no depth”); the .npy keeps their depth.")


def session_line(session: dict) -> str:
    """Which photo these results belong to, how often the network ran for it, the last re-render."""
    parts = [f"**Photo:** {session['photo']}", f"network runs for this photo: {session['network_runs']}",
             f"re-renders: {session['rerenders']}"]
    if session.get("rerender_ms") is not None:
        parts.append(f"last re-render {session['rerender_ms']:.0f} ms (no network run)")
    return " · ".join(parts)


def status_line(status: dict, choice: str) -> str:
    """One calm line for the top of the page: where requests run now, and the way to the details."""
    device, problem = status["device"], status["device_problem"]
    if device and choice != "host":
        return f"Pixel · {device['device']} · {device['accelerator']} · requests run on the phone ▸"
    if choice == "host":
        return "Host CPU · the Pixel is not used (Backend: Host) · where the network runs ▸"
    if choice == "device":
        return "Pixel chosen but not ready · requests fail until it is · details ▸"
    if problem:
        return "Host CPU · no phone connected · how to use a Pixel ▸"
    return "Host CPU · looking for a phone · how to use a Pixel ▸"


def _problem_markdown(problem: str) -> list[str]:
    """The reason the phone is not used: first line bold, runner log (if any) as a code block."""
    problem = shorten_paths(problem)
    first, _, rest = problem.partition("\n")
    lines = [first]
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
