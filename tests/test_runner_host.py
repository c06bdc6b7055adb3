"""The real runner (host build, real LiteRT) against the Python engine and against bad clients.

The runner is the same C program that runs on the phone. Most tests point its GPU library
folder at an empty one, so its GPU attempt fails and it serves on the CPU (the fallback path);
tests/test_gpu.py runs it on LiteRT's GPU. Every socket call has a timeout, so a hang fails
the test instead of stalling the suite.
"""
from __future__ import annotations

import hashlib
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from backend.host_engine import HostEngine
from device.build import build_host
from device.host_runner import launch_host_runner, start_host_runner
from device.protocol import (
    HEADER_SIZE, HELLO_REQUEST, RUNNER_VERSION, ErrorCode, MsgType, RunnerClient, RunnerError, decode_error,
    decode_header, encode_frame, encode_hello, write_token_file,
)

IO_TIMEOUT_MS = 400


def _image(seed: int, size: int = 448) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def no_gpu_library(tmp_path_factory) -> Path:
    """A LiteRT runtime-library folder without any GPU accelerator library."""
    return tmp_path_factory.mktemp("no-gpu-library")


@pytest.fixture(scope="module")
def runner(stand_in_model, no_gpu_library):
    launched = launch_host_runner(stand_in_model, threads=2, io_timeout_ms=IO_TIMEOUT_MS, libdir=no_gpu_library)
    yield launched
    launched.stop()


@pytest.fixture(scope="module")
def host_engine(stand_in_model):
    engine = HostEngine(stand_in_model, threads=2)
    yield engine
    engine.close()


def _read_reply(sock: socket.socket) -> tuple[int, bytes]:
    """One frame from the runner, or (-1, b"") when it closed the connection."""
    data = b""
    while len(data) < HEADER_SIZE:
        chunk = sock.recv(HEADER_SIZE - len(data))
        if not chunk:
            return -1, b""
        data += chunk
    header = decode_header(data)
    payload = b""
    while len(payload) < header.length:
        chunk = sock.recv(header.length - len(payload))
        if not chunk:
            return -1, b""
        payload += chunk
    return header.type, payload


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _assert_error_then_close(sock: socket.socket, code: ErrorCode) -> str:
    msg_type, payload = _read_reply(sock)
    assert msg_type == MsgType.ERROR
    got, message = decode_error(payload)
    assert got == code, f"expected {code.name}, got {got}: {message}"
    assert _closed_by_peer(sock)
    return message


def _assert_serves_a_good_client(runner) -> None:
    client = runner.client(timeout=10)
    try:
        assert client.ping(b"still alive") >= 0
        reply = client.infer(_image(1), want="f32")
        assert reply.depth.shape == (448, 448) and reply.nonfinite == 0
    finally:
        client.close()
    assert runner.proc.poll() is None


def test_ready_line_and_info_report_the_cpu_fallback(runner, stand_in_model):
    assert runner.ready["accelerator"] == "cpu" and runner.ready["version"] == RUNNER_VERSION
    client = RunnerClient(runner.connect(), timeout=10)
    client.handshake(RUNNER_VERSION, _sha256(stand_in_model), runner.token)  # asks the runner to hash
    info = client.info()
    client.close()
    assert info["runner_version"] == RUNNER_VERSION and info["platform"] == "linux-x86_64"
    assert info["model_sha256"] == _sha256(stand_in_model)
    assert info["model_bytes"] == stand_in_model.stat().st_size
    assert info["input_shape"] == [1, 3, 448, 448] and info["output_shape"] == [1, 1, 448, 448]
    assert info["input_name"] == "image" and info["output_name"] == "depth"
    assert info["accelerator"] == "cpu" and info["requested_accelerator"] == "gpu"
    assert "gpu-webgpu: compile status" in info["gpu_error"] and "CPU fallback" in info["accelerator_basis"]
    assert info["fully_accelerated"] is None and info["gpu_rebuilds"] == 0
    assert info["threads"] == 2 and info["compile_ms"] > 0 and info["warmup_ms"] > 0
    assert info["mean"] == pytest.approx([123.675, 116.28, 103.53])
    assert info["pid"] == runner.proc.pid


def test_handshake_reports_the_model_hash_computed_by_the_runner(runner, stand_in_model):
    client = RunnerClient(runner.connect(), timeout=10)
    hello = client.handshake(RUNNER_VERSION, _sha256(stand_in_model), runner.token)
    client.close()
    assert hello.model_sha256 == _sha256(stand_in_model)
    assert hello.input_size == 448 and hello.accelerator.label == "cpu"


def test_the_runner_hashes_its_model_only_when_a_client_asks(stand_in_model):
    fresh = launch_host_runner(stand_in_model, accelerator="cpu", threads=1)
    try:
        unasked = fresh.client(timeout=10)  # HELLO with an all-zero digest: no check wanted
        info_before = unasked.info()
        unasked.close()
        asking = RunnerClient(fresh.connect(), timeout=10)
        hello = asking.handshake(RUNNER_VERSION, _sha256(stand_in_model), fresh.token)
        info_after = asking.info()
        asking.quit()
    finally:
        fresh.stop()
    assert unasked.hello.model_sha256 == "" and info_before["model_sha256"] == ""
    assert hello.model_sha256 == info_after["model_sha256"] == _sha256(stand_in_model)


def test_float32_depth_matches_the_host_engine(runner, host_engine):
    client = runner.client()
    try:
        for seed in (2, 3):
            rgb = _image(seed)
            reply = client.infer(rgb, want="f32")
            expected = host_engine.infer(rgb).depth
            assert reply.depth.dtype == np.float32 and reply.depth.shape == expected.shape
            assert reply.nonfinite == 0 and reply.timings_ms["compute"] > 0
            np.testing.assert_allclose(reply.depth, expected, rtol=0, atol=1e-5)
        assert set(reply.timings_ms) == {"normalize", "compute", "readback"}
    finally:
        client.close()


def test_float16_reply_is_the_float32_depth_rounded_to_half(runner, host_engine):
    rgb = _image(4)
    client = runner.client()
    try:
        depth32 = client.infer(rgb, want="f32").depth
        reply16 = client.infer(rgb, want="f16")
        depth16, nonfinite = reply16.depth, reply16.nonfinite
    finally:
        client.close()
    assert nonfinite == 0
    np.testing.assert_array_equal(depth16, depth32.astype(np.float16).astype(np.float32))
    expected = host_engine.infer(rgb).depth
    np.testing.assert_allclose(depth16, expected, rtol=2.0 ** -11, atol=1e-5)


def test_distinct_images_give_distinct_depth(runner):
    client = runner.client()
    try:
        a = client.infer(_image(5), want="f16").depth
        b = client.infer(_image(6), want="f16").depth
    finally:
        client.close()
    assert np.abs(a - b).max() > 1e-3


@pytest.mark.parametrize("socket_kind", ["unix", "tcp"])
def test_unix_and_tcp_sockets_serve_the_same_depth(stand_in_model, runner, socket_kind):
    rgb = _image(7)
    reference = runner.client()
    try:
        expected = reference.infer(rgb, want="f32").depth
    finally:
        reference.close()
    proc, client = start_host_runner(stand_in_model, socket_kind=socket_kind, threads=1, accelerator="cpu")
    try:
        depth = client.infer(rgb, want="f32").depth
        np.testing.assert_array_equal(depth, expected)
        client.quit()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_resident_across_connections(runner):
    before = runner.client().info()["connections_served"]
    for _ in range(3):
        client = runner.client()
        client.ping()
        client.close()
    after_client = runner.client()
    assert after_client.info()["connections_served"] == before + 4
    after_client.close()


def test_garbage_bytes_get_an_error_then_close(runner):
    with runner.connect(timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        _assert_error_then_close(sock, ErrorCode.BAD_MAGIC)
    _assert_serves_a_good_client(runner)


def test_oversize_length_is_refused_without_reading_it(runner):
    with runner.connect(timeout=5) as sock:
        sock.sendall(encode_frame(MsgType.HELLO, 1, encode_hello(RUNNER_VERSION, runner.token, None)))
        assert _read_reply(sock)[0] == MsgType.HELLO | 0x80
        header = bytearray(encode_frame(MsgType.INFER, 2, b""))
        header[12:16] = struct.pack("<I", 0xFFFFFFF0)
        sock.sendall(bytes(header))
        message = _assert_error_then_close(sock, ErrorCode.TOO_LARGE)
        assert "limit" in message
    _assert_serves_a_good_client(runner)


def test_truncated_frame_then_stall_is_dropped_after_the_io_timeout(runner):
    with runner.connect(timeout=5) as stalled:
        stalled.sendall(encode_frame(MsgType.HELLO, 1, encode_hello(RUNNER_VERSION, runner.token, None)))
        assert _read_reply(stalled)[0] == MsgType.HELLO | 0x80
        frame = encode_frame(MsgType.INFER, 2, _image(8).tobytes(), flags=0)
        stalled.sendall(frame[: HEADER_SIZE + 1000])
        start = time.monotonic()
        _assert_error_then_close(stalled, ErrorCode.TIMEOUT)
        assert time.monotonic() - start < 5 * IO_TIMEOUT_MS / 1000
    _assert_serves_a_good_client(runner)


def test_a_waiting_client_is_served_once_a_stalled_one_is_dropped(runner):
    with runner.connect(timeout=5) as stalled:
        stalled.sendall(b"M3D")  # a partial header, then silence
        client = runner.client(timeout=10)  # queued behind the stalled client
        try:
            assert client.ping() >= 0
        finally:
            client.close()
        _assert_error_then_close(stalled, ErrorCode.TIMEOUT)


def test_silent_client_without_hello_is_dropped(runner):
    with runner.connect(timeout=5) as sock:
        start = time.monotonic()
        _assert_error_then_close(sock, ErrorCode.TIMEOUT)
        assert time.monotonic() - start >= IO_TIMEOUT_MS / 1000 * 0.9
    _assert_serves_a_good_client(runner)


def test_wrong_version_in_hello_is_refused(runner):
    client = RunnerClient(runner.connect(), timeout=5)
    with pytest.raises(RunnerError, match="VERSION_MISMATCH") as err:
        client.handshake("0.0.0-old", None, runner.token)
    assert err.value.code == ErrorCode.VERSION_MISMATCH and RUNNER_VERSION in str(err.value)
    with pytest.raises(RunnerError, match="closed the connection"):
        client.ping()
    client.close()
    _assert_serves_a_good_client(runner)


def test_wrong_token_is_refused(runner):
    client = RunnerClient(runner.connect(), timeout=5)
    wrong = "f" * len(runner.token)
    assert wrong != runner.token
    with pytest.raises(RunnerError, match="wrong session token") as err:
        client.handshake(RUNNER_VERSION, None, wrong)
    assert err.value.code == ErrorCode.BAD_TOKEN
    client.close()
    _assert_serves_a_good_client(runner)


def test_wrong_model_hash_is_refused_with_both_hashes(runner, stand_in_model):
    client = RunnerClient(runner.connect(), timeout=5)
    with pytest.raises(RunnerError, match="MODEL_MISMATCH") as err:
        client.handshake(RUNNER_VERSION, "12" * 32, runner.token)
    assert _sha256(stand_in_model) in str(err.value)
    client.close()
    _assert_serves_a_good_client(runner)


def test_requests_before_hello_are_refused(runner):
    with runner.connect(timeout=5) as sock:
        sock.sendall(encode_frame(MsgType.INFO, 1))
        _assert_error_then_close(sock, ErrorCode.NOT_AUTHENTICATED)
    with runner.connect(timeout=5) as sock:
        sock.sendall(encode_frame(MsgType.HELLO, 1, bytes(HELLO_REQUEST.size - 1)))
        _assert_error_then_close(sock, ErrorCode.BAD_LENGTH)
    _assert_serves_a_good_client(runner)


def test_recoverable_errors_keep_the_connection(runner):
    client = runner.client(timeout=5)
    sock = client._sock
    try:
        sock.sendall(encode_frame(0x42, 10, b"xyz"))
        msg_type, payload = _read_reply(sock)
        assert msg_type == MsgType.ERROR and decode_error(payload)[0] == ErrorCode.UNKNOWN_TYPE
        sock.sendall(encode_frame(MsgType.INFER, 11, bytes(100)))
        msg_type, payload = _read_reply(sock)
        assert msg_type == MsgType.ERROR and decode_error(payload)[0] == ErrorCode.BAD_LENGTH
        assert "602112" in decode_error(payload)[1]
        sock.sendall(encode_frame(MsgType.INFER, 12, _image(9).tobytes(), flags=0x80))
        msg_type, payload = _read_reply(sock)
        assert msg_type == MsgType.ERROR and decode_error(payload)[0] == ErrorCode.BAD_REQUEST
        depth = client.infer(_image(9), want="f16").depth
        assert depth.shape == (448, 448)
    finally:
        client.close()


def test_killed_runner_mid_request_raises_quickly(stand_in_model):
    launched = launch_host_runner(stand_in_model, threads=1)
    try:
        client = launched.client(timeout=30)
        os.kill(launched.proc.pid, signal.SIGSTOP)  # the request arrives but is never answered
        outcome: dict = {}

        def call():
            try:
                client.infer(_image(10), want="f16")
            except RunnerError as exc:
                outcome["error"] = exc
                outcome["at"] = time.monotonic()
        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive(), "the frozen runner must not have answered"
        killed_at = time.monotonic()
        os.kill(launched.proc.pid, signal.SIGKILL)
        thread.join(5)
        assert "error" in outcome, "the client did not notice the dead runner"
        assert "closed the connection" in str(outcome["error"])
        assert outcome["at"] - killed_at < 2.0
    finally:
        launched.stop()


def test_quit_stops_the_runner_and_removes_its_unix_socket(stand_in_model):
    launched = launch_host_runner(stand_in_model, socket_kind="unix", threads=1)
    path = Path(launched.socket_spec.split(":", 1)[1])
    try:
        assert path.exists()
        launched.client().quit()
        assert launched.proc.wait(10) == 0
        assert not path.exists()
        assert "QUIT received" in launched.log()
    finally:
        launched.stop()


def test_runner_refuses_another_client_version_at_startup(stand_in_model):
    with pytest.raises(RunnerError, match="status 2") as err:
        launch_host_runner(stand_in_model, version="0.0.1")
    assert f"this runner is {RUNNER_VERSION}" in str(err.value)


def test_runner_reports_a_missing_or_broken_model(tmp_path):
    with pytest.raises(RunnerError, match="status 3") as err:
        launch_host_runner(tmp_path / "missing.tflite")
    assert "cannot read the model" in str(err.value)
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a flatbuffer" * 100)
    with pytest.raises(RunnerError, match="status 3") as err:
        launch_host_runner(broken)
    assert "cannot load the model" in str(err.value)


@pytest.mark.parametrize("bad", ["model=a;reboot", "threads=999", "accelerator=npu", "mean=1,2", "colour=red",
                                 "token=abababababababababababababababab"])
def test_runner_validates_its_arguments(stand_in_model, bad, tmp_path):
    token_file = tmp_path / "token"
    write_token_file(token_file, "ab" * 16)
    good = {"model": str(stand_in_model), "socket": "tcp:0", "token_file": str(token_file)}
    key = bad.split("=", 1)[0]
    args = [f"{k}={v}" for k, v in good.items() if k != key] + [bad]
    proc = subprocess.run([str(build_host()), RUNNER_VERSION, *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "bad argument" in proc.stderr and key in proc.stderr
    assert not token_file.exists(), "a runner that refuses its arguments must still delete the token file"


@pytest.mark.parametrize("problem", ["readable by others", "not hex", "a symlink"])
def test_runner_refuses_an_unsafe_token_file_and_deletes_it(stand_in_model, tmp_path, problem):
    token_file = tmp_path / "token"
    if problem == "a symlink":
        real = tmp_path / "real"
        write_token_file(real, "ab" * 16)
        token_file.symlink_to(real)
    else:
        token_file.write_text("zz" * 16 if problem == "not hex" else "ab" * 16)
        token_file.chmod(0o600 if problem == "not hex" else 0o644)
    args = [f"model={stand_in_model}", "socket=tcp:0", f"token_file={token_file}"]
    proc = subprocess.run([str(build_host()), RUNNER_VERSION, *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "token file" in proc.stderr
    assert not token_file.is_symlink() and not token_file.exists()


@pytest.fixture(scope="module")
def cpu_runner(stand_in_model):
    """The runner as a hostile local client meets it (CPU only: these checks are about the socket)."""
    launched = launch_host_runner(stand_in_model, accelerator="cpu", threads=1, io_timeout_ms=IO_TIMEOUT_MS)
    yield launched
    launched.stop()


def test_the_token_is_not_on_the_command_line_nor_in_the_socket_name(cpu_runner):
    cmdline = Path(f"/proc/{cpu_runner.proc.pid}/cmdline").read_bytes().decode()
    assert cpu_runner.token not in cmdline and "token=" not in cmdline.replace("token_file=", "")
    assert cpu_runner.token[:8] not in cpu_runner.socket_spec and cpu_runner.token[-8:] not in cpu_runner.socket_spec
    token_file = Path(cmdline.split("token_file=", 1)[1].split("\0", 1)[0])
    assert not token_file.exists(), "the runner must delete its token file once read"


def test_a_request_before_hello_is_refused_before_its_payload_is_read(cpu_runner):
    with cpu_runner.connect(timeout=5) as sock:
        header = bytearray(encode_frame(MsgType.INFER, 1, b""))
        header[12:16] = struct.pack("<I", 448 * 448 * 3)  # announces a full 602 KB frame, sends none of it
        sock.sendall(bytes(header))
        start = time.monotonic()
        _assert_error_then_close(sock, ErrorCode.NOT_AUTHENTICATED)
        assert time.monotonic() - start < IO_TIMEOUT_MS / 1000, "the runner waited for the payload"
    _assert_serves_a_good_client(cpu_runner)


@pytest.mark.parametrize("authenticated", [False, True])
def test_a_client_trickling_one_byte_at_a_time_is_dropped_at_the_frame_deadline(cpu_runner, authenticated):
    """Each byte arrives well within the old per-byte timeout; the whole-frame deadline ends it."""
    with cpu_runner.connect(timeout=5) as sock:
        if authenticated:
            sock.sendall(encode_frame(MsgType.HELLO, 1, encode_hello(RUNNER_VERSION, cpu_runner.token, None)))
            assert _read_reply(sock)[0] == MsgType.HELLO | 0x80
            frame = encode_frame(MsgType.INFER, 2, _image(3).tobytes())
        else:
            frame = encode_frame(MsgType.HELLO, 1, encode_hello(RUNNER_VERSION, cpu_runner.token, None))
        start = time.monotonic()
        sock.settimeout(IO_TIMEOUT_MS / 4000)
        closed_after = None
        for i in range(200):  # at most 200 x 50 ms = 10 s, i.e. 25 frame deadlines
            try:
                sock.sendall(frame[i:i + 1])
                if sock.recv(HEADER_SIZE, socket.MSG_PEEK):
                    closed_after = time.monotonic() - start
                    break
            except TimeoutError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - start
                break
            time.sleep(0.05)
        assert closed_after is not None, "a trickling client held the runner for 10 s"
        assert closed_after < 3 * IO_TIMEOUT_MS / 1000
        sock.settimeout(5)
        _assert_error_then_close(sock, ErrorCode.TIMEOUT)
    _assert_serves_a_good_client(cpu_runner)


def test_a_client_finding_the_backlog_full_retries_until_it_gets_in(stand_in_model):
    """64 idle connections queue behind the one being served; the next one gets EAGAIN at once,
    so connect_socket keeps retrying until its own deadline. (Its own runner with a long I/O
    timeout, so the served idle client does not free a slot while the test watches.)"""
    cpu_runner = launch_host_runner(stand_in_model, accelerator="cpu", threads=1, io_timeout_ms=5000)
    address = "\0" + cpu_runner.socket_spec.split(":", 1)[1]
    hoard = []

    def fill() -> None:
        for _ in range(200):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(address)
            except BlockingIOError:
                sock.close()
                return
            hoard.append(sock)
    try:
        fill()
        time.sleep(0.3)  # the runner accepts the first one and waits for its HELLO (5 s) ...
        fill()  # ... so this tops the backlog up again and nothing frees a slot meanwhile
        assert len(hoard) >= 64, f"the backlog held only {len(hoard)} connections"
        assert len(hoard) < 300, "the backlog never filled up"
        got: dict = {}

        def connect():
            try:
                got["sock"] = cpu_runner.connect(timeout=10)
            except OSError as exc:
                got["error"] = exc
        thread = threading.Thread(target=connect, daemon=True)
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive(), f"connect gave up instead of retrying: {got}"
        for sock in hoard:
            sock.close()
        hoard.clear()
        thread.join(10)
        assert "sock" in got, f"connect failed: {got}"
        client = RunnerClient(got["sock"], timeout=10)
        try:
            client.handshake(RUNNER_VERSION, None, cpu_runner.token)
            assert client.ping() >= 0
        finally:
            client.close()
    finally:
        for sock in hoard:
            sock.close()
        cpu_runner.stop()


def test_refused_clients_are_logged_at_a_bounded_rate(cpu_runner):
    before = cpu_runner.log().count("wrong session token")
    attempts = 300
    for _ in range(attempts):
        client = RunnerClient(cpu_runner.connect(), timeout=5)
        with pytest.raises(RunnerError, match="wrong session token"):
            client.handshake(RUNNER_VERSION, None, "f" * 32)
        client.close()
    logged = cpu_runner.log().count("wrong session token") - before
    print(f"\n[runner] {attempts} wrong-token clients -> {logged} log lines")
    assert logged <= 10
    _assert_serves_a_good_client(cpu_runner)


def test_full_model_fp16_matches_the_host_engine(full_model_fp16):
    rgb = _image(11)
    engine = HostEngine(full_model_fp16, threads=2)
    try:
        expected = engine.infer(rgb).depth
    finally:
        engine.close()
    proc, client = start_host_runner(full_model_fp16, threads=2, timeout=120, accelerator="cpu")
    try:
        reply32 = client.infer(rgb, want="f32", timeout=120)
        depth32, nonfinite = reply32.depth, reply32.nonfinite
        depth16 = client.infer(rgb, want="f16", timeout=120).depth
        client.quit()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert nonfinite == 0
    np.testing.assert_allclose(depth32, expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(depth16, depth32.astype(np.float16).astype(np.float32))
