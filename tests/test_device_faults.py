"""Faults on the Pixel link, made for real on the emulated phone: a runner killed mid-request,
an unplugged cable, an unauthorized phone, the wrong CPU, several phones, a runner that
cannot start. Each must give a message a person can act on, and nothing may hang."""
from __future__ import annotations

import contextlib
import os
import signal
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from testing import free_port
from testing.device import RUNNER, deadline, emulated_link
from testing.adb_emulator import AdbDeviceEmulator, emulated_phone, wait_for_state
from backend.engine import EngineError
from backend.host_engine import HostEngine
from device import adb
from device.adb import DeviceGoneError, DeviceLinkError
from device.backends import Backends
from device.engine import DeviceEngine
from device.session import LinkSettings, RunnerFiles


def _image(size: int, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_runner_killed_mid_request_is_reported_then_restarted(phone, stand_in_model, host_runner_files):
    rgb = _image(448)
    with deadline(120):
        engine = DeviceEngine(stand_in_model, phone.serial, emulated_link(phone), host_runner_files).start()
        try:
            (first_pid,) = phone.device.processes()
            phone.device.kill_on_next_socket_data(RUNNER, min_bytes=4096)  # the INFER frame, not the ping
            with pytest.raises(EngineError) as err:
                engine.infer(rgb)
            assert not isinstance(err.value, DeviceGoneError)
            assert "stopped during the request" in str(err.value) and "restarted" in str(err.value)
            result = engine.infer(rgb)
            (second_pid,) = phone.device.processes()
            restarts = engine.info().details["runner_restarts"]
        finally:
            engine.close()
    assert result.depth.shape == (448, 448) and np.isfinite(result.depth).all()
    assert second_pid != first_pid and restarts == "1"


def test_runner_gone_between_requests_is_restarted_within_the_request(phone, stand_in_model, host_runner_files):
    with deadline(120):
        engine = DeviceEngine(stand_in_model, phone.serial, emulated_link(phone), host_runner_files).start()
        try:
            assert len(phone.device.kill_by_name(RUNNER)) == 1
            result = engine.infer(_image(engine.input_size))
            restarts = engine.info().details["runner_restarts"]
        finally:
            engine.close()
    assert result.depth.shape == (448, 448) and restarts == "1"
    assert phone.device.processes() == {}


def test_unplugged_phone_gives_a_clear_error(phone, stand_in_model, host_runner_files):
    with deadline(90):
        engine = DeviceEngine(stand_in_model, phone.serial, emulated_link(phone), host_runner_files).start()
        try:
            phone.device.unplug()
            with pytest.raises(DeviceGoneError) as err:
                engine.infer(_image(engine.input_size))
        finally:
            engine.close()
    assert phone.serial in str(err.value) and "USB cable" in str(err.value)


def test_backends_move_auto_requests_to_the_host_when_the_phone_goes(phone, stand_in_model, host_runner_files):
    rgb = _image(448, 9)
    host = HostEngine(stand_in_model)
    expected = host.infer(rgb).depth
    host.close()
    infer = lambda pick: pick.engine.infer(rgb).depth  # noqa: E731
    with deadline(120):
        backends = Backends(lambda: HostEngine(stand_in_model),
                            lambda: DeviceEngine(stand_in_model, phone.serial, emulated_link(phone), host_runner_files))
        try:
            on_phone, first = backends.run("auto", infer)
            phone.device.unplug()
            depth, pick = backends.run("auto", infer)
            status, serving = backends.status(), pick.engine.info().engine
        finally:
            backends.close()
    assert first.where == "device" and first.notice == ""
    np.testing.assert_allclose(on_phone, expected, atol=2e-3, rtol=2.0 ** -10)
    assert pick.where == "host" and serving == "Host LiteRT"
    assert "Pixel disconnected" in pick.notice and "host CPU" in pick.notice
    assert status["device"] is None and "Pixel disconnected" in status["device_problem"]
    np.testing.assert_array_equal(depth, expected)


def test_backends_without_a_phone_say_why(adb_server_port, stand_in_model, host_runner_files):
    with deadline(60):
        link = LinkSettings(adb_port=adb_server_port, start_server=False)
        backends = Backends(lambda: HostEngine(stand_in_model),
                            lambda: DeviceEngine(stand_in_model, None, link, host_runner_files))
        try:
            result, pick = backends.run("auto", lambda p: p.engine.infer(_image(p.engine.input_size)))
            with pytest.raises(DeviceLinkError) as device_only:
                backends.pick("device")
        finally:
            backends.close()
    assert pick.where == "host"
    assert pick.notice.startswith("Pixel not available: No Android phone found") and "host CPU" in pick.notice
    assert "No Android phone found" in str(device_only.value)
    assert result.depth.shape == (448, 448)


def test_unauthorized_phone_says_accept_the_prompt(tmp_path_factory, stand_in_model, host_runner_files):
    with deadline(60), emulated_phone(tmp_path_factory.mktemp("phone"), state="unauthorized") as ph:
        with pytest.raises(DeviceLinkError) as err:
            DeviceEngine(stand_in_model, None, emulated_link(ph), host_runner_files).start()
        with pytest.raises(DeviceLinkError) as by_serial:
            DeviceEngine(stand_in_model, ph.serial, emulated_link(ph), host_runner_files).start()
    for message in (str(err.value), str(by_serial.value)):
        assert "unauthorized" in message and "accept the USB debugging prompt on the phone" in message


def test_wrong_abi_is_a_clear_error(tmp_path_factory, stand_in_model, host_runner_files):
    with deadline(60), emulated_phone(tmp_path_factory.mktemp("phone"), abi="x86_64") as ph:
        with pytest.raises(DeviceLinkError) as err:
            DeviceEngine(stand_in_model, ph.serial, emulated_link(ph), host_runner_files).start()
        assert ph.device.sync_bytes_received == 0  # refused before pushing anything
    assert "x86_64" in str(err.value) and "arm64-v8a" in str(err.value)


def test_several_phones_must_be_told_apart(tmp_path_factory, adb_server_port):
    root = tmp_path_factory.mktemp("phones")
    phones = [AdbDeviceEmulator(root / f"p{i}", free_port()) for i in range(2)]
    try:
        with deadline(60):
            client = adb.adb_client(port=adb_server_port, start_server=False)
            serials = [f"127.0.0.1:{p.port}" for p in phones]
            for s in serials:
                client.connect(s, timeout=10)
                wait_for_state(client, s, ("device",))
            with pytest.raises(DeviceLinkError) as err:
                adb.choose_device(client)
            chosen = adb.choose_device(client, serials[1]).serial
    finally:
        for p in phones:
            p.close()
    assert "Several phones" in str(err.value) and all(f"{s} (device)" in str(err.value) for s in serials)
    assert chosen == serials[1]


def test_runner_that_exits_at_start_shows_its_log(phone, stand_in_model, tmp_path):
    broken = RunnerFiles(_script(tmp_path / RUNNER, "echo 'boom: cannot load the model' >&2; exit 3"), ())
    with deadline(60), pytest.raises(DeviceLinkError) as err:
        DeviceEngine(stand_in_model, phone.serial, emulated_link(phone), broken).start()
    assert "exited while starting" in str(err.value) and "boom: cannot load the model" in str(err.value)


def test_runner_that_never_listens_times_out_and_is_killed(phone, stand_in_model, tmp_path):
    silent = RunnerFiles(_script(tmp_path / RUNNER, "exec sleep 60"), ())
    with deadline(60), pytest.raises(DeviceLinkError) as err:
        DeviceEngine(stand_in_model, phone.serial, emulated_link(phone, startup_timeout=1.5), silent).start()
    assert "did not listen within 1.5 s" in str(err.value)
    assert phone.device.processes() == {}


def test_no_adb_server_is_an_error_not_a_hang(tmp_path, stand_in_model, host_runner_files):
    port = free_port()
    with deadline(30), pytest.raises(DeviceLinkError, match="No adb server answers"):
        DeviceEngine(stand_in_model, None, LinkSettings(adb_port=port, start_server=False), host_runner_files).start()


def test_closing_after_the_phone_went_away_does_not_hang(phone, stand_in_model, host_runner_files):
    with deadline(60):
        engine = DeviceEngine(stand_in_model, phone.serial, emulated_link(phone), host_runner_files).start()
        phone.device.unplug()
        with contextlib.suppress(EngineError):
            engine.infer(_image(engine.input_size))
        engine.close()
        with pytest.raises(EngineError, match="closed"):
            engine.infer(_image(engine.input_size))


def test_a_stuck_runner_is_replaced_within_seconds(phone, stand_in_model, host_runner_files):
    """Alive but not answering (SIGSTOP): the short health ping notices it, and the request
    is served by a fresh runner instead of waiting out the whole request timeout."""
    with deadline(60):
        engine = DeviceEngine(stand_in_model, phone.serial, emulated_link(phone), host_runner_files).start()
        try:
            stuck = engine._session.runner.pid
            os.kill(stuck, signal.SIGSTOP)
            started = time.monotonic()
            result = engine.infer(_image(engine.input_size))
            elapsed = time.monotonic() - started
            assert result.depth.shape == (engine.input_size, engine.input_size)
            assert engine._session.runner.pid != stuck
            assert stuck not in phone.device.processes()
            assert elapsed < 5.0, f"replacing a stuck runner took {elapsed:.1f} s"
        finally:
            engine.close()
