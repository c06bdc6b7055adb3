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

from _device_helpers import RUNNER, deadline, engine_options, host_runner_files, phone  # noqa: F401
from adb_device_emulator import AdbDeviceEmulator, adb_server, emulated_phone, free_port, wait_for_state
from backend.engine import EngineError
from backend.host_engine import HostEngine
from device import adb
from device.adb import DeviceGoneError, DeviceLinkError
from device.engine import DeviceEngine, FallbackEngine
from device.session import RunnerFiles


def _image(size: int, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_runner_killed_mid_request_is_reported_then_restarted(phone, stand_in_model, host_runner_files):
    rgb = _image(448)
    with deadline(120):
        engine = DeviceEngine(stand_in_model, phone.serial, **engine_options(phone, host_runner_files))
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
        engine = DeviceEngine(stand_in_model, phone.serial, **engine_options(phone, host_runner_files))
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
        engine = DeviceEngine(stand_in_model, phone.serial, **engine_options(phone, host_runner_files))
        try:
            phone.device.unplug()
            with pytest.raises(DeviceGoneError) as err:
                engine.infer(_image(engine.input_size))
        finally:
            engine.close()
    assert phone.serial in str(err.value) and "USB cable" in str(err.value)


def test_fallback_engine_moves_to_the_host_when_the_phone_goes(phone, stand_in_model, host_runner_files):
    rgb = _image(448, 9)
    host = HostEngine(stand_in_model)
    expected = host.infer(rgb).depth
    host.close()
    with deadline(120):
        engine = FallbackEngine(stand_in_model, phone.serial, **engine_options(phone, host_runner_files))
        try:
            assert engine.on_device and "notice" not in engine.info().details
            np.testing.assert_allclose(engine.infer(rgb).depth, expected, atol=2e-3, rtol=2.0 ** -10)
            phone.device.unplug()
            depth = engine.infer(rgb).depth
            info = engine.info()
        finally:
            engine.close()
    assert not engine.on_device and info.engine == "Host LiteRT"
    assert "Pixel disconnected" in info.details["notice"] and "host CPU" in info.details["notice"]
    np.testing.assert_array_equal(depth, expected)


def test_fallback_engine_without_a_phone_says_why(tmp_path_factory, stand_in_model, host_runner_files):
    with deadline(60), adb_server(tmp_path_factory.mktemp("adb-home")) as port:
        engine = FallbackEngine(stand_in_model, adb_port=port, start_server=False, files=host_runner_files)
        try:
            notice = engine.info().details["notice"]
            result = engine.infer(_image(engine.input_size))
        finally:
            engine.close()
    assert notice.startswith("Pixel not available: No Android phone found") and "host CPU" in notice
    assert result.depth.shape == (448, 448)


def test_unauthorized_phone_says_accept_the_prompt(tmp_path_factory, stand_in_model, host_runner_files):
    with deadline(60), emulated_phone(tmp_path_factory.mktemp("phone"), state="unauthorized") as ph:
        with pytest.raises(DeviceLinkError) as err:
            DeviceEngine(stand_in_model, **engine_options(ph, host_runner_files))
        with pytest.raises(DeviceLinkError) as by_serial:
            DeviceEngine(stand_in_model, ph.serial, **engine_options(ph, host_runner_files))
    for message in (str(err.value), str(by_serial.value)):
        assert "unauthorized" in message and "accept the USB debugging prompt on the phone" in message


def test_wrong_abi_is_a_clear_error(tmp_path_factory, stand_in_model, host_runner_files):
    with deadline(60), emulated_phone(tmp_path_factory.mktemp("phone"), abi="x86_64") as ph:
        with pytest.raises(DeviceLinkError) as err:
            DeviceEngine(stand_in_model, ph.serial, **engine_options(ph, host_runner_files))
        assert ph.device.sync_bytes_received == 0  # refused before pushing anything
    assert "x86_64" in str(err.value) and "arm64-v8a" in str(err.value)


def test_several_phones_must_be_told_apart(tmp_path_factory):
    root = tmp_path_factory.mktemp("phones")
    phones = [AdbDeviceEmulator(root / f"p{i}", free_port()) for i in range(2)]
    try:
        with deadline(60), adb_server(root / "adb-home") as port:
            client = adb.adb_client(port=port, start_server=False)
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
        DeviceEngine(stand_in_model, phone.serial, **engine_options(phone, broken))
    assert "exited while starting" in str(err.value) and "boom: cannot load the model" in str(err.value)


def test_runner_that_never_listens_times_out_and_is_killed(phone, stand_in_model, tmp_path):
    silent = RunnerFiles(_script(tmp_path / RUNNER, "exec sleep 60"), ())
    with deadline(60), pytest.raises(DeviceLinkError) as err:
        DeviceEngine(stand_in_model, phone.serial, **engine_options(phone, silent, startup_timeout=1.5))
    assert "did not listen within 1.5 s" in str(err.value)
    assert phone.device.processes() == {}


def test_no_adb_server_is_an_error_not_a_hang(tmp_path, stand_in_model, host_runner_files):
    port = free_port()
    with deadline(30), pytest.raises(DeviceLinkError, match="No adb server answers"):
        DeviceEngine(stand_in_model, adb_port=port, start_server=False, files=host_runner_files)


def test_closing_after_the_phone_went_away_does_not_hang(phone, stand_in_model, host_runner_files):
    with deadline(60):
        engine = DeviceEngine(stand_in_model, phone.serial, **engine_options(phone, host_runner_files))
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
        engine = DeviceEngine(stand_in_model, phone.serial, **engine_options(phone, host_runner_files))
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
