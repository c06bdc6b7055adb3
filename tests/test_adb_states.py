"""adb device states are read whole and each one tells the person what to do.

The listing format is adb's own `host:devices` reply, one "serial<TAB>state" line per
device; the states are those of adb's ConnectionState (packages/modules/adb, adb.h and
transport.cpp), "no permissions" with the reason adb appends (diagnose_usb.cpp).
"""
from __future__ import annotations

import pytest

from device.adb import DeviceEntry, parse_devices, state_problem

NO_PERMISSIONS = ("no permissions (missing udev rules? user is in the plugdev group); "
                  "see [http://developer.android.com/tools/device.html]")


def test_multi_word_states_are_kept_whole():
    listing = f"41021JEHN00123\tdevice\n0A1B2C3D\t{NO_PERMISSIONS}\nemulator-5554\toffline\n"
    assert parse_devices(listing) == [DeviceEntry("41021JEHN00123", "device"),
                                      DeviceEntry("0A1B2C3D", NO_PERMISSIONS),
                                      DeviceEntry("emulator-5554", "offline")]
    assert parse_devices("") == [] and parse_devices("garbage without a tab\n") == []


@pytest.mark.parametrize("state, words", [
    ("unauthorized", ("accept the USB debugging prompt",)),
    ("authorizing", ("accept the USB debugging prompt",)),
    ("connecting", ("wait", "adb kill-server")),
    ("offline", ("replug", "adb kill-server")),
    ("bootloader", ("fastboot reboot",)),
    ("recovery", ("Reboot system now",)),
    ("rescue", ("restart it into Android",)),
    ("sideload", ("sideload", "restart it into Android")),
    ("host", ("connect the Pixel itself",)),
    ("detached", ("adb attach",)),
    ("unknown", ("replug", "adb kill-server")),
    (NO_PERMISSIONS, ("udev rule", "plugdev", "replug", "adb kill-server")),
    ("some future state", ("'some future state'", "replug", "adb kill-server")),
])
def test_every_state_says_what_to_do(state, words):
    message = state_problem(DeviceEntry("SERIAL1", state))
    assert message and "SERIAL1" in message
    assert [w for w in words if w not in message] == []
    assert "state 'no'" not in message


def test_a_ready_phone_has_no_problem():
    assert state_problem(DeviceEntry("SERIAL1", "device")) is None
