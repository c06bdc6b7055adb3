"""Resident runner vs a one-shot process per image, on the host build of the same C runner.

resident: one runner stays up; a warm request costs its round trip over the local socket
minus what the runner itself spent (normalize + compute + readback, as it reports them).
one-shot: what a design that starts a process per image pays on top of that work: spawn,
model load, compile and the first run (which carries XNNPACK's weight packing), measured
from spawn to the first depth received, minus the runner's own time for that request and
minus one warm run. Use the full model here: the stand-in compiles in no time.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.host_post import network_image
from benchmarks.timing import medians, timed_ms
from benchmarks.wire import CountingSocket, measure_wire
from device.build import build_host
from device.host_runner import launch_host_runner
from device.protocol import RUNNER_VERSION, InferReply, RunnerClient

TIMEOUT_S = 300.0  # a full-model CPU run takes seconds on two shared cores
RUNNER_STEPS = ("normalize", "compute", "readback")


def _runner_ms(reply: InferReply) -> float:
    return sum(reply.timings_ms[k] for k in RUNNER_STEPS)


def _rgb(size: int) -> np.ndarray:
    return network_image(size)[0]


def measure_resident(model: Path, size: int, repeats: int, threads: int) -> dict[str, object]:
    """resident_overhead_ms (median), its breakdown, the warm runner time and the wire bytes."""
    rgb = _rgb(size)
    runner = launch_host_runner(model, accelerator="cpu", threads=threads, startup_timeout=TIMEOUT_S)
    try:
        counting = CountingSocket(runner.connect(TIMEOUT_S))
        client = RunnerClient(counting, TIMEOUT_S)  # type: ignore[arg-type]  # socket-like
        client.handshake(RUNNER_VERSION, None, runner.token)
        results: dict[str, object] = dict(measure_wire(counting, client, rgb))  # also the warm-up request
        samples = []
        for _ in range(repeats):
            wall, reply = timed_ms(lambda: client.infer(rgb, "f16", TIMEOUT_S))
            sample = {k: reply.timings_ms[k] for k in RUNNER_STEPS}
            sample.update(round_trip=wall, overhead=wall - _runner_ms(reply))
            samples.append(sample)
        client.quit()
    finally:
        runner.stop()
    typical = medians(samples)
    results.update(resident_overhead_ms=typical.pop("overhead"), resident_breakdown_ms=typical,
                   warm_runner_ms=statistics.median(sum(s[k] for k in RUNNER_STEPS) for s in samples))
    return results


def measure_oneshot(model: Path, size: int, repeats: int, threads: int, warm_runner_ms: float) -> dict[str, object]:
    """oneshot_overhead_ms (median over fresh processes) and where it goes; runner_start_ms too.

    runner_start_ms is spawn to a finished handshake: what every (re)start of the resident
    runner costs before its first request (exec, reading the model, compile, the warm-up run,
    HELLO). Its "other" part is what the runner does besides LiteRT's compile and first run.
    """
    rgb = _rgb(size)
    binary = build_host()  # built once, before the clock starts
    samples, starts = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        runner = launch_host_runner(model, accelerator="cpu", threads=threads, binary=binary,
                                    startup_timeout=TIMEOUT_S)
        try:
            ready_ms = (time.perf_counter() - start) * 1000.0
            client = runner.client(TIMEOUT_S)
            handshake_ms = (time.perf_counter() - start) * 1000.0
            reply = client.infer(rgb, "f16", TIMEOUT_S)
            total_ms = (time.perf_counter() - start) * 1000.0
            own_ms = _runner_ms(reply)
            client.quit()
        finally:
            runner.stop()
        compile_ms, first_run_ms = float(runner.ready["compile_ms"]), float(runner.ready["warmup_ms"])
        samples.append({"overhead": total_ms - own_ms - warm_runner_ms, "spawn_to_ready": ready_ms,
                        "start_load": ready_ms - compile_ms - first_run_ms,  # exec, model load (no hash)
                        "compile": compile_ms, "first_run": first_run_ms, "spawn_to_first_depth": total_ms})
        starts.append({"total": handshake_ms, "compile": compile_ms, "first_run": first_run_ms,
                       "other": handshake_ms - compile_ms - first_run_ms})
    typical, start_typical = medians(samples), medians(starts)
    return {"oneshot_overhead_ms": typical.pop("overhead"), "oneshot_breakdown_ms": typical,
            "runner_start_ms": start_typical.pop("total"), "runner_start_breakdown_ms": start_typical}
