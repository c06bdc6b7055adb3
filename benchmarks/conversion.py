"""Conversion cost: wall time and peak memory of a real conversion run in a child process.

The child is reaped with os.wait4, so its peak RSS is its own (not that of this process or
of other children). When the converter writes its OUT.json sidecar, its own figures (time
from model build to file, peak RSS incl. its children) are preferred and the wall time
(with Python and torch start-up) is kept beside them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class ConversionFailed(RuntimeError):
    """The conversion command exited with an error; the message carries its output tail."""


def full_model_command(output: Path, seed: int = 0) -> list[str]:
    """The documented conversion: full Metric3D architecture, seeded random weights, fp32."""
    return [sys.executable, "-m", "conversion", "convert", "--random-weights", str(seed),
            "--precision", "fp32", "--output", str(output)]


def stand_in_command(output: Path) -> list[str]:
    """The small stand-in model (same I/O contract): a conversion that takes seconds (--quick)."""
    return [sys.executable, "-m", "conversion.stand_in", "--output", str(output)]


def measure_conversion(command: list[str], output: Path) -> dict[str, object]:
    """Run `command` (which writes `output`) and return convert_s, convert_peak_rss_mb and details."""
    output.parent.mkdir(parents=True, exist_ok=True)
    sidecar = output.with_name(output.name + ".json")
    sidecar.unlink(missing_ok=True)
    start = time.perf_counter()
    with open(output.with_name(output.name + ".log"), "w+b") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall_s = time.perf_counter() - start
        if proc.returncode != 0 or not output.is_file():
            log.seek(0)
            tail = log.read().decode("utf-8", "replace")[-3000:]
            raise ConversionFailed(f"conversion failed (exit {proc.returncode}): {' '.join(command)}\n{tail}")
    child_peak_mb = usage.ru_maxrss / 1024.0  # Linux reports KiB
    result: dict[str, object] = {
        "convert_s": wall_s, "convert_peak_rss_mb": child_peak_mb, "convert_wall_s": wall_s,
        "convert_source": "this run (wall time and peak RSS of the converter process)",
        "convert_output_bytes": output.stat().st_size,
    }
    if sidecar.is_file():
        stats = json.loads(sidecar.read_text())
        result.update(convert_s=float(stats["seconds"]), convert_peak_rss_mb=max(float(stats["peak_rss_mb"]),
                                                                                 child_peak_mb),
                      convert_source="this run (converter's own timing; peak RSS of the converter process)")
    return result

