"""The Pixel engine's lifecycle without a phone: construction does no I/O, start() does it all,
and the link settings are a frozen value checked when made."""
from __future__ import annotations

import dataclasses

import pytest

from backend.engine import EngineError
from device.adb import DeviceLinkError
from device.engine import DeviceEngine
from device.session import LinkSettings, RunnerFiles
from testing import free_port


def test_construction_does_no_io_and_start_reports_what_is_wrong(tmp_path):
    missing = tmp_path / "nowhere.tflite"
    link = LinkSettings(adb_port=free_port(), start_server=False)  # nothing listens there
    engine = DeviceEngine(missing, "SERIAL1", link)  # neither the file nor adb is touched yet
    with pytest.raises(EngineError, match="not started"):
        engine.input_size
    with pytest.raises(EngineError, match="model file not found"):
        engine.start()
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.start()


def test_start_without_an_adb_server_says_how_to_start_one(stand_in_model):
    files = RunnerFiles(stand_in_model, ())  # any existing file: nothing is pushed without a server
    engine = DeviceEngine(stand_in_model, None, LinkSettings(adb_port=free_port(), start_server=False), files)
    with pytest.raises(DeviceLinkError, match="No adb server answers.*adb start-server"):
        engine.start()


@pytest.mark.parametrize("bad, message", [
    ({"want": "f8"}, "want must be"),
    ({"precision": "int8"}, "precision must be"),
    ({"accelerator": "npu"}, "accelerator must be"),
    ({"threads": 0}, "threads must be"),
    ({"remote_dir": "/sdcard/x"}, "under /data/local/tmp"),
    ({"request_timeout": 0.0}, "request_timeout must be positive"),
])
def test_link_settings_are_checked_when_made(bad, message):
    with pytest.raises(DeviceLinkError, match=message):
        LinkSettings(**bad)


def test_link_settings_are_frozen():
    link = LinkSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        link.want = "f32"  # type: ignore[misc]
    assert dataclasses.replace(link, want="f32").want == "f32" and link.want == "f16"
