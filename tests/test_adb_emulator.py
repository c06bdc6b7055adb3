"""The emulated Pixel, checked through the REAL adb server and adbutils (no phone needed).

If the emulator spoke the transport wrongly, the real server would refuse it or these
round trips would break; the other device tests rely on what is asserted here.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import socket
import threading
import time

import pytest
from adbutils import AdbError, Network

from testing.device import deadline
from testing.adb_emulator import emulated_phone, wait_for_state


def test_listed_as_a_pixel_8a(phone):
    (info,) = phone.client.list(extended=True)
    assert info.serial == phone.serial and info.state == "device"
    assert info.tags["model"] == "Pixel_8a" and info.tags["device"] == "akita"
    features = phone.client.device(phone.serial).get_features()
    assert "shell_v2" in features and "sendrecv_v2" not in features


def _sh(dev, command: str) -> str:
    """stdout of one shell v2 command (the only shell the product, and so the emulator, speaks)."""
    return dev.shell2(command, v2=True).stdout.strip()


def test_shell_v2_reports_output_and_exit_status_and_v1_is_not_served(phone):
    dev = phone.client.device(phone.serial)
    assert _sh(dev, "getprop ro.product.cpu.abi") == "arm64-v8a"
    v2 = dev.shell2("echo out; cat /no/such/file; exit 3", v2=True)
    assert (v2.returncode, v2.stdout) == (3, "out\n")
    assert "No such file" in v2.stderr
    lists = dev.shell2("cat /nope || echo fallback && echo both", v2=True)
    assert (lists.returncode, lists.stdout) == (0, "fallback\nboth\n")
    with pytest.raises(AdbError):
        dev.shell("echo v1")  # `shell:` (v1) is refused like any service the product does not use


@pytest.mark.parametrize("value", ["a b", "x; rm -rf /", "$(reboot)", "`id`", "it's", "*", "a\nb", '"q"', "&&|>"])
def test_quoted_arguments_arrive_as_one_literal_word(phone, value):
    res = phone.client.device(phone.serial).shell2("echo " + shlex.quote(value), v2=True)
    assert (res.returncode, res.stdout) == (0, value + "\n")


@pytest.mark.parametrize("command", ["cat x | cat", "echo $HOME", "cat *.so", "(echo sub)"])
def test_unsupported_shell_syntax_is_refused_not_guessed(phone, command):
    res = phone.client.device(phone.serial).shell2(command, v2=True)
    assert res.returncode == 2 and "not supported" in res.stderr


def test_paths_cannot_leave_the_sandbox(phone, tmp_path):
    secret = phone.device.fs.root.parent / "secret.txt"
    secret.write_text("host secret")
    res = phone.client.device(phone.serial).shell2("cat /../secret.txt /data/../../secret.txt", v2=True)
    assert res.returncode == 1 and "host secret" not in res.stdout


def test_sync_push_and_stat(phone):
    dev = phone.client.device(phone.serial)
    data = os.urandom(3 * 65536 + 12345)  # several DATA chunks, packets straddle WRTE boundaries
    assert dev.sync.push(data, "/data/local/tmp/a/blob.bin", mode=0o640) == len(data)
    assert phone.device.sync_bytes_received == len(data)
    st = dev.sync.stat("/data/local/tmp/a/blob.bin")
    assert st.size == len(data) and st.mode & 0o777 == 0o640
    assert (phone.device.fs.root / "data/local/tmp/a/blob.bin").read_bytes() == data
    remote = _sh(dev, "sha256sum /data/local/tmp/a/blob.bin").split()[0]
    assert remote == hashlib.sha256(data).hexdigest()
    assert dev.sync.stat("/data/local/tmp/a/missing.bin").size == 0  # STAT of a missing file: all zero


def test_pushed_programs_run_for_real_and_background_jobs_are_tracked(phone):
    dev = phone.client.device(phone.serial)
    dev.sync.push(b"#!/bin/sh\necho \"hello $1\"\n", "/data/local/tmp/hello.sh", mode=0o755)
    dev.sync.push(b"#!/bin/sh\nexec sleep 30\n", "/data/local/tmp/sleeper.sh", mode=0o755)
    assert dev.shell2("cd /data/local/tmp && ./hello.sh 'big world'", v2=True).stdout == "hello big world\n"
    pid = int(_sh(dev, "/data/local/tmp/sleeper.sh > /data/local/tmp/s.log 2>&1 & echo $!"))
    assert phone.device.processes() == {pid: "sleeper.sh"}
    assert _sh(dev, "pidof sleeper.sh") == str(pid)
    assert dev.shell2(f"kill -0 {pid}", v2=True).returncode == 0
    assert dev.shell2(f"kill -9 {pid}", v2=True).returncode == 0
    end = time.monotonic() + 5
    while phone.device.processes() and time.monotonic() < end:
        time.sleep(0.02)
    assert phone.device.processes() == {}
    assert dev.shell2(f"kill -9 {os.getpid()}", v2=True).returncode == 1  # not a process of the phone


def test_localabstract_pumps_bytes_both_ways(phone):
    name = f"emu-echo-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen(1)

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(1 << 16):
                conn.sendall(chunk)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    dev = phone.client.device(phone.serial)
    payload = os.urandom(3 * 1024 * 1024 + 7)
    with deadline(30), dev.create_connection(Network.LOCAL_ABSTRACT, name) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        got = bytearray()
        while len(got) < len(payload):
            got += sock.recv(1 << 20)
        sender.join()
    assert bytes(got) == payload
    thread.join(5)
    server.close()
    with pytest.raises(AdbError):
        dev.create_connection(Network.LOCAL_ABSTRACT, name + "-nobody")  # refused OPEN -> CLSE


def test_unplug_makes_the_phone_unreachable_and_replug_brings_it_back(phone):
    dev = phone.client.device(phone.serial)
    with deadline(30):
        phone.device.unplug()
        state = wait_for_state(phone.client, phone.serial, ("offline", "absent"))
        with pytest.raises(AdbError):
            _sh(dev, "echo hi")
        phone.device.replug()
        wait_for_state(phone.client, phone.serial, ("device",))
    assert state in ("offline", "absent")
    assert _sh(dev, "echo hi") == "hi"


def test_unauthorized_until_the_prompt_is_accepted(tmp_path_factory):
    with deadline(40), emulated_phone(tmp_path_factory.mktemp("phone"), state="unauthorized") as ph:
        assert [d.state for d in ph.client.list()] == ["unauthorized"]
        with pytest.raises(AdbError, match="unauthorized"):
            _sh(ph.client.device(ph.serial), "echo hi")
        ph.device.set_state("device")
        wait_for_state(ph.client, ph.serial, ("device",))
        assert _sh(ph.client.device(ph.serial), "echo hi") == "hi"


def test_everything_is_cleaned_up(tmp_path_factory):
    with deadline(40), emulated_phone(tmp_path_factory.mktemp("phone")) as ph:
        dev = ph.client.device(ph.serial)
        dev.sync.push(b"#!/bin/sh\nexec sleep 30\n", "/data/local/tmp/sleeper.sh", mode=0o755)
        pid = int(_sh(dev, "/data/local/tmp/sleeper.sh & echo $!"))
        adb_port = ph.adb_port
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", adb_port)) != 0


def test_backgrounding_an_and_list_is_refused_like_a_subshell_would_be(phone):
    res = phone.client.device(phone.serial).shell2("cd /data/local/tmp && ./x.sh & echo $!", v2=True)
    assert res.returncode == 2 and "not supported" in res.stderr and res.stdout == ""
