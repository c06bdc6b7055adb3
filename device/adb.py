"""The adb side of the Pixel link: find the phone, push files, start and reach the runner.

Everything goes through adbutils and the real adb server. Why it looks like this:
- Errors name the fix (scrcpy style): unauthorized -> accept the USB debugging prompt,
  several phones -> list them with their states and ask for a serial.
- Nothing from the user reaches a shell unchecked: serials, paths and names are
  validated against strict patterns AND every shell argument is shlex-quoted.
- Every blocking call has a timeout (the AdbClient socket timeout bounds every adb
  exchange; waits have deadlines), so an unplugged phone gives an error, not a hang.
- Files are pushed only when their sha256 differs from the copy on the phone: the
  model is ~100 MB and the runner is resident, so a restart costs seconds, not minutes.
"""
from __future__ import annotations

import io
import re
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Mapping, Sequence

from adbutils import AdbClient, AdbDevice, AdbError, Network

from backend.digest import file_sha256
from backend.engine import EngineError

DEFAULT_ADB_PORT = 5037
REMOTE_DIR = "/data/local/tmp/metric3d"
EXPECTED_ABI = "arm64-v8a"
ADB_TIMEOUT_S = 20.0
SERVER_START_TIMEOUT_S = 20.0
_SERIAL = re.compile(r"^[A-Za-z0-9._:\-\[\]%]{1,128}$")
_NAME = re.compile(r"^[A-Za-z0-9._\-]{1,96}$")
_REMOTE_PATH = re.compile(r"^/data/local/tmp(/[A-Za-z0-9._\-]+)+$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


class DeviceLinkError(EngineError):
    """The phone cannot be used; the message says what the person should do."""


class DeviceGoneError(DeviceLinkError):
    """The phone was there and is not any more (unplugged, adb restarted, went offline)."""


def validate_serial(serial: str) -> str:
    if not isinstance(serial, str) or not _SERIAL.match(serial):
        raise DeviceLinkError(f"{serial!r} is not a valid device serial (see `adb devices`)")
    return serial


def validate_name(name: str) -> str:
    """A file or socket name: letters, digits, '.', '_' and '-' only."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise DeviceLinkError(f"{name!r} is not an allowed file or socket name (use letters, digits, . _ -)")
    return name


def validate_remote_path(path: str) -> str:
    """A path under /data/local/tmp, without '..', made of safe characters."""
    if not isinstance(path, str) or not _REMOTE_PATH.match(path) or "/../" in path + "/" or "/./" in path + "/":
        raise DeviceLinkError(f"{path!r} is not an allowed path on the phone (it must be under /data/local/tmp)")
    return path


def quoted(*args: str) -> str:
    """A shell command line in which every argument is one quoted word."""
    return " ".join(shlex.quote(a) for a in args)


# ----------------------------------------------------------------------------- server and devices


def _server_listening(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def adb_client(host: str = "127.0.0.1", port: int = DEFAULT_ADB_PORT, start_server: bool = True,
               timeout: float = ADB_TIMEOUT_S) -> AdbClient:
    """An AdbClient whose every exchange times out; starts the adb server only when asked to."""
    if not _server_listening(host, port):
        if not start_server or host not in ("127.0.0.1", "localhost"):
            raise DeviceLinkError(f"No adb server answers on {host}:{port}. Start it with `adb start-server`.")
        from adbutils._utils import adb_path
        try:
            subprocess.run([adb_path(), "-P", str(port), "start-server"], capture_output=True,
                           timeout=SERVER_START_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DeviceLinkError(f"Could not start the adb server: {exc}") from None
        if not _server_listening(host, port):
            raise DeviceLinkError(f"The adb server did not start on {host}:{port}; run `adb start-server` "
                                  "and look at its message.")
    return AdbClient(host=host, port=port, socket_timeout=timeout)


@dataclass(frozen=True)
class DeviceEntry:
    serial: str
    state: str  # the whole state adb printed: "device", "unauthorized", "no permissions (...)", ...


def parse_devices(listing: str) -> list[DeviceEntry]:
    """The adb server's `host:devices` reply -> entries, one per "serial<TAB>state" line.

    The state is everything after the tab: adb prints some states as several words
    ("no permissions (missing udev rules? user is in the plugdev group); see [...]"), which a
    whitespace split would cut to "no".
    """
    entries = []
    for line in listing.splitlines():
        serial, tab, state = line.partition("\t")
        if tab and serial.strip():
            entries.append(DeviceEntry(serial.strip(), state.strip()))
    return entries


def list_devices(client: AdbClient) -> list[DeviceEntry]:
    try:
        with client.make_connection() as conn:
            conn.send_command("host:devices")
            conn.check_okay()
            return parse_devices(conn.read_string_block())
    except (AdbError, OSError) as exc:
        raise DeviceLinkError(f"adb could not list devices: {exc}") from None


def _describe(entries: Sequence[DeviceEntry]) -> str:
    return ", ".join(f"{e.serial} ({e.state})" for e in entries) or "none"


_REPLUG = "unplug and replug the USB cable; if that does not help, run `adb kill-server` and try again"
# What to do for every state adb's transport can report (packages/modules/adb, ConnectionState).
_STATE_ADVICE = {
    "unauthorized": "is unauthorized: unlock it and accept the USB debugging prompt on the phone (tick "
                    "\"Always allow from this computer\"), then try again. No prompt? Revoke USB debugging "
                    "authorizations in Developer options and replug",
    "authorizing": "is still being authorized: unlock it and accept the USB debugging prompt, then try again",
    "connecting": "is still connecting: wait a few seconds and try again; if it stays, " + _REPLUG,
    "offline": f"is offline: {_REPLUG} (or run `adb reconnect`), then try again",
    "bootloader": "is in the bootloader (fastboot): restart it into Android (`fastboot reboot`) and try again",
    "recovery": "is in recovery mode: restart it into Android (\"Reboot system now\") and try again",
    "rescue": "is in rescue mode: restart it into Android and try again",
    "sideload": "is in sideload mode: finish or cancel the sideload, restart it into Android and try again",
    "host": "is reported as an adb host, not a phone: connect the Pixel itself by USB",
    "detached": "is detached from adb: run `adb attach` (or replug the USB cable) and try again",
    "unknown": f"is in an unknown state: {_REPLUG}",
}


def state_problem(entry: DeviceEntry) -> str | None:
    """None for a phone ready for USB debugging, else what is wrong and what the person should do."""
    state = entry.state
    if state == "device":
        return None
    if state.startswith("no permissions"):
        return (f"The phone {entry.serial} is visible but this user may not open it (adb says: {state}). "
                "On Linux add a udev rule for the phone (e.g. the android-sdk-platform-tools-common package) "
                "and add yourself to the plugdev group (`sudo usermod -aG plugdev $USER`, then log in again), "
                "replug the USB cable and run `adb kill-server`, then try again.")
    advice = _STATE_ADVICE.get(state)
    if advice is None:
        return f"The phone {entry.serial} is in state '{state}', not ready for USB debugging: {_REPLUG}."
    return f"The phone {entry.serial} {advice}."


@dataclass(frozen=True)
class Phone:
    """A chosen phone and the adb client that reaches it."""

    client: AdbClient
    device: AdbDevice

    @property
    def serial(self) -> str:
        return self.device.serial


def choose_device(client: AdbClient, serial: str | None = None) -> Phone:
    """The requested phone, or the only one; otherwise an error that says what to do."""
    entries = list_devices(client)
    if serial is not None:
        validate_serial(serial)
        match = [e for e in entries if e.serial == serial]
        if not match:
            raise DeviceLinkError(f"The phone {serial} is not connected. Connected: {_describe(entries)}.")
        problem = state_problem(match[0])
        if problem:
            raise DeviceLinkError(problem)
        return Phone(client, client.device(serial))
    ready = [e for e in entries if e.state == "device"]
    if len(ready) == 1:
        return Phone(client, client.device(ready[0].serial))
    if len(ready) > 1:
        raise DeviceLinkError(f"Several phones are connected: {_describe(entries)}. Choose one by its serial.")
    if len(entries) == 1:
        raise DeviceLinkError(state_problem(entries[0]) or "No phone is ready.")
    if entries:
        raise DeviceLinkError(f"No phone is ready for USB debugging: {_describe(entries)}. "
                              "Accept the USB debugging prompt on the phone, or replug it.")
    raise DeviceLinkError("No Android phone found. Connect the Pixel by USB, enable USB debugging "
                          "(Settings > System > Developer options) and check with `adb devices`.")


def device_state(client: AdbClient, serial: str) -> str:
    """The phone's state as the adb server sees it now ("absent" when not listed)."""
    try:
        return {e.serial: e.state for e in list_devices(client)}.get(serial, "absent")
    except DeviceLinkError:
        return "absent"


# ----------------------------------------------------------------------------- shell


@dataclass(frozen=True)
class ShellResult:
    code: int
    stdout: str
    stderr: str


def run_shell(phone: Phone, command: str, timeout: float = ADB_TIMEOUT_S) -> ShellResult:
    """One shell command with its exit status (shell v2 where the phone has it)."""
    try:
        res = phone.device.shell2(command, timeout=timeout, v2=True)
    except AdbError as exc:
        raise _link_error(phone, f"adb shell failed ({exc})") from None
    except (OSError, EOFError) as exc:
        raise _link_error(phone, f"the adb connection broke ({exc})") from None
    return ShellResult(res.returncode, res.stdout, res.stderr)


def _link_error(phone: Phone, what: str) -> DeviceLinkError:
    state = device_state(phone.client, phone.serial)
    if state != "device":
        return DeviceGoneError(f"The phone {phone.serial} is not reachable any more ({state}): {what}. "
                               "Check the USB cable.")
    return DeviceLinkError(f"{what} on {phone.serial}")


def check_abi(phone: Phone, expected: str = EXPECTED_ABI, timeout: float = ADB_TIMEOUT_S) -> str:
    abi = run_shell(phone, "getprop ro.product.cpu.abi", timeout).stdout.strip()
    if abi != expected:
        raise DeviceLinkError(f"The phone {phone.serial} has CPU ABI '{abi or 'unknown'}', but the runner is "
                              f"built for {expected} (a 64-bit ARM phone such as the Pixel 8a).")
    return abi


def device_model(phone: Phone, timeout: float = ADB_TIMEOUT_S) -> str:
    return run_shell(phone, "getprop ro.product.model", timeout).stdout.strip() or "Android phone"


# ----------------------------------------------------------------------------- push if changed


def remote_sha256(phone: Phone, paths: Sequence[str], timeout: float = ADB_TIMEOUT_S) -> dict[str, str]:
    """sha256 of files on the phone; missing files are simply absent from the result."""
    for p in paths:
        validate_remote_path(p)
    out = run_shell(phone, quoted("sha256sum", *paths), timeout).stdout
    found: dict[str, str] = {}
    for line in out.splitlines():
        digest, _, name = line.partition("  ")
        if _HEX.match(digest) and name in paths:
            found[name] = digest
    return found


class _CountingReader:
    """A file wrapper that counts what adbutils reads from it (push has no progress hook)."""

    def __init__(self, f: BinaryIO):
        self._f, self.count = f, 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.count += len(data)
        return data

    def close(self) -> None:
        self._f.close()


@dataclass
class PushReport:
    pushed: list[str] = field(default_factory=list)  # remote names that were sent
    unchanged: list[str] = field(default_factory=list)  # remote names already up to date
    bytes_sent: int = 0
    seconds: float = 0.0


def push_if_changed(phone: Phone, files: Mapping[str, Path], remote_dir: str = REMOTE_DIR,
                    executables: Sequence[str] = (), timeout: float = ADB_TIMEOUT_S) -> PushReport:
    """Push `files` ({remote name: local path}) into remote_dir, skipping those already identical."""
    validate_remote_path(remote_dir)
    started = time.perf_counter()
    report = PushReport()
    targets = {validate_name(name): Path(local) for name, local in files.items()}
    for name, local in targets.items():
        if not local.is_file():
            raise DeviceLinkError(f"{local} does not exist, so it cannot be pushed to the phone")
    mk = run_shell(phone, quoted("mkdir", "-p", remote_dir), timeout)
    if mk.code != 0:
        raise DeviceLinkError(f"Could not create {remote_dir} on the phone: {mk.stderr.strip() or mk.stdout.strip()}")
    remote = {name: f"{remote_dir}/{name}" for name in targets}
    on_phone = remote_sha256(phone, list(remote.values()), timeout)
    for name, local in targets.items():
        if on_phone.get(remote[name]) == file_sha256(local):
            report.unchanged.append(name)
            continue
        mode = 0o755 if name in executables else 0o644
        reader = _CountingReader(open(local, "rb"))
        try:
            phone.device.sync.push(reader, remote[name], mode=mode)
        except AdbError as exc:
            raise _link_error(phone, f"pushing {local.name} failed ({exc})") from None
        except (OSError, EOFError) as exc:
            raise _link_error(phone, f"the connection broke while pushing {local.name} ({exc})") from None
        finally:
            reader.close()
        report.pushed.append(name)
        report.bytes_sent += reader.count
    if report.pushed:
        check = remote_sha256(phone, [remote[n] for n in report.pushed], timeout)
        bad = [n for n in report.pushed if check.get(remote[n]) != file_sha256(targets[n])]
        if bad:
            raise DeviceLinkError(f"The copy on the phone differs after pushing {', '.join(bad)} (storage full?)")
    report.seconds = time.perf_counter() - started
    return report


def push_secret(phone: Phone, data: bytes, remote_path: str) -> None:
    """Write `data` to a new file on the phone readable only by the shell user (mode 0600).

    This is how the runner gets its session token: over the sync protocol, never on a shell
    command line (which other processes on the phone can read while it runs).
    """
    validate_remote_path(remote_path)
    try:
        phone.device.sync.push(io.BytesIO(data), remote_path, mode=0o600)
    except AdbError as exc:
        raise _link_error(phone, f"writing {remote_path} failed ({exc})") from None
    except (OSError, EOFError) as exc:
        raise _link_error(phone, f"the connection broke while writing {remote_path} ({exc})") from None


# ----------------------------------------------------------------------------- the runner process


@dataclass(frozen=True)
class StartedRunner:
    pid: int
    socket_name: str
    log_path: str


def start_runner(phone: Phone, remote_dir: str, runner_name: str, args: Sequence[str], socket_name: str,
                 log_name: str, timeout: float = ADB_TIMEOUT_S) -> StartedRunner:
    """Start the runner detached (setsid + nohup, logs to a file) and return its pid."""
    validate_remote_path(remote_dir)
    validate_name(runner_name)
    validate_name(socket_name)
    log_path = f"{remote_dir}/{validate_name(log_name)}"
    # `&` must background ONE simple command so that $! is the runner itself (setsid and
    # nohup exec it), not a subshell running an and-or list.
    command = (f"cd {quoted(remote_dir)} || exit 1; LD_LIBRARY_PATH={quoted(remote_dir)} "
               f"setsid nohup {quoted('./' + runner_name, *args)} > {quoted(log_path)} 2>&1 < /dev/null & echo $!")
    res = run_shell(phone, command, timeout)
    pid_text = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    if res.code != 0 or not pid_text.isdigit():
        raise DeviceLinkError(f"Could not start the runner on {phone.serial}: "
                              f"{(res.stderr or res.stdout).strip() or 'no process id'}")
    return StartedRunner(int(pid_text), socket_name, log_path)


def kill_stale_runners(phone: Phone, runner_name: str, timeout: float = ADB_TIMEOUT_S) -> list[int]:
    """Kill runners an earlier session left behind (e.g. the cable was pulled mid-session).

    Such a runner survives the lost connection and waits for a client that never comes, holding
    the GPU and memory; the app runs one runner per phone, so any other one is stale.
    """
    found = run_shell(phone, quoted("pidof", validate_name(runner_name)), timeout)
    pids = [int(word) for word in found.stdout.split() if word.isdigit()]
    if pids:
        run_shell(phone, quoted("kill", "-9", *map(str, pids)), timeout)
    return pids


def runner_alive(phone: Phone, pid: int, timeout: float = ADB_TIMEOUT_S) -> bool:
    return run_shell(phone, quoted("kill", "-0", str(int(pid))), timeout).code == 0


def read_log(phone: Phone, log_path: str, lines: int = 25, timeout: float = ADB_TIMEOUT_S) -> str:
    validate_remote_path(log_path)
    text = run_shell(phone, quoted("cat", log_path), timeout).stdout
    return "\n".join(text.splitlines()[-lines:])


def connect_abstract(phone: Phone, name: str) -> socket.socket:
    """A socket straight to the phone's abstract unix socket `name` (no port forward to clean up)."""
    try:
        return phone.device.create_connection(Network.LOCAL_ABSTRACT, validate_name(name))
    except AdbError as exc:
        raise _link_error(phone, f"cannot connect to localabstract:{name} ({exc})") from None
    except OSError as exc:
        raise _link_error(phone, f"cannot connect to localabstract:{name} ({exc})") from None


def wait_for_runner(phone: Phone, runner: StartedRunner, deadline_s: float,
                    poll_s: float = 0.1) -> socket.socket:
    """Poll-connect until the runner listens; fail early with its log when it exits."""
    deadline = time.monotonic() + deadline_s
    last_alive_check = 0.0
    while True:
        try:
            return connect_abstract(phone, runner.socket_name)
        except DeviceGoneError:
            raise
        except DeviceLinkError as exc:
            failure = exc
        now = time.monotonic()
        if now - last_alive_check > 0.5:
            last_alive_check = now
            if not runner_alive(phone, runner.pid):
                raise DeviceLinkError("The runner exited while starting on the phone. Its log:\n"
                                      + (read_log(phone, runner.log_path) or "(empty)"))
        if now >= deadline:
            raise DeviceLinkError(f"The runner did not listen within {deadline_s:g} s ({failure}). Its log:\n"
                                  + (read_log(phone, runner.log_path) or "(empty)"))
        time.sleep(poll_s)


def stop_runner(phone: Phone, runner: StartedRunner, timeout: float = 5.0) -> None:
    """Kill the runner (if it is still there) and remove its session log; never raises."""
    try:
        run_shell(phone, f"{quoted('kill', '-9', str(int(runner.pid)))} 2>/dev/null; "
                          f"{quoted('rm', '-f', runner.log_path)}", timeout)
    except DeviceLinkError:
        pass
