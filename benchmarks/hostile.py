"""python -m benchmarks.hostile [--repo PATH] [--half-open 20000] [--output FILE]: issue 13's attacks, measured.

Starts `app.py --backend host` from REPO (default: this checkout; point --repo at another
checkout to measure it the same way, e.g. before a change) on a loopback port and runs each
attack of a hostile local client against it, sampling the server's resident memory (psutil,
every 20 ms) and its private temp folder. After each attack a normal client's request must
still be answered; its latency is recorded. Loopback only. Writes JSON (default
benchmarks/hostile.json) and prints a summary. No timed asserts: the figures go to the README.
"""
from __future__ import annotations

import argparse
import errno
import io
import json
import os
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "hostile.json"
MiB = 2**20


class Sampler:
    """Peak RSS of a process while a block runs."""

    def __init__(self, pid: int):
        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()

    def __enter__(self):
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def figures(self, settle_s: float = 2.0) -> dict:
        time.sleep(settle_s)
        return {"rss_start_mb": round(self.start / MiB, 1), "rss_peak_mb": round(self.peak / MiB, 1),
                "rss_after_mb": round(self.proc.memory_info().rss / MiB, 1)}


def _wait_until_up(proc, url: str, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"app.py did not answer within {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")


@contextmanager
def app_server(repo: Path, model: Path, work: Path):
    """app.py of `repo` (its own checkout, so another tree can be measured the same way)."""
    from testing import free_port
    port = free_port()
    temp = work / "temp"
    temp.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METRIC3D_", "GRADIO_"))}
    env.update({"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1,localhost"})
    log_path = work / "app.log"
    import subprocess
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "app.py", "--model", str(model), "--backend", "host", "--port",
                                 str(port), "--temp-dir", str(temp)], cwd=repo, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_up(proc, url, 180, log_path)
            yield url, proc, next(temp.glob("metric3d-app-*")), log_path
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def normal_request_ms(url: str) -> float | None:
    started = time.perf_counter()
    try:
        ok = httpx.get(url + "/config", timeout=30).status_code == 200
    except httpx.HTTPError:
        return None
    return round((time.perf_counter() - started) * 1000, 1) if ok else None


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def attack_big_fields(url: str, pid: int, count: int = 10, size: int = 100 * MiB) -> dict:
    """`count` queue/join bodies, each one JSON string field of `size` bytes."""
    statuses = []
    payload = b'{"data": ["' + b"x" * size + b'"], "fn_index": 0, "session_hash": "big"}'
    with Sampler(pid) as sampler:
        for _ in range(count):
            try:
                statuses.append(httpx.post(url + "/gradio_api/queue/join", content=payload, timeout=120,
                                           headers={"Content-Type": "application/json"}).status_code)
            except httpx.HTTPError as exc:
                statuses.append(type(exc).__name__)
    return {**sampler.figures(), "statuses": sorted(set(map(str, statuses)))}


def _find_fn(config: dict, label: str, event: str) -> int | None:
    ids = {c["id"] for c in config["components"] if c.get("props", {}).get("label") == label}
    for index, dep in enumerate(config["dependencies"]):
        if any(t[0] in ids and t[1] == event for t in dep.get("targets", [])):
            return index
    return None


def attack_describe_wide_webp(url: str, pid: int, work: Path, parallel: int = 8) -> dict:
    """`parallel` at once of the photo-describe step on a 16383 x 2000 lossless WebP (~1 KB)."""
    path = work / "wide.webp"
    Image.new("RGB", (16383, 2000), (200, 10, 10)).save(path, lossless=True)
    config = httpx.get(url + "/config").json()
    fn = _find_fn(config, "Photo", "change")
    (remote,) = httpx.post(url + "/gradio_api/upload", files={"files": ("wide.webp", path.read_bytes())}).json()
    image = {"path": remote, "meta": {"_type": "gradio.FileData"}, "orig_name": "wide.webp"}

    def one(i: int) -> int:
        return httpx.post(url + "/gradio_api/queue/join", timeout=60,
                          json={"data": [image], "fn_index": fn, "session_hash": f"wide{i}",
                                "event_data": None, "trigger_id": None}).status_code
    with Sampler(pid) as sampler, ThreadPoolExecutor(parallel) as pool:
        statuses = list(pool.map(one, range(parallel)))
        time.sleep(8)  # the events run after their join returns
    return {**sampler.figures(), "file_bytes": path.stat().st_size, "statuses": sorted(set(statuses))}


def attack_parallel_uploads(url: str, private: Path, parallel: int = 20, size: int = 49 * MiB) -> dict:
    def one(i: int) -> str:
        data = os.urandom(size)
        try:
            return str(httpx.post(url + "/gradio_api/upload", files={"files": (f"u{i}.png", data, "image/png")},
                                  timeout=300).status_code)
        except httpx.HTTPError as exc:
            return type(exc).__name__
    with ThreadPoolExecutor(parallel) as pool:
        statuses = list(pool.map(one, range(parallel)))
    return {"statuses": {s: statuses.count(s) for s in set(statuses)}, "stored_mb": round(folder_bytes(private) / MiB, 1)}


def attack_aborted_upload(url: str, private: Path) -> dict:
    port = int(url.rsplit(":", 1)[1])
    boundary = "b0undary"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall((f"POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
                      f"boundary={boundary}\r\nContent-Length: {30 * MiB}\r\n\r\n--{boundary}\r\nContent-Disposition: "
                      "form-data; name=\"files\"; filename=\"cut.png\"\r\n\r\n").encode() + os.urandom(8 * MiB))
        time.sleep(1)
    time.sleep(3)
    left = [p for p in private.rglob("tmp*") if p.is_file()]
    return {"partial_files_left": len(left), "partial_bytes_left": sum(p.stat().st_size for p in left)}


def attack_host_and_origin(url: str, private: Path) -> dict:
    port = url.rsplit(":", 1)[1]
    evil = f"evil.example:{port}"
    reply = httpx.get(url + "/config", headers={"Host": evil, "Origin": f"http://{evil}"})
    before = folder_bytes(private)
    upload = httpx.post(url + "/gradio_api/upload", headers={"Origin": "http://evil.example"},
                        files={"files": ("x.png", os.urandom(1000), "image/png")})
    return {"rebinding_status": reply.status_code, "rebinding_acao": reply.headers.get("access-control-allow-origin"),
            "cross_site_upload_status": upload.status_code,
            "cross_site_upload_stored": folder_bytes(private) > before,
            "monitoring_summary_status": httpx.get(url + "/monitoring/summary").status_code}


def attack_queue(url: str, joins: int = 40) -> dict:
    config = httpx.get(url + "/config").json()
    predict = next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == "predict")
    status = next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == "status")
    photo = Image.new("RGB", (4000, 3000), (90, 120, 150))
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    (remote,) = httpx.post(url + "/gradio_api/upload", files={"files": ("q.png", buffer.getvalue())}).json()
    image = {"path": remote, "meta": {"_type": "gradio.FileData"}}
    codes = [httpx.post(url + "/gradio_api/queue/join", timeout=30,
                        json={"data": [image, 3000, 3000, 2000, 1500, "host"], "fn_index": predict,
                              "session_hash": "one-client", "event_data": None}).status_code for _ in range(joins)]
    started = time.perf_counter()
    cheap = httpx.post(url + "/gradio_api/queue/join", timeout=30,
                       json={"data": [], "fn_index": status, "session_hash": "someone-else", "event_data": None})
    return {"one_session_joins_accepted": codes.count(200), "one_session_joins_refused": joins - codes.count(200),
            "cheap_call_status": cheap.status_code, "cheap_call_ms": round((time.perf_counter() - started) * 1000, 1)}


def attack_half_open(url: str, pid: int, log_path: Path, count: int) -> dict:
    port = int(url.rsplit(":", 1)[1])
    log_before = log_path.stat().st_size
    sockets, failed = [], 0
    started = time.monotonic()
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError as exc:
            if exc.errno == errno.EMFILE:
                break  # this client's own descriptor limit
            failed += 1
            continue
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        except OSError:
            failed += 1
        sockets.append(sock)
    opened_s = time.monotonic() - started
    time.sleep(2)
    during = normal_request_ms(url)
    try:
        fds = psutil.Process(pid).num_fds()
    except psutil.Error:
        fds = None
    time.sleep(16)
    after = normal_request_ms(url)
    held = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            held += sock.recv(1) != b""
        except BlockingIOError:
            held += 1
        except OSError:
            pass
        sock.close()
    return {"opened": len(sockets), "connect_failures": failed, "open_seconds": round(opened_s, 1),
            "normal_request_ms_during": during, "server_fds_during": fds, "normal_request_ms_after_18s": after,
            "still_held_after_18s": held, "log_bytes_written": log_path.stat().st_size - log_before}


def _raise_own_file_limit() -> None:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose app.py is attacked")
    parser.add_argument("--model", type=Path, help="model (default: the test suite's stand-in)")
    parser.add_argument("--half-open", type=int, default=20000, help="half-sent requests to open")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--only", nargs="*", help="run only the attacks whose names start with these")
    args = parser.parse_args(argv)
    _raise_own_file_limit()
    from benchmarks.soak import _stand_in_model
    model = args.model or _stand_in_model()
    results: dict = {"repo": args.repo.name}
    with tempfile.TemporaryDirectory(prefix="hostile-bench-") as tmp:
        work = Path(tmp)
        with app_server(args.repo.resolve(), model, work) as (url, proc, private, log_path):
            steps = [
                ("host_and_origin", lambda: attack_host_and_origin(url, private)),
                ("big_fields_10x100MiB", lambda: attack_big_fields(url, proc.pid)),
                ("describe_8x_wide_webp", lambda: attack_describe_wide_webp(url, proc.pid, work)),
                ("aborted_upload", lambda: attack_aborted_upload(url, private)),
                ("parallel_uploads_20x49MiB", lambda: attack_parallel_uploads(url, private)),
                ("queue_one_session", lambda: attack_queue(url)),
                (f"half_open_{args.half_open}", lambda: attack_half_open(url, proc.pid, log_path, args.half_open)),
            ]
            for name, step in steps:
                if args.only and not any(name.startswith(o) for o in args.only):
                    continue
                print(f"[hostile] {name} ...", flush=True)
                try:
                    results[name] = step()
                except Exception as exc:  # noqa: BLE001 - one attack failing must not hide the others
                    results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                results[name]["normal_request_ms_after"] = normal_request_ms(url)
                print(f"  {json.dumps(results[name])}", flush=True)
            results["server_alive"] = proc.poll() is None
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
