"""An emulated Pixel for tests: the device side of the adb transport, over TCP.

Why: the device link (push, shell, runner start, localabstract sockets, faults) must be
tested through the REAL adb server and adbutils, and no phone is attached here. The
real server accepts this emulator after `adb connect 127.0.0.1:PORT`, exactly like a
phone on Wi-Fi debugging, so everything above the transport is the production path.

What it speaks (AOSP adb protocol.txt / SERVICES.TXT / SYNC.TXT, own implementation) is
what the product uses, nothing more:
- CNXN with version 0x01000001 (no checksums), AUTH (for the "unauthorized" state),
  OPEN/OKAY/WRTE/CLSE with one WRTE in flight per stream until OKAY; a failed OPEN is CLSE.
- `shell,v2,...:CMD` (packets: id byte + u32 length; 1 stdout, 2 stderr, 3 exit code).
- `sync:` STAT and SEND "path,mode" + DATA... + DONE(mtime), QUIT; sync packets may span
  WRTE boundaries.
- `localabstract:NAME`: bytes pumped both ways to the host's abstract unix socket of the
  same name (Linux abstract sockets work on the host).

The sandbox (what "on the phone" means; code in testing/emulated_shell.py):
- The device filesystem is a host folder `root`; device path /X is `root/X` ('..' cannot
  leave it). /data/local/tmp exists; /dev/null is the host's.
- Shell commands go through a small POSIX-like parser (quotes, backslash, `;` `&&` `||`
  `&`, `>` `>>` `2>` `2>&1` `<`, leading VAR=value, `$!` `$?`). Pipes, globs, `$VAR`,
  sub-shells and a backgrounded && / || list are refused with exit 2, not guessed.
- Built-ins run in Python on the sandbox, those device/adb.py uses: getprop, sha256sum,
  rm, mkdir, cat, echo, cd, kill, pidof, exit, nohup/setsid prefixes.
- The runner mapping: a command with a '/' runs that sandbox file for real as a host
  process. The tests push the HOST runner build (and the wheel's libLiteRt.so) where the
  Android build would go, so `/data/local/tmp/metric3d/metric3d_runner ARGS` runs the host
  runner, which loads libLiteRt.so from its own (sandbox) folder as it would on the phone.
  `program_map` can instead map a device path or basename to another host executable.
  In arguments and VAR=value, the text "/data/local/tmp" becomes the host folder, so
  paths given to the runner resolve inside the sandbox; an abstract socket name is the
  same on both sides. Processes get stdin /dev/null, a new session, and survive the
  shell stream (as with nohup on a phone); `kill`, `pidof` and `ps` see only processes
  this emulator started; close() kills them all.

Faults for tests: unplug()/replug() (drop the transport and refuse reconnects),
set_state("unauthorized") (answer CNXN with AUTH and never accept), `abi` (what
`getprop ro.product.cpu.abi` says), kill_on_next_socket_data(name, min_bytes) (SIGKILL a
process when the next large enough chunk for a device socket arrives: a crash mid-request).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, NamedTuple

from testing import free_port
from testing.emulated_shell import DeviceFs, Sandbox

A_CNXN, A_AUTH, A_OPEN = 0x4E584E43, 0x48545541, 0x4E45504F
A_OKAY, A_CLSE, A_WRTE = 0x59414B4F, 0x45534C43, 0x45545257
A_VERSION_SKIP_CHECKSUM = 0x01000001
MAX_PAYLOAD = 1024 * 1024
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
SYNC_DATA_MAX = 64 * 1024
FEATURES = "shell_v2,cmd,fixed_push_mkdir"
PIXEL_8A_PROPS = {
    "ro.product.name": "akita",
    "ro.product.model": "Pixel 8a",
    "ro.product.device": "akita",
    "ro.product.manufacturer": "Google",
    "ro.build.version.release": "15",
    "ro.build.version.sdk": "35",
}


def _packet(command: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    """One adb message: 24-byte header (checksum 0: skipped at version 0x01000001) + payload."""
    return struct.pack("<6I", command, arg0, arg1, len(data), 0, command ^ 0xFFFFFFFF) + data


# ----------------------------------------------------------------------------- streams


class Stream:
    """One adb stream: flow-controlled writes to the host, buffered reads from it."""

    def __init__(self, transport: Transport, local_id: int, remote_id: int):
        self.transport = transport
        self.local_id, self.remote_id = local_id, remote_id
        self._can_send = asyncio.Event()
        self._can_send.set()
        self._inbox = bytearray()
        self._has_data = asyncio.Event()
        self._okay_owed = False
        self.closed = False
        self.opened = False  # OKAY sent for the host's OPEN
        self.task: asyncio.Task | None = None
        self.on_close: list = []

    def accept(self) -> None:
        """Answers the host's OPEN with OKAY: the service is connected."""
        self.opened = True
        self.transport.send(_packet(A_OKAY, self.local_id, self.remote_id))

    async def write(self, data: bytes) -> None:
        step = self.transport.max_payload
        for start in range(0, len(data), step):
            await self._can_send.wait()
            if self.closed:
                raise ConnectionResetError("stream closed by the host")
            self._can_send.clear()
            self.transport.send(_packet(A_WRTE, self.local_id, self.remote_id, data[start:start + step]))

    def host_okay(self) -> None:
        self._can_send.set()

    def host_data(self, data: bytes) -> None:
        self._inbox += data
        self._okay_owed = True
        self._has_data.set()

    async def read_some(self) -> bytes:
        """Returns buffered bytes; acknowledges the host's last WRTE only when more are needed."""
        while not self._inbox:
            if self.closed:
                return b""
            self._ack()
            self._has_data.clear()
            await self._has_data.wait()
        data = bytes(self._inbox)
        self._inbox.clear()
        return data

    async def read_exact(self, n: int) -> bytes:
        while len(self._inbox) < n:
            if self.closed:
                raise EOFError("stream closed")
            self._ack()
            self._has_data.clear()
            await self._has_data.wait()
        data = bytes(self._inbox[:n])
        del self._inbox[:n]
        return data

    def _ack(self) -> None:
        if self._okay_owed and not self.closed:
            self._okay_owed = False
            self.transport.send(_packet(A_OKAY, self.local_id, self.remote_id))

    def close(self, notify_host: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        self._can_send.set()
        self._has_data.set()
        if notify_host:  # a refused OPEN is CLSE(0, host id)
            self.transport.send(_packet(A_CLSE, self.local_id if self.opened else 0, self.remote_id))
        self.transport.streams.pop(self.local_id, None)
        for callback in self.on_close:
            callback()


# ----------------------------------------------------------------------------- the transport


class Transport:
    """One TCP connection from the adb server: handshake, then streams."""

    def __init__(self, device: AdbDeviceEmulator, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.device = device
        self.reader, self.writer = reader, writer
        self.streams: dict[int, Stream] = {}
        self.max_payload = 4096
        self.online = False
        self._next_id = 1

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def go_online(self) -> None:
        if not self.online:
            self.online = True
            banner = "device::" + "".join(f"{k}={self.device.props[k]};" for k in
                                          ("ro.product.name", "ro.product.model", "ro.product.device"))
            self.send(_packet(A_CNXN, A_VERSION_SKIP_CHECKSUM, MAX_PAYLOAD, (banner + "features=" + FEATURES).encode()))

    async def serve(self) -> None:
        try:
            while True:
                header = await self.reader.readexactly(24)
                command, arg0, arg1, length, _crc, magic = struct.unpack("<6I", header)
                if magic != command ^ 0xFFFFFFFF:
                    raise ConnectionError("bad adb packet magic")
                data = await self.reader.readexactly(length) if length else b""
                self._handle(command, arg0, arg1, data)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.drop()

    def drop(self) -> None:
        for s in list(self.streams.values()):
            s.close(notify_host=False)
            if s.task:
                s.task.cancel()
        self.writer.close()
        self.device.transports.discard(self)

    def _handle(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        if command == A_CNXN:
            self.max_payload = min(max(arg1, 4096), MAX_PAYLOAD)
            self.online = False
            if self.device.state == "device":
                self.go_online()
            else:
                self.send(_packet(A_AUTH, AUTH_TOKEN, 0, os.urandom(20)))
        elif command == A_AUTH:
            if arg0 == AUTH_SIGNATURE:  # never accepted: ask again so the host offers its public key
                self.send(_packet(A_AUTH, AUTH_TOKEN, 0, os.urandom(20)))
            # AUTH_RSAPUBLICKEY: the "Allow USB debugging?" prompt would show; nobody answers.
        elif not self.online:
            return
        elif command == A_OPEN:
            self._open(arg0, data.rstrip(b"\0").decode("utf-8", "replace"))
        elif command == A_OKAY:
            stream = self.streams.get(arg1)
            if stream:
                stream.host_okay()
        elif command == A_WRTE:
            stream = self.streams.get(arg1)
            if stream:
                stream.host_data(data)
        elif command == A_CLSE:
            stream = self.streams.get(arg1)
            if stream:
                stream.close(notify_host=True)
                if stream.task:
                    stream.task.cancel()

    def _open(self, remote_id: int, service: str) -> None:
        handler = self.device.service_handler(service)
        if handler is None:
            self.send(_packet(A_CLSE, 0, remote_id))
            return
        local_id, self._next_id = self._next_id, self._next_id + 1
        stream = Stream(self, local_id, remote_id)
        self.streams[local_id] = stream
        stream.task = asyncio.ensure_future(self._run_service(handler, stream, service))

    async def _run_service(self, handler, stream: Stream, service: str) -> None:
        try:
            await handler(stream, service)
        except (asyncio.CancelledError, EOFError, ConnectionError, OSError):
            pass
        finally:
            stream.close()


# ----------------------------------------------------------------------------- services


async def _shell_service(device: AdbDeviceEmulator, stream: Stream, service: str) -> None:
    """`shell,v2,...:CMD`: the command's stdout, stderr and exit status as shell v2 packets."""
    command = service.partition(":")[2]
    if not command.strip():
        return  # interactive shells are not emulated
    stream.accept()
    result = await device.sandbox.run(command)
    packets = b""
    for kind, payload in ((1, result.out), (2, result.err)):
        if payload:
            packets += struct.pack("<BI", kind, len(payload)) + payload
    packets += struct.pack("<BIB", 3, 1, result.code & 0xFF)
    await stream.write(packets)


def _stat_v1(path: str) -> bytes:
    try:
        st = os.stat(path)
        return struct.pack("<III", st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF, int(st.st_mtime))
    except OSError:
        return struct.pack("<III", 0, 0, 0)


async def _sync_service(device: AdbDeviceEmulator, stream: Stream, service: str) -> None:
    stream.accept()
    while True:
        ident, length = struct.unpack("<4sI", await stream.read_exact(8))
        if ident == b"QUIT":
            return
        if length > 4096:
            raise ConnectionError("sync path too long")
        path = (await stream.read_exact(length)).decode("utf-8", "replace")
        if ident == b"STAT":
            await stream.write(b"STAT" + _stat_v1(device.fs.host(path)))
        elif ident == b"SEND":
            await _sync_receive_file(device, stream, path)
        else:
            raise ConnectionError(f"sync request {ident!r} is not emulated (the product uses STAT and SEND)")


async def _sync_receive_file(device: AdbDeviceEmulator, stream: Stream, spec: str) -> None:
    path, _, mode_text = spec.rpartition(",")
    if not path:
        path, mode_text = spec, "33188"
    host = device.fs.host(path)
    partial = host + ".emulator-partial"
    error = ""
    try:
        os.makedirs(os.path.dirname(host), exist_ok=True)
        out = open(partial, "wb")
    except OSError as exc:
        out, error = None, f"couldn't create file: {exc.strerror}"
    try:
        while True:
            ident, value = struct.unpack("<4sI", await stream.read_exact(8))
            if ident == b"DATA":
                if value > SYNC_DATA_MAX:
                    raise ConnectionError("sync DATA chunk too large")
                chunk = await stream.read_exact(value)
                device.sync_bytes_received += len(chunk)
                if out:
                    out.write(chunk)
            elif ident == b"DONE":
                break
            else:
                raise ConnectionError(f"unexpected {ident!r} during SEND")
    finally:
        if out:
            out.close()
    if not error:
        os.replace(partial, host)
        os.chmod(host, int(mode_text) & 0o7777 if mode_text.isdigit() else 0o644)
        os.utime(host, (value, value))
        await stream.write(b"OKAY" + bytes(4))
    else:
        msg = error.encode()
        await stream.write(b"FAIL" + struct.pack("<I", len(msg)) + msg)


async def _socket_service(device: AdbDeviceEmulator, stream: Stream, service: str) -> None:
    try:
        reader, writer = await asyncio.open_unix_connection("\0" + service.partition(":")[2])
    except OSError:
        return  # closes the stream: the host's OPEN fails
    stream.accept()

    async def to_host() -> None:
        while True:
            data = await reader.read(stream.transport.max_payload)
            if not data:
                return
            await stream.write(data)

    async def from_host() -> None:
        while True:
            data = await stream.read_some()
            if not data:
                return
            victim = device.take_armed_victim(len(data))
            if victim:
                await asyncio.to_thread(device.kill_by_name, victim)
            writer.write(data)
            await writer.drain()

    tasks = [asyncio.ensure_future(to_host()), asyncio.ensure_future(from_host())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        writer.close()


# ----------------------------------------------------------------------------- the device


class AdbDeviceEmulator:
    """The emulated phone: a TCP listener for the adb server plus the sandbox behind it.

    It runs its own asyncio loop in a daemon thread; public methods are thread-safe.
    """

    def __init__(self, root: Path, port: int = 0, abi: str = "arm64-v8a", state: str = "device",
                 program_map: dict[str, str] | None = None):
        self.fs = DeviceFs(root)
        self.props = dict(PIXEL_8A_PROPS)
        self.abi = abi
        self.state = state
        self.sandbox = Sandbox(self.fs, self.props, dict(program_map or {}))
        self.transports: set[Transport] = set()
        self.sync_bytes_received = 0
        self._armed_victim: tuple[str, int] | None = None
        self._port = port
        self._server: asyncio.base_events.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="adb-device-emulator", daemon=True)
        self._thread.start()
        self.replug()

    @property
    def abi(self) -> str:
        return self.props["ro.product.cpu.abi"]

    @abi.setter
    def abi(self, value: str) -> None:
        self.props["ro.product.cpu.abi"] = value

    @property
    def port(self) -> int:
        return self._port

    def _call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def service_handler(self, service: str):
        if service.startswith("shell,") and "v2" in service.partition(":")[0].split(","):
            return lambda s, svc: _shell_service(self, s, svc)
        if service == "sync:":
            return lambda s, svc: _sync_service(self, s, svc)
        if service.startswith("localabstract:"):
            return lambda s, svc: _socket_service(self, s, svc)
        return None

    # -- plug state

    def replug(self) -> None:
        """Starts listening (again, on the same port) so the adb server can (re)connect."""
        async def start() -> None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self._port)
            self._port = self._server.sockets[0].getsockname()[1]
        self._call(start())

    def unplug(self) -> None:
        """Drops every transport and refuses new ones: the cable is pulled."""
        async def stop() -> None:
            if self._server:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            for t in list(self.transports):
                t.drop()
        self._call(stop())

    def set_state(self, state: str) -> None:
        """"device" or "unauthorized"; becoming "device" accepts a waiting host (the prompt is answered)."""
        if state not in ("device", "unauthorized"):
            raise ValueError(f"unknown state {state!r}")
        self.state = state
        if state == "device":
            self._loop.call_soon_threadsafe(lambda: [t.go_online() for t in list(self.transports)])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = Transport(self, reader, writer)
        self.transports.add(transport)
        await transport.serve()

    # -- processes and faults

    def processes(self) -> dict[int, str]:
        """Live processes started through the shell: host pid -> program basename."""
        return self.sandbox.live()

    def kill_by_name(self, name: str) -> list[int]:
        pids = [pid for pid, n in self.sandbox.live().items() if n == name]
        for pid in pids:
            self.sandbox.kill(pid)
        for pid in pids:
            proc = self.sandbox.processes[pid][0]
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        return pids

    def kill_on_next_socket_data(self, name: str, min_bytes: int = 1) -> None:
        """The next chunk of at least `min_bytes` sent to a device socket first SIGKILLs processes
        named `name` (a large minimum skips small health pings and hits an INFER request)."""
        self._armed_victim = (name, min_bytes)

    def take_armed_victim(self, chunk_size: int) -> str | None:
        armed = self._armed_victim
        if armed is None or chunk_size < armed[1]:
            return None
        self._armed_victim = None
        return armed[0]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.unplug()
        self.sandbox.kill_all()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


# ----------------------------------------------------------------------------- adb server + fixture


def adb_binary() -> str:
    from adbutils._utils import adb_path
    return adb_path()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class AdbServer:
    """A private, foreground adb server on a fixed free port that a test can kill and start again.

    Its HOME is `home` (keys stay in the temp dir). adbutils runs `adb start-server` whenever
    it cannot reach a server, so after a kill the app's own next adb call may bring a (daemon)
    server back first: while this object lives, ANDROID_ADB_SERVER_PORT and ANDROID_USER_HOME
    point here, so such a server lands on this port with this home, and kill()/close() end it too.
    """

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.port = free_port()
        overrides = {"ANDROID_ADB_SERVER_PORT": str(self.port), "ANDROID_USER_HOME": str(home / ".android"),
                     "ADB_MDNS": "0", "ADB_USB": "0"}
        self.env = dict(os.environ, HOME=str(home), **overrides)
        self._saved = {k: os.environ.get(k) for k in overrides}
        os.environ.update(overrides)
        self._proc: subprocess.Popen | None = None
        self._log = (home / "adb-server.log").open("ab")

    def start(self, timeout: float = 20.0) -> None:
        """Start a server on the port, unless adbutils already brought one back there."""
        if port_open(self.port):
            return
        self._proc = subprocess.Popen([adb_binary(), "-L", f"tcp:localhost:{self.port}", "server", "nodaemon"],
                                      env=self.env, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"adb server exited: {(self.home / 'adb-server.log').read_text()[-2000:]}")
            if port_open(self.port):
                return
            time.sleep(0.05)
        raise TimeoutError(f"adb server did not listen on {self.port}")

    def kill(self) -> None:
        """SIGKILL our server (it dies without a goodbye, as in a crash); end an auto-started one too."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None
        if port_open(self.port):
            subprocess.run([adb_binary(), "-P", str(self.port), "kill-server"], env=self.env, capture_output=True,
                           timeout=10)

    def close(self) -> None:
        self.kill()
        self._log.close()
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def adb_server(home: Path) -> Iterator[int]:
    """A private adb server (AdbServer) for the block; yields its port."""
    server = AdbServer(home)
    try:
        server.start()
        yield server.port
    finally:
        server.close()


class EmulatedPhone(NamedTuple):
    client: object  # adbutils.AdbClient bound to the private server
    serial: str  # "127.0.0.1:PORT"
    device: AdbDeviceEmulator
    adb_port: int
    server: AdbServer  # the private adb server (a test may kill and restart it)


def wait_for_state(client, serial: str, states: tuple[str, ...], timeout: float = 15.0) -> str:
    """Polls `adb devices` until `serial` is in one of `states`; returns it."""
    deadline = time.monotonic() + timeout
    seen = "absent"
    while time.monotonic() < deadline:
        listed = {d.serial: d.state for d in client.list()}
        seen = listed.get(serial, "absent")
        if seen in states:
            return seen
        time.sleep(0.05)
    raise TimeoutError(f"{serial} stayed {seen!r}, expected {states}")


@contextlib.contextmanager
def emulated_phone(workdir: Path, abi: str = "arm64-v8a", state: str = "device",
                   program_map: dict[str, str] | None = None,
                   device_class: type[AdbDeviceEmulator] | None = None) -> Iterator[EmulatedPhone]:
    """A private adb server with the emulated Pixel connected; everything is gone afterwards.

    device_class: a subclass of AdbDeviceEmulator with extra faults (tests/test_faults.py).
    """
    from adbutils import AdbClient

    device = (device_class or AdbDeviceEmulator)(workdir / "device-root", free_port(), abi=abi, state=state,
                                                 program_map=program_map)
    server = AdbServer(workdir / "adb-home")
    try:
        server.start()
        client = AdbClient(host="127.0.0.1", port=server.port, socket_timeout=10)
        serial = f"127.0.0.1:{device.port}"
        client.connect(serial, timeout=10)
        wait_for_state(client, serial, (state,))
        yield EmulatedPhone(client, serial, device, server.port, server)
    finally:
        device.close()
        server.close()
