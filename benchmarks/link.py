"""The phone link's cost per request, through the real adb server and an emulated Pixel.

No phone is attached here, so the test suite's emulated device (testing/adb_emulator.py:
the device side of the adb transport, accepted by the real adb server) runs the host build
of the runner behind `localabstract:` exactly as a Pixel would run the Android build. The
request goes through DeviceEngine, the app's own path: a health PING, then INFER with
float16 depth back. link_overhead_ms = that round trip minus the runner's own time.
The emulator relays in Python on the same two cores, so this is an upper bound for the
transport software; a real USB link adds its bandwidth (see README's Pixel estimate).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.host_post import network_image
from benchmarks.timing import medians, timed_ms
from device.engine import DeviceEngine
from device.session import LinkSettings
from testing.adb_emulator import emulated_phone
from testing.device import host_runner_files


def measure_link(model: Path, repeats: int, threads: int) -> dict[str, object]:
    """link_overhead_ms (median) and its breakdown for one model through the emulated Pixel."""
    files = host_runner_files()
    samples = []
    with tempfile.TemporaryDirectory(prefix="metric3d-bench-phone-") as tmp, emulated_phone(Path(tmp)) as phone:
        link = LinkSettings(adb_port=phone.adb_port, start_server=False, accelerator="cpu", threads=threads,
                            request_timeout=120.0, startup_timeout=120.0, adb_timeout=20.0)
        engine = DeviceEngine(model, phone.serial, link, files).start()
        try:
            rgb = network_image(engine.input_size)[0]
            engine.infer(rgb)  # warm-up
            for _ in range(repeats):
                wall, inference = timed_ms(lambda: engine.infer(rgb))
                runner = inference.timings_ms["compute"] + inference.timings_ms["normalize"]
                transfer = inference.timings_ms["transfer"]
                samples.append({"overhead": wall - runner, "round_trip": wall, "runner": runner,
                                "infer_transfer": transfer, "health_ping_and_python": wall - runner - transfer})
        finally:
            engine.close()
    typical = medians(samples)
    return {"link_overhead_ms": typical.pop("overhead"), "link_breakdown_ms": typical}
