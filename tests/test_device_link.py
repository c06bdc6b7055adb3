"""The Pixel link end to end through the real adb server and the emulated phone:
device choice, push-if-changed, runner start over localabstract, and inference that
matches the host engine on the same model."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from testing.device import RUNNER, deadline, emulated_link, remote_dir_on_host
from backend.host_engine import HostEngine
from device import adb
from device.adb import DeviceLinkError
from device.engine import DeviceEngine
from device.protocol import RUNNER_VERSION
from device.session import android_runner_files


def _image(size: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_only_phone_is_chosen_and_unknown_serials_are_named(phone):
    client = adb.adb_client(port=phone.adb_port, start_server=False)
    assert adb.list_devices(client) == [adb.DeviceEntry(phone.serial, "device")]
    assert adb.choose_device(client).serial == phone.serial
    assert adb.choose_device(client, phone.serial).serial == phone.serial
    with pytest.raises(DeviceLinkError, match=f"not connected. Connected: {phone.serial} \\(device\\)"):
        adb.choose_device(client, "0123456789ABCDEF")
    assert adb.check_abi(adb.choose_device(client)) == "arm64-v8a"
    assert adb.device_model(adb.choose_device(client)) == "Pixel 8a"


@pytest.mark.parametrize("serial", ["a b", "x;reboot", "$(id)", "", "s" * 200])
def test_hostile_serials_never_reach_adb(phone, serial):
    client = adb.adb_client(port=phone.adb_port, start_server=False)
    with pytest.raises(DeviceLinkError, match="not a valid device serial"):
        adb.choose_device(client, serial)


@pytest.mark.parametrize("name", ["../x", "a;b", "a b", "$(id)", "..", "x/y", "`id`"])
def test_hostile_names_are_rejected(name):
    with pytest.raises(DeviceLinkError):
        adb.validate_name(name)


@pytest.mark.parametrize("path", ["/data/local/tmp/../../system", "/sdcard/x", "/data/local/tmp/a b",
                                  "/data/local/tmp/x;rm", "/data/local/tmp", "relative/x", "/data/local/tmp/./x"])
def test_hostile_remote_paths_are_rejected(path):
    with pytest.raises(DeviceLinkError):
        adb.validate_remote_path(path)


def test_push_sends_only_what_changed(phone, tmp_path):
    client = adb.adb_client(port=phone.adb_port, start_server=False)
    chosen = adb.choose_device(client)
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(np.random.default_rng(0).bytes(200_000))
    b.write_bytes(b"version 1")
    files = {"prog": a, "data.bin": b}
    with deadline(60):
        first = adb.push_if_changed(chosen, files, executables=("prog",))
        received = phone.device.sync_bytes_received
        second = adb.push_if_changed(chosen, files, executables=("prog",))
        b.write_bytes(b"version 2, longer")
        third = adb.push_if_changed(chosen, files, executables=("prog",))
    on_phone = remote_dir_on_host(phone)
    assert sorted(first.pushed) == ["data.bin", "prog"] and first.bytes_sent == 200_000 + 9
    assert received == first.bytes_sent
    assert (second.pushed, second.bytes_sent, sorted(second.unchanged)) == ([], 0, ["data.bin", "prog"])
    assert (third.pushed, third.bytes_sent) == (["data.bin"], len(b"version 2, longer"))
    assert phone.device.sync_bytes_received == received + third.bytes_sent
    assert _sha(on_phone / "prog") == _sha(a) and _sha(on_phone / "data.bin") == _sha(b)
    assert (on_phone / "prog").stat().st_mode & 0o777 == 0o755
    with pytest.raises(DeviceLinkError):
        adb.push_if_changed(chosen, {"x;reboot": a})


def test_device_engine_matches_the_host_engine(phone, stand_in_model, host_runner_files):
    host = HostEngine(stand_in_model)
    with deadline(120):
        engine = DeviceEngine(stand_in_model, phone.serial, emulated_link(phone, want="f32"), host_runner_files).start()
        try:
            for seed in (1, 2):
                rgb = _image(engine.input_size, seed)
                expected = host.infer(rgb).depth
                result = engine.infer(rgb)
                np.testing.assert_allclose(result.depth, expected, rtol=0, atol=1e-5)
            assert set(result.timings_ms) == {"normalize", "compute", "transfer"}
            assert all(v >= 0 for v in result.timings_ms.values())
        finally:
            engine.close()
            host.close()


def test_float16_replies_are_within_half_precision(phone, stand_in_model, host_runner_files):
    host = HostEngine(stand_in_model)
    with deadline(120):
        engine = DeviceEngine(stand_in_model, phone.serial, emulated_link(phone, want="f16"), host_runner_files).start()
        try:
            rgb = _image(engine.input_size, 3)
            expected = host.infer(rgb).depth
            depth = engine.infer(rgb).depth
        finally:
            engine.close()
            host.close()
    assert depth.dtype == np.float32
    np.testing.assert_allclose(depth, expected, rtol=2.0 ** -10, atol=1e-6)
    assert np.array_equal(depth, depth.astype(np.float16).astype(np.float32))  # it really came as float16


def test_info_describes_phone_runner_and_push(phone, stand_in_model, host_runner_files):
    with deadline(120):
        engine = DeviceEngine(stand_in_model, phone.serial, emulated_link(phone), host_runner_files).start()
        try:
            info = engine.info()
            pids = list(phone.device.processes())
        finally:
            engine.close()
    assert (info.engine, info.accelerator) == ("Pixel 8a runner", "CPU")
    d = info.details
    assert (d["device"], d["serial"], d["abi"], d["runner_version"]) == ("Pixel 8a", phone.serial, "arm64-v8a",
                                                                         RUNNER_VERSION)
    assert d["live_accelerator"] == "cpu" and float(d["compile_ms"]) >= 0
    assert RUNNER in d["pushed"] and "model.tflite" in d["pushed"]
    assert info.model.sha256 == _sha(stand_in_model)
    assert len(pids) == 1 and phone.device.processes() == {}


def test_close_stops_the_runner_removes_its_log_and_keeps_cached_files(phone, stand_in_model, host_runner_files):
    on_phone = remote_dir_on_host(phone)
    with deadline(120):
        first = DeviceEngine(stand_in_model, phone.serial, emulated_link(phone), host_runner_files).start()
        socket_one = first._session.runner.socket_name
        assert any(p.name.startswith("runner-") for p in on_phone.iterdir())
        first.close()
        assert phone.device.processes() == {}
        assert not any(p.name.startswith("runner-") for p in on_phone.iterdir())
        assert {p.name for p in on_phone.iterdir()} == {RUNNER, "model.tflite", "libLiteRt.so"}
        second = DeviceEngine(stand_in_model, phone.serial, emulated_link(phone), host_runner_files).start()
        try:
            socket_two = second._session.runner.socket_name
            pushed = second.info().details["pushed"]
            second.infer(_image(second.input_size))
        finally:
            second.close()
    assert pushed.startswith("nothing")
    assert socket_one != socket_two


def test_missing_android_build_says_what_to_run(tmp_path):
    with pytest.raises(DeviceLinkError) as err:
        android_runner_files(build_dir=tmp_path / "no-build", cache_dir=tmp_path / "no-cache")
    assert "python -m device build-android" in str(err.value) and "ANDROID_NDK_HOME" in str(err.value)


def test_a_new_session_stops_a_runner_left_behind(phone, stand_in_model, host_runner_files):
    """A runner orphaned by a lost connection (cable pulled) must not outlive the next session."""
    with deadline(120):
        orphaned = DeviceEngine(stand_in_model, phone.serial, emulated_link(phone), host_runner_files).start()
        old_pid = orphaned._session.runner.pid
        orphaned._session.drop_connection()  # the host side is gone; the runner keeps waiting
        assert old_pid in phone.device.processes()
        fresh = DeviceEngine(stand_in_model, phone.serial, emulated_link(phone), host_runner_files).start()
        try:
            assert old_pid not in phone.device.processes()
            assert list(phone.device.processes()) == [fresh._session.runner.pid]
            fresh.infer(_image(fresh.input_size))
        finally:
            fresh.close()


def test_stop_then_start_again_serves_with_a_fresh_runner(phone, stand_in_model, host_runner_files):
    engine = DeviceEngine(stand_in_model, phone.serial, emulated_link(phone), host_runner_files)
    assert phone.device.processes() == {}  # constructed: nothing started yet
    with deadline(120):
        try:
            engine.start()
            (first,) = phone.device.processes()
            engine.stop()
            stopped = dict(phone.device.processes())
            engine.start()
            (second,) = phone.device.processes()
            result = engine.infer(_image(engine.input_size))
        finally:
            engine.close()
    assert stopped == {} and second != first
    assert result.depth.shape == (448, 448) and phone.device.processes() == {}
