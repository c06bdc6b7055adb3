"""python -m benchmarks [--quick] [--model PATH] [--output PATH]: measure every stage, write JSON, print a table.

Full run: one conversion of the full model (seeded random weights, fp32; its time and peak
memory are reported), then that model for LiteRT vs PyTorch and resident vs one-shot; the
stand-in model for the host-side stages and the phone link, whose cost does not depend on
the network, and that model on LiteRT's GPU accelerator (fidelity per arithmetic precision). --quick converts only the stand-in and uses it everywhere with tiny repeat
counts: it checks that every code path runs, its numbers are not budgets.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from backend.host_engine import HostEngine
from backend.model_info import read_model_info
from benchmarks.conversion import full_model_command, measure_conversion, stand_in_command
from benchmarks.gpu import measure_gpu
from benchmarks.host_post import measure_host_post, measure_host_pre, measure_rerender
from benchmarks.link import measure_link
from benchmarks.machine import machine_info
from benchmarks.model_speed import measure_model_speed
from benchmarks.report import evaluate_targets, pixel_estimate, table, write_json
from benchmarks.runner import measure_oneshot, measure_resident

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "benchmarks"
DEFAULT_OUTPUT = REPO / "benchmarks" / "results.json"
QUICK_OUTPUT = REPO / "benchmarks" / "results-quick.json"


@dataclass(frozen=True)
class Repeats:
    host: int
    model: int
    model_1thread: int
    resident: int
    oneshot: int
    link: int


FULL = Repeats(host=15, model=5, model_1thread=3, resident=7, oneshot=3, link=15)
QUICK = Repeats(host=2, model=1, model_1thread=1, resident=2, oneshot=1, link=2)


def _say(text: str) -> None:
    print(f"[benchmarks] {text}", file=sys.stderr, flush=True)


def _describe(path: Path) -> dict[str, object]:
    info = read_model_info(path)
    try:
        shown = str(path.resolve().relative_to(REPO))
    except ValueError:
        shown = str(path)
    return {"path": shown, "sha256": info.sha256, "source": info.source, "precision": info.precision,
            "bytes": path.stat().st_size}


def _model_speed(model: Path, repeats: int, threads: int) -> dict[str, float]:
    engine = HostEngine(model, threads)
    try:
        return measure_model_speed(engine, repeats, threads)
    finally:
        engine.close()


def run_all(quick: bool, model: Path | None, threads: int, cache: Path = CACHE) -> dict[str, object]:
    repeats = QUICK if quick else FULL
    results: dict[str, object] = {
        "mode": "quick" if quick else "full",
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "repeats": repeats.__dict__, "threads": threads,
        "load_average_start": os.getloadavg(),  # 1/5/15-min run queue: other jobs on the cores skew timings
    }
    stand_in = cache / "stand_in.tflite"
    if quick:
        _say("converting the stand-in model (the --quick conversion)")
        results.update(measure_conversion(stand_in_command(stand_in), stand_in))
        converted = stand_in
    else:
        converted = cache / "metric3d_random0_fp32.tflite"
        _say("converting the full model (about a minute or two)")
        results.update(measure_conversion(full_model_command(converted), converted))
        _say("building the stand-in model")
        measure_conversion(stand_in_command(stand_in), stand_in)
    model = model or converted
    results["models"] = {"network": _describe(model), "stand_in": _describe(stand_in)}

    _say("host pre/post-processing")
    host = HostEngine(stand_in, threads)
    try:
        results.update(measure_host_pre(host.input_size, repeats.host))
        results.update(measure_host_post(host, repeats.host))
        _say("live re-render from kept canonical depth (448² and 12 MP photos)")
        results.update(measure_rerender(host, repeats.host))
    finally:
        host.close()

    _say(f"LiteRT vs PyTorch eager on {model.name}, {threads} threads")
    results.update(_model_speed(model, repeats.model, threads))
    size = read_model_info(model).input_size
    if threads > 1:
        _say("LiteRT vs PyTorch eager, 1 thread (less sensitive to other jobs on the cores)")
        single = _model_speed(model, repeats.model_1thread, 1)
        results.update({f"{k}_1thread": v for k, v in single.items() if k != "litert_torch_max_abs_diff_m"})

    _say("resident runner and wire bytes")
    resident = measure_resident(model, size, repeats.resident, threads)
    results.update(resident)
    _say("one-shot runner processes")
    results.update(measure_oneshot(model, size, repeats.oneshot, threads, float(resident["warm_runner_ms"])))
    results["resident_gain"] = results["oneshot_overhead_ms"] / results["resident_overhead_ms"]

    _say("phone link through the emulated Pixel and the real adb server")
    results.update(measure_link(stand_in, repeats.link, threads))

    _say(f"LiteRT's GPU accelerator, fp32 and fp16 arithmetic, on {model.name} (minutes on a software GPU)")
    results.update(measure_gpu(model, cache))

    results["load_average_end"] = os.getloadavg()
    results["targets"] = evaluate_targets(results)
    results["pixel_estimate_ms"] = pixel_estimate(results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="stand-in model, tiny repeat counts (a smoke run)")
    parser.add_argument("--model", type=Path, help="the .tflite to time instead of the one this run converts")
    parser.add_argument("--output", type=Path, help=f"JSON file (default {DEFAULT_OUTPUT.relative_to(REPO)}, "
                                                    f"--quick: {QUICK_OUTPUT.relative_to(REPO)})")
    parser.add_argument("--cache-dir", type=Path, default=CACHE,
                        help=f"where this run's conversions go (default {CACHE.relative_to(REPO)})")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.model is not None and not args.model.is_file():
        parser.error(f"model not found: {args.model}")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    results = run_all(args.quick, args.model, args.threads, args.cache_dir)
    output = args.output or (QUICK_OUTPUT if args.quick else DEFAULT_OUTPUT)
    write_json(results, output)
    print(table(results))
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
