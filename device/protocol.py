"""The runner protocol: frame layout, pure encode/decode functions and a blocking client.

The layout is documented in device/PROTOCOL.md; runner.c is the other half. The client works
over any connected stream socket (a loopback/unix socket to the host runner, or the socket
adbutils returns for `localabstract:NAME` on the phone), so the same code is tested here.
"""
from __future__ import annotations

import enum
import json
import os
import re
import secrets
import socket
import struct
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

RUNNER_VERSION = "0.1.0"
MAGIC = b"M3DR"
HEADER = struct.Struct("<4sBBHII")
HEADER_SIZE = HEADER.size
REPLY_BIT = 0x80
HELLO_REQUEST = struct.Struct("<32s64s32s")
HELLO_REPLY = struct.Struct("<32s32sIIII")
INFER_REPLY = struct.Struct("<IIIIIIII")
ERROR_HEAD = struct.Struct("<I")
FLAG_F16 = 0x01
MAX_SMALL_PAYLOAD = 256
DTYPE_F32 = 1
DTYPE_F16 = 10
DEFAULT_MEAN = (123.675, 116.28, 103.53)
DEFAULT_STD = (58.395, 57.12, 57.375)
_DTYPES = {DTYPE_F32: np.dtype("<f4"), DTYPE_F16: np.dtype("<f2")}
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_./:,+\-]+$")
_TOKEN = re.compile(r"^[0-9a-f]{16,64}$")


class MsgType(enum.IntEnum):
    HELLO = 0x01
    PING = 0x02
    INFO = 0x03
    INFER = 0x04
    QUIT = 0x05
    ERROR = 0xFF


class ErrorCode(enum.IntEnum):
    BAD_MAGIC = 1
    UNKNOWN_TYPE = 2
    TOO_LARGE = 3
    BAD_LENGTH = 4
    VERSION_MISMATCH = 5
    BAD_TOKEN = 6
    MODEL_MISMATCH = 7
    NOT_AUTHENTICATED = 8
    INFERENCE_FAILED = 9
    BAD_REQUEST = 10
    TIMEOUT = 11


class Accelerator(enum.IntEnum):
    CPU = 1
    GPU_OPENCL = 2
    GPU_OPENGL = 3
    GPU_WEBGPU = 4

    @property
    def label(self) -> str:
        return {1: "cpu", 2: "gpu-opencl", 3: "gpu-opengl", 4: "gpu-webgpu"}[self.value]


class Precision(enum.IntEnum):
    NOT_APPLICABLE = 0
    FP16 = 1
    FP32 = 2
    FP16ACC32 = 3


class RunnerError(RuntimeError):
    """The runner failed, answered with an ERROR frame (`code` set) or went away."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class ProtocolError(RunnerError):
    """The peer does not speak this protocol or version, or sent a malformed reply."""


@dataclass(frozen=True)
class FrameHeader:
    type: int
    flags: int
    request_id: int
    length: int


@dataclass(frozen=True)
class HelloReply:
    version: str
    model_sha256: str  # "" when the client did not ask the runner to check its model
    input_size: int
    accelerator: Accelerator
    precision: Precision


@dataclass(frozen=True)
class InferReply:
    """One INFER answer: the depth and the runner's own timings (device/PROTOCOL.md)."""

    depth: np.ndarray  # float32 [H, W], canonical metres (the model's output)
    nonfinite: int  # NaN/inf values in the depth before conversion
    normalize_us: int
    compute_us: int
    readback_us: int

    @property
    def timings_ms(self) -> dict[str, float]:
        """The runner's steps in milliseconds: normalize, compute, readback."""
        return {"normalize": self.normalize_us / 1000.0, "compute": self.compute_us / 1000.0,
                "readback": self.readback_us / 1000.0}


def encode_frame(msg_type: int, request_id: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """Header + payload as one buffer, so a frame always goes out in one send."""
    return HEADER.pack(MAGIC, msg_type, flags, 0, request_id & 0xFFFFFFFF, len(payload)) + payload


def decode_header(data: bytes) -> FrameHeader:
    if len(data) != HEADER_SIZE:
        raise ProtocolError(f"frame header must be {HEADER_SIZE} bytes, got {len(data)}")
    magic, msg_type, flags, _reserved, request_id, length = HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"the peer is not a Metric3D runner (frame starts with {magic!r}, expected {MAGIC!r})")
    return FrameHeader(msg_type, flags, request_id, length)


def _fixed_ascii(text: str, size: int, what: str) -> bytes:
    raw = text.encode("ascii")
    if len(raw) > size:
        raise ValueError(f"{what} is longer than {size} characters: {text!r}")
    return raw.ljust(size, b"\0")


def _read_ascii(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace")


def encode_hello(version: str, token: str, expected_sha256: str | None) -> bytes:
    """HELLO payload; expected_sha256=None lets the runner skip the model check."""
    digest = bytes.fromhex(expected_sha256) if expected_sha256 else bytes(32)
    if len(digest) != 32:
        raise ValueError(f"expected sha256 must be 64 hex digits, got {expected_sha256!r}")
    return HELLO_REQUEST.pack(_fixed_ascii(version, 32, "version"), _fixed_ascii(token, 64, "token"), digest)


def decode_hello_reply(payload: bytes) -> HelloReply:
    if len(payload) != HELLO_REPLY.size:
        raise ProtocolError(f"HELLO reply must be {HELLO_REPLY.size} bytes, got {len(payload)}")
    version, digest, size, accel, precision, _reserved = HELLO_REPLY.unpack(payload)
    try:
        accelerator, prec = Accelerator(accel), Precision(precision)
    except ValueError as exc:
        raise ProtocolError(f"HELLO reply has an unknown accelerator/precision code: {exc}") from None
    # All zero: the runner was not asked to hash its model (it hashes only on request).
    return HelloReply(_read_ascii(version), digest.hex() if any(digest) else "", size, accelerator, prec)


def encode_infer(rgb: np.ndarray, request_id: int, want: str = "f16") -> bytes:
    """A whole INFER frame for an S x S x 3 uint8 image."""
    if want not in ("f16", "f32"):
        raise ValueError(f"want must be 'f16' or 'f32', got {want!r}")
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] != rgb.shape[1]:
        raise ValueError(f"the runner takes a square uint8 RGB image [S,S,3], got {rgb.dtype} {rgb.shape}")
    flags = FLAG_F16 if want == "f16" else 0
    return encode_frame(MsgType.INFER, request_id, np.ascontiguousarray(rgb).tobytes(), flags)


def decode_infer_reply(payload: bytes) -> InferReply:
    if len(payload) < INFER_REPLY.size:
        raise ProtocolError(f"INFER reply is too short ({len(payload)} bytes)")
    height, width, dtype_code, nonfinite, norm_us, compute_us, read_us, _ = INFER_REPLY.unpack_from(payload)
    dtype = _DTYPES.get(dtype_code)
    if dtype is None:
        raise ProtocolError(f"INFER reply has unknown dtype code {dtype_code}")
    expected = INFER_REPLY.size + height * width * dtype.itemsize
    if len(payload) != expected:
        raise ProtocolError(f"INFER reply for {height}x{width} should be {expected} bytes, got {len(payload)}")
    depth = np.frombuffer(payload, dtype=dtype, offset=INFER_REPLY.size).reshape(height, width)
    return InferReply(depth.astype(np.float32), nonfinite, norm_us, compute_us, read_us)


def decode_error(payload: bytes) -> tuple[int, str]:
    if len(payload) < ERROR_HEAD.size:
        return 0, "runner sent an empty ERROR frame"
    (code,) = ERROR_HEAD.unpack_from(payload)
    return code, payload[ERROR_HEAD.size:].decode("utf-8", errors="replace")


def error_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"error {code}"


def new_token() -> str:
    """A per-session secret the client must present (32 hex digits)."""
    return secrets.token_hex(16)


def new_socket_name() -> str:
    """A fresh abstract socket name, independent of the token (nothing about it can be derived
    from the name, which every local user can list in /proc/net/unix)."""
    return f"metric3d_{secrets.token_hex(8)}"


def token_file_bytes(token: str) -> bytes:
    """The content of the runner's token file (its `token_file=` argument): the token and a newline.

    The runner reads the file, checks it is a regular file of its own user with mode 0600,
    and deletes it before it loads the model, so the token never appears on a command line
    (/proc/PID/cmdline is readable by every local user). Raises ValueError for a bad token.
    """
    if not _TOKEN.match(token):
        raise ValueError("token must be 16-64 lowercase hex digits")
    return token.encode("ascii") + b"\n"


def write_token_file(path: str | os.PathLike, token: str) -> None:
    """Create `path` with mode 0600 (never an existing file or link) holding the token."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(token_file_bytes(token))


def _format_floats(values: Sequence[float], what: str) -> str:
    if len(values) != 3:
        raise ValueError(f"{what} needs three values (R, G, B), got {values!r}")
    return ",".join(repr(float(v)) for v in values)


def build_runner_args(
    model: str,
    socket_spec: str,
    token_file: str,
    accelerator: str = "gpu",
    precision: str = "fp16acc32",
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    threads: int | None = None,
    io_timeout_ms: int | None = None,
    libdir: str | None = None,
    version: str = RUNNER_VERSION,
) -> list[str]:
    """The runner's argv after the program name; every value is checked so it is shell-safe."""
    if accelerator not in ("gpu", "cpu"):
        raise ValueError(f"accelerator must be 'gpu' or 'cpu', got {accelerator!r}")
    if precision not in ("fp16", "fp16acc32", "fp32"):
        raise ValueError(f"precision must be fp16, fp16acc32 or fp32, got {precision!r}")
    if any(v <= 0 for v in std):
        raise ValueError(f"std values must be positive, got {std!r}")
    pairs = {
        "model": model, "socket": socket_spec, "token_file": token_file, "accelerator": accelerator,
        "precision": precision, "mean": _format_floats(mean, "mean"), "std": _format_floats(std, "std"),
    }
    if threads is not None:
        if not 1 <= threads <= 64:
            raise ValueError(f"threads must be 1-64, got {threads}")
        pairs["threads"] = str(threads)
    if io_timeout_ms is not None:
        if not 1 <= io_timeout_ms <= 600_000:
            raise ValueError(f"io_timeout_ms must be 1-600000, got {io_timeout_ms}")
        pairs["io_timeout_ms"] = str(io_timeout_ms)
    if libdir is not None:
        pairs["libdir"] = libdir
    for key, value in pairs.items():
        if not _SAFE_VALUE.match(value):
            raise ValueError(f"runner argument {key}={value!r} has characters that are not allowed "
                             "(use letters, digits and _ . / : , + -)")
    return [version] + [f"{k}={v}" for k, v in pairs.items()]


def parse_ready_line(line: str) -> dict[str, str] | None:
    """The fields of the runner's `ready ...` stdout line, or None for any other (log) line."""
    line = line.strip()
    if not line.startswith("ready "):
        return None
    fields = dict(part.split("=", 1) for part in line[6:].split() if "=" in part)
    return fields if "socket" in fields else None


class RunnerClient:
    """One session with a runner over a connected stream socket; every call has a timeout."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        self._sock = sock
        self._timeout = timeout
        self._next_id = 1
        self._broken: str | None = None
        self.input_size: int | None = None
        self.hello: HelloReply | None = None

    def handshake(self, expected_version: str, expected_sha256: str | None, token: str) -> HelloReply:
        """Prove we hold the token; refuse a runner of another version or with another model."""
        reply = self._call(MsgType.HELLO, encode_hello(expected_version, token, expected_sha256))
        hello = decode_hello_reply(reply)
        if hello.version != expected_version:
            raise ProtocolError(f"runner version {hello.version} does not match this app's {expected_version}; "
                                "rebuild and push the runner")
        if expected_sha256 and hello.model_sha256 != expected_sha256.lower():
            raise ProtocolError(f"the runner has a different model (sha256 {hello.model_sha256[:12]}…, "
                                f"expected {expected_sha256[:12]}…)")
        self.hello, self.input_size = hello, hello.input_size
        return hello

    def infer(self, rgb: np.ndarray, want: str = "f16", timeout: float | None = None) -> InferReply:
        """Depth float32 [S,S] for a uint8 [S,S,3] image, with its NaN/inf count and the runner's timings."""
        if self.input_size is not None and rgb.shape[:2] != (self.input_size, self.input_size):
            raise ValueError(f"the runner's model takes {self.input_size}x{self.input_size}, got {rgb.shape}")
        request_id = self._take_id()
        frame = encode_infer(rgb, request_id, want)
        return decode_infer_reply(self._exchange(frame, MsgType.INFER, request_id, timeout))

    def ping(self, payload: bytes = b"", timeout: float | None = None) -> float:
        """Round-trip time in ms; the runner must echo the payload (within `timeout` s if given)."""
        start = time.perf_counter()
        echoed = self._call(MsgType.PING, payload, timeout)
        if echoed != payload:
            raise ProtocolError("PING reply does not echo the request")
        return (time.perf_counter() - start) * 1000.0

    def info(self) -> dict:
        try:
            return json.loads(self._call(MsgType.INFO, b"").decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProtocolError(f"INFO reply is not JSON: {exc}") from None

    def quit(self) -> None:
        """Ask the runner to exit, then close our end."""
        try:
            self._call(MsgType.QUIT, b"")
        finally:
            self.close()

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    def _take_id(self) -> int:
        request_id = self._next_id
        self._next_id = (self._next_id % 0xFFFFFFFF) + 1
        return request_id

    def _call(self, msg_type: MsgType, payload: bytes, timeout: float | None = None) -> bytes:
        request_id = self._take_id()
        return self._exchange(encode_frame(msg_type, request_id, payload), msg_type, request_id, timeout)

    def _exchange(self, frame: bytes, msg_type: MsgType, request_id: int, timeout: float | None) -> bytes:
        """Send one frame and read its reply; any failure leaves the stream out of step, so it closes it."""
        if self._broken is not None:
            raise RunnerError(f"the runner connection was closed after an earlier failure: {self._broken}")
        try:
            return self._exchange_once(frame, msg_type, request_id, timeout)
        except RunnerError as exc:
            if exc.code is None:
                self._broken = str(exc)
                self.close()
            raise

    def _exchange_once(self, frame: bytes, msg_type: MsgType, request_id: int, timeout: float | None) -> bytes:
        deadline = time.monotonic() + (timeout if timeout is not None else self._timeout)
        try:
            self._sock.settimeout(max(deadline - time.monotonic(), 0.001))
            self._sock.sendall(frame)
            header = decode_header(self._recv_exact(HEADER_SIZE, deadline))
            payload = self._recv_exact(header.length, deadline)
        except socket.timeout:
            raise RunnerError(f"the runner did not answer {msg_type.name} within "
                              f"{timeout if timeout is not None else self._timeout:g} s") from None
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
            raise RunnerError(f"the runner closed the connection during {msg_type.name} ({exc})") from None
        except OSError as exc:
            raise RunnerError(f"socket error talking to the runner during {msg_type.name}: {exc}") from None
        if header.type == MsgType.ERROR:
            code, message = decode_error(payload)
            raise RunnerError(f"runner refused {msg_type.name}: {error_name(code)}: {message}", code)
        if header.type != (msg_type | REPLY_BIT) or header.request_id != request_id:
            raise ProtocolError(f"unexpected reply type 0x{header.type:02x} id {header.request_id} "
                                f"to {msg_type.name} id {request_id}")
        return payload

    def _recv_exact(self, size: int, deadline: float) -> bytes:
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout()
            self._sock.settimeout(remaining)
            n = self._sock.recv_into(view[got:], size - got)
            if n == 0:
                raise RunnerError("the runner closed the connection (did it crash or get killed?)")
            got += n
        return bytes(buf)
