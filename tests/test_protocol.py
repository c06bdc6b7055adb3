"""device.protocol: frame encoding, argument validation and the client's handling of a bad peer.

The peer here is the other end of a real socketpair driven by the test: it plays runners that
misbehave in ways the real runner (tested in test_runner_host.py) never does on purpose.
"""
from __future__ import annotations

import socket
import stat
import struct
import threading
import time

import numpy as np
import pytest

from device.protocol import (
    HEADER_SIZE, HELLO_REPLY, INFER_REPLY, MAGIC, RUNNER_VERSION, Accelerator, ErrorCode, MsgType, Precision,
    ProtocolError, RunnerClient, RunnerError, build_runner_args, decode_error, decode_header, decode_hello_reply,
    decode_infer_reply, encode_frame, encode_hello, encode_infer, new_socket_name, new_token, parse_ready_line,
    token_file_bytes, write_token_file,
)

TOKEN = "0123456789abcdef0123456789abcdef"


def test_frame_header_round_trip():
    frame = encode_frame(MsgType.PING, 77, b"hello", flags=1)
    header = decode_header(frame[:HEADER_SIZE])
    assert (header.type, header.flags, header.request_id, header.length) == (MsgType.PING, 1, 77, 5)
    assert frame[:4] == MAGIC and frame[HEADER_SIZE:] == b"hello"


def test_decode_header_rejects_garbage_and_short_input():
    with pytest.raises(ProtocolError, match="not a Metric3D runner"):
        decode_header(b"HTTP/1.1 200 OK\r\n"[:HEADER_SIZE])
    with pytest.raises(ProtocolError, match="16 bytes"):
        decode_header(b"M3DR")


def test_hello_layout_and_sha_checks():
    payload = encode_hello("0.1.0", TOKEN, "ab" * 32)
    assert len(payload) == 128
    assert payload[:5] == b"0.1.0" and payload[5:32] == bytes(27)
    assert payload[32:64] == TOKEN.encode() and payload[64:96] == bytes(32)
    assert payload[96:] == bytes.fromhex("ab" * 32)
    assert encode_hello("0.1.0", TOKEN, None)[96:] == bytes(32)
    with pytest.raises(ValueError, match="64 hex"):
        encode_hello("0.1.0", TOKEN, "abcd")
    with pytest.raises(ValueError, match="longer than 32"):
        encode_hello("x" * 33, TOKEN, None)


def test_hello_reply_decoding():
    raw = HELLO_REPLY.pack(b"0.1.0", bytes(range(32)), 448, 2, 3, 0)
    hello = decode_hello_reply(raw)
    assert hello.version == "0.1.0" and hello.input_size == 448
    assert hello.model_sha256 == bytes(range(32)).hex()
    assert hello.accelerator is Accelerator.GPU_OPENCL and hello.accelerator.label == "gpu-opencl"
    assert hello.precision is Precision.FP16ACC32
    assert decode_hello_reply(HELLO_REPLY.pack(b"0.1.0", bytes(32), 448, 1, 0, 0)).model_sha256 == ""  # not hashed
    with pytest.raises(ProtocolError, match="unknown accelerator"):
        decode_hello_reply(HELLO_REPLY.pack(b"0.1.0", bytes(32), 448, 9, 0, 0))
    with pytest.raises(ProtocolError, match="80 bytes"):
        decode_hello_reply(raw[:-1])


def test_infer_frame_layout_and_input_checks():
    rgb = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    frame = encode_infer(rgb, 5, "f16")
    header = decode_header(frame[:HEADER_SIZE])
    assert (header.type, header.flags, header.length) == (MsgType.INFER, 1, 48)
    assert frame[HEADER_SIZE:] == rgb.tobytes()
    assert decode_header(encode_infer(rgb, 5, "f32")[:HEADER_SIZE]).flags == 0
    with pytest.raises(ValueError, match="square uint8"):
        encode_infer(rgb.astype(np.float32), 1)
    with pytest.raises(ValueError, match="square uint8"):
        encode_infer(np.zeros((4, 5, 3), np.uint8), 1)
    with pytest.raises(ValueError, match="want"):
        encode_infer(rgb, 1, "f64")


@pytest.mark.parametrize("dtype_code, np_dtype", [(1, np.float32), (10, np.float16)])
def test_infer_reply_decoding(dtype_code, np_dtype):
    depth = np.linspace(0.1, 200, 12, dtype=np.float32).reshape(3, 4)
    raw = INFER_REPLY.pack(3, 4, dtype_code, 2, 10, 2000, 30, 0) + depth.astype(np_dtype).tobytes()
    reply = decode_infer_reply(raw)
    assert reply.depth.dtype == np.float32 and reply.depth.shape == (3, 4)
    np.testing.assert_array_equal(reply.depth, depth.astype(np_dtype).astype(np.float32))
    assert (reply.nonfinite, reply.normalize_us, reply.compute_us, reply.readback_us) == (2, 10, 2000, 30)
    assert reply.timings_ms == {"normalize": 0.01, "compute": 2.0, "readback": 0.03}
    with pytest.raises(ProtocolError, match="should be"):
        decode_infer_reply(raw[:-2])


def test_infer_reply_rejects_unknown_dtype():
    with pytest.raises(ProtocolError, match="dtype"):
        decode_infer_reply(INFER_REPLY.pack(1, 1, 7, 0, 0, 0, 0, 0) + b"\0" * 4)


def test_decode_error():
    assert decode_error(struct.pack("<I", 6) + b"wrong session token") == (6, "wrong session token")
    assert decode_error(b"")[0] == 0


def test_build_runner_args_is_validated_and_ordered():
    args = build_runner_args("/data/local/tmp/m.tflite", "localabstract:metric3d-x", "/data/local/tmp/tok", threads=4)
    assert args[0] == RUNNER_VERSION
    pairs = dict(a.split("=", 1) for a in args[1:])
    assert pairs["model"] == "/data/local/tmp/m.tflite" and pairs["threads"] == "4"
    assert pairs["token_file"] == "/data/local/tmp/tok" and "token" not in pairs
    assert pairs["mean"] == "123.675,116.28,103.53" and pairs["precision"] == "fp16acc32"
    for bad in ({"model": "m.tflite; rm -rf /"}, {"model": "$(id)"}, {"socket_spec": "tcp:1 && x"},
                {"token_file": "t`id`"}):
        kwargs = {"model": "m.tflite", "socket_spec": "tcp:0", "token_file": "tok", **bad}
        with pytest.raises(ValueError, match="not allowed"):
            build_runner_args(**kwargs)
    with pytest.raises(ValueError, match="precision"):
        build_runner_args("m", "tcp:0", "tok", precision="int8")
    with pytest.raises(ValueError, match="positive"):
        build_runner_args("m", "tcp:0", "tok", std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="threads"):
        build_runner_args("m", "tcp:0", "tok", threads=0)


def test_the_token_never_reaches_the_command_line_and_the_socket_name_is_independent():
    token = new_token()
    args = build_runner_args("m", f"localabstract:{new_socket_name()}", "tok")
    assert not any(token in a for a in args)
    names = {new_socket_name() for _ in range(50)}
    assert len(names) == 50
    assert not any(token[:8] in n or token[-8:] in n for n in names)
    assert token_file_bytes(token) == token.encode() + b"\n"
    with pytest.raises(ValueError, match="hex"):
        token_file_bytes("NOT-HEX")


def test_token_file_is_created_private_and_never_over_an_existing_file(tmp_path):
    path = tmp_path / "token"
    token = new_token()
    write_token_file(path, token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == token + "\n"
    with pytest.raises(FileExistsError):
        write_token_file(path, token)
    target = tmp_path / "elsewhere"
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(FileExistsError):
        write_token_file(tmp_path / "link", token)
    assert not target.exists()


def test_new_token_is_accepted_and_random():
    a, b = new_token(), new_token()
    assert a != b
    token_file_bytes(a)


def test_parse_ready_line():
    fields = parse_ready_line("ready socket=tcp:4321 accelerator=cpu compile_ms=3.1 warmup_ms=2 version=0.1.0\n")
    assert fields == {"socket": "tcp:4321", "accelerator": "cpu", "compile_ms": "3.1", "warmup_ms": "2",
                      "version": "0.1.0"}
    assert parse_ready_line("INFO: [environment.cc:36] ready to go") is None
    assert parse_ready_line("ready but no socket") is None


class FakePeer:
    """The far end of a socketpair, scripted by the test."""

    def __init__(self) -> None:
        self.client_sock, self.peer = socket.socketpair()
        self.peer.settimeout(5)

    def read_frame(self) -> tuple[int, int, bytes]:
        header = decode_header(self._recv(HEADER_SIZE))
        return header.type, header.request_id, self._recv(header.length)

    def _recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.peer.recv(n - len(data))
            assert chunk, "client closed"
            data += chunk
        return data

    def close(self) -> None:
        self.peer.close()
        self.client_sock.close()


@pytest.fixture
def peer():
    p = FakePeer()
    yield p
    p.close()


def _in_thread(fn):
    result: dict = {}

    def run():
        try:
            result["value"] = fn()
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_client_handshake_rejects_other_version_and_model(peer):
    client = RunnerClient(peer.client_sock, timeout=5)
    thread, result = _in_thread(lambda: client.handshake(RUNNER_VERSION, "cd" * 32, TOKEN))
    msg_type, request_id, payload = peer.read_frame()
    assert msg_type == MsgType.HELLO and payload[32:64] == TOKEN.encode()
    reply = HELLO_REPLY.pack(RUNNER_VERSION.encode(), bytes.fromhex("ab" * 32), 448, 1, 0, 0)
    peer.peer.sendall(encode_frame(MsgType.HELLO | 0x80, request_id, reply))
    thread.join(5)
    assert isinstance(result.get("error"), ProtocolError) and "different model" in str(result["error"])

    thread, result = _in_thread(lambda: client.handshake(RUNNER_VERSION, None, TOKEN))
    _, request_id, _ = peer.read_frame()
    reply = HELLO_REPLY.pack(b"9.9.9", bytes(32), 448, 1, 0, 0)
    peer.peer.sendall(encode_frame(MsgType.HELLO | 0x80, request_id, reply))
    thread.join(5)
    assert isinstance(result.get("error"), ProtocolError) and "9.9.9" in str(result["error"])


def test_client_turns_error_frames_into_runner_error(peer):
    client = RunnerClient(peer.client_sock, timeout=5)
    thread, result = _in_thread(client.info)
    _, request_id, _ = peer.read_frame()
    peer.peer.sendall(encode_frame(MsgType.ERROR, request_id, struct.pack("<I", 9) + b"GPU lost"))
    thread.join(5)
    error = result.get("error")
    assert isinstance(error, RunnerError) and not isinstance(error, ProtocolError)
    assert error.code == ErrorCode.INFERENCE_FAILED and "INFERENCE_FAILED: GPU lost" in str(error)


def test_client_rejects_garbage_then_stays_closed(peer):
    client = RunnerClient(peer.client_sock, timeout=5)
    thread, result = _in_thread(client.ping)
    peer.read_frame()
    peer.peer.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
    thread.join(5)
    assert isinstance(result.get("error"), ProtocolError) and "not a Metric3D runner" in str(result["error"])
    with pytest.raises(RunnerError, match="closed after an earlier failure"):
        client.ping()


def test_client_rejects_a_reply_to_another_request(peer):
    client = RunnerClient(peer.client_sock, timeout=5)
    thread, result = _in_thread(client.ping)
    _, request_id, _ = peer.read_frame()
    peer.peer.sendall(encode_frame(MsgType.PING | 0x80, request_id + 1000))
    thread.join(5)
    assert isinstance(result.get("error"), ProtocolError) and "unexpected reply" in str(result["error"])


def test_client_times_out_on_a_silent_peer(peer):
    client = RunnerClient(peer.client_sock, timeout=0.3)
    start = time.monotonic()
    with pytest.raises(RunnerError, match="did not answer PING within 0.3 s"):
        client.ping()
    assert time.monotonic() - start < 2.0


def test_client_reports_a_peer_that_closes_mid_reply(peer):
    client = RunnerClient(peer.client_sock, timeout=5)
    thread, result = _in_thread(client.info)
    _, request_id, _ = peer.read_frame()
    peer.peer.sendall(encode_frame(MsgType.INFO | 0x80, request_id, b'{"a": 1}')[:HEADER_SIZE + 3])
    peer.peer.close()
    thread.join(5)
    assert isinstance(result.get("error"), RunnerError) and "closed the connection" in str(result["error"])


def test_client_refuses_a_wrong_size_image_before_sending(peer):
    client = RunnerClient(peer.client_sock, timeout=5)
    client.input_size = 448
    with pytest.raises(ValueError, match="448x448"):
        client.infer(np.zeros((224, 224, 3), np.uint8))
