"""python -m benchmarks.soak [--requests 500] [--model PATH] [--keep-results 30]: a long run of the API.

Sends sequential /predict requests, each with a different photo (so Gradio's content-hash
cache cannot fold them into one file), to one app.py subprocess, and samples the server's
resident memory (psutil) and the size and file count of its temp folders. Bounds (the
process exits 1 when one is broken):
- RSS growth after warm-up < 100 MB: no per-request leak.
- temp folders bounded: results expire (--keep-results, passed to the app, short enough to
  expire within the run), so the largest temp size, in bytes and in files, in the second half
  of the run may exceed the first half's largest by at most 25 % (a linear leak gives ~70 %).
The app runs with its own TMPDIR and GRADIO_TEMP_DIR (see testing/app.py,
shared with the reliability tests), so every file it leaves is counted.
Writes benchmarks/soak.json and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "soak.json"
RSS_GROWTH_LIMIT_MB = 100.0
TEMP_SECOND_HALF_LIMIT = 1.25  # largest temp size (bytes, files), second half / first half of the run
MB = 1024 * 1024


def _stand_in_model() -> Path:
    """The test suite's cached stand-in model, else build one (needs the conversion install)."""
    cached = sorted((REPO / ".cache" / "test-models").glob("stand_in-*.tflite"), key=lambda p: p.stat().st_mtime)
    if cached:
        return cached[-1]
    from benchmarks.conversion import measure_conversion, stand_in_command

    out = REPO / ".cache" / "benchmarks" / "soak-stand-in.tflite"
    if not out.exists():
        measure_conversion(stand_in_command(out), out)
    return out


def _sample(process: psutil.Process, app, served: int, started: float) -> dict:
    files, size = app.usage()
    empty = sum(1 for p in app.files() if p.exists() and p.stat().st_size == 0)
    return {"requests": served, "t_s": round(time.perf_counter() - started, 2),
            "rss_mb": round(process.memory_info().rss / MB, 1), "temp_files": files,
            "temp_mb": round(size / MB, 2), "empty_temp_files": empty}


def soak(model: Path, requests: int, warmup: int, keep_results: int, sample_every: int) -> dict:
    """Run the soak and return the report (samples, bounds, verdicts)."""
    from gradio_client import Client, handle_file

    from testing.app import running_app
    from testing.images import distinct_photo

    samples, latencies, errors = [], [], []
    with tempfile.TemporaryDirectory(prefix="metric3d-soak-") as tmp:
        work = Path(tmp)
        with running_app(model, work / "app", ["--backend", "host", "--keep-results", str(keep_results)]) as app:
            process = psutil.Process(app.proc.pid)
            client = Client(app.url, verbose=False, download_files=False)
            photo = work / "photo.png"
            started = time.perf_counter()
            samples.append(_sample(process, app, 0, started))
            for n in range(requests):
                image = distinct_photo(n)
                Image.fromarray(image).save(photo)
                focal = float(max(image.shape[:2]))
                t0 = time.perf_counter()
                try:
                    info = client.submit(handle_file(str(photo)), focal, focal, (image.shape[1] - 1) / 2,
                                         (image.shape[0] - 1) / 2, api_name="/predict").result(timeout=120)[3]
                    if info["points"] <= 0:
                        errors.append(f"request {n}: an empty point cloud")
                except Exception as exc:  # noqa: BLE001 - a soak counts failures, it does not stop at one
                    errors.append(f"request {n}: {type(exc).__name__}: {exc}")
                latencies.append((time.perf_counter() - t0) * 1000.0)
                served = n + 1
                if served == warmup or served % sample_every == 0 or served == requests:
                    samples.append(_sample(process, app, served, started))
                    last = samples[-1]
                    print(f"  {served:4d} requests  RSS {last['rss_mb']:7.1f} MB  temp {last['temp_files']:5d} files "
                          f"{last['temp_mb']:8.1f} MB", file=sys.stderr, flush=True)
            wall = time.perf_counter() - started
    return _report(model, requests, warmup, keep_results, samples, latencies, errors, wall)


def _at(samples: list[dict], served: int) -> dict:
    return min(samples, key=lambda s: abs(s["requests"] - served))


def _report(model: Path, requests: int, warmup: int, keep_results: int, samples: list[dict],
            latencies: list[float], errors: list[str], wall: float) -> dict:
    warm, half, end = _at(samples, warmup), _at(samples, (warmup + requests) // 2), samples[-1]
    after_warm = [s for s in samples if s["requests"] >= warm["requests"]]
    rss_growth = end["rss_mb"] - warm["rss_mb"]
    rss_max_growth = max(s["rss_mb"] for s in after_warm) - warm["rss_mb"]
    first = [s for s in after_warm if s["requests"] <= half["requests"]]
    second = [s for s in after_warm if s["requests"] >= half["requests"]]
    first_half, second_half = max(s["temp_mb"] for s in first), max(s["temp_mb"] for s in second)
    first_files, second_files = max(s["temp_files"] for s in first), max(s["temp_files"] for s in second)
    temp_bounded = (second_half <= TEMP_SECOND_HALF_LIMIT * first_half
                    and second_files <= TEMP_SECOND_HALF_LIMIT * first_files)
    ordered = sorted(latencies)
    return {
        "model": str(model), "requests": requests, "warmup_requests": warmup, "keep_results_s": keep_results,
        "errors": len(errors), "first_errors": errors[:5], "wall_s": round(wall, 1),
        "latency_ms": {"median": round(statistics.median(ordered), 1),
                       "p95": round(statistics.quantiles(ordered, n=20)[-1], 1), "max": round(ordered[-1], 1)},
        "rss_mb": {"start": samples[0]["rss_mb"], "after_warmup": warm["rss_mb"], "end": end["rss_mb"],
                   "max": max(s["rss_mb"] for s in samples), "growth_after_warmup": round(rss_growth, 1),
                   "max_growth_after_warmup": round(rss_max_growth, 1)},
        "temp": {"files_after_warmup": warm["temp_files"], "files_end": end["temp_files"],
                 "files_max": max(s["temp_files"] for s in samples),
                 "mb_after_warmup": warm["temp_mb"], "mb_end": end["temp_mb"],
                 "mb_max": max(s["temp_mb"] for s in samples),
                 "mb_max_first_half": round(first_half, 1), "mb_max_second_half": round(second_half, 1),
                 "files_max_first_half": first_files, "files_max_second_half": second_files,
                 "empty_files_end": end["empty_temp_files"]},
        "bounds": {"rss_growth_limit_mb": RSS_GROWTH_LIMIT_MB, "rss_ok": rss_max_growth < RSS_GROWTH_LIMIT_MB,
                   "temp_second_half_limit": TEMP_SECOND_HALF_LIMIT, "temp_ok": temp_bounded,
                   "errors_ok": not errors},
        "samples": samples,
    }


def _summary(report: dict) -> str:
    rss, temp, bounds = report["rss_mb"], report["temp"], report["bounds"]
    return "\n".join([
        f"soak: {report['requests']} requests in {report['wall_s']} s, {report['errors']} errors, "
        f"latency median {report['latency_ms']['median']} ms, p95 {report['latency_ms']['p95']} ms",
        f"RSS: {rss['after_warmup']} MB after {report['warmup_requests']} warm-up requests -> {rss['end']} MB "
        f"(growth {rss['growth_after_warmup']} MB, max growth {rss['max_growth_after_warmup']} MB; "
        f"limit {bounds['rss_growth_limit_mb']:g}) {'OK' if bounds['rss_ok'] else 'TOO MUCH'}",
        f"temp: {temp['files_after_warmup']} files / {temp['mb_after_warmup']} MB after warm-up -> "
        f"{temp['files_end']} files / {temp['mb_end']} MB; largest in the first half {temp['mb_max_first_half']} MB "
        f"/ {temp['files_max_first_half']} files, in the second half {temp['mb_max_second_half']} MB / "
        f"{temp['files_max_second_half']} files "
        f"{'bounded' if bounds['temp_ok'] else 'NOT BOUNDED'}; {temp['empty_files_end']} empty files left",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Soak the /predict API and watch memory and temp files.")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--model", type=Path, help="the .tflite to serve (default: the test stand-in model)")
    parser.add_argument("--warmup", type=int, default=50, help="requests before the RSS baseline is taken")
    parser.add_argument("--keep-results", type=int, default=30,
                        help="seconds the app keeps result files (short, so expiry happens within the soak)")
    parser.add_argument("--sample-every", type=int, default=25)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.requests < 2 * args.warmup:
        parser.error("--requests must be at least twice --warmup (the bounds compare two halves)")
    model = args.model or _stand_in_model()
    report = soak(model, args.requests, args.warmup, args.keep_results, args.sample_every)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(_summary(report))
    print(f"written: {args.output}")
    bounds = report["bounds"]
    return 0 if bounds["rss_ok"] and bounds["temp_ok"] and bounds["errors_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
