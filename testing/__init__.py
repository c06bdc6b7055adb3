"""Test infrastructure shared by tests/ and benchmarks/, importable as a normal package.

- adb_emulator: an emulated Pixel behind the real adb server (what the device link talks to);
  emulated_shell: its file system and shell.
- device: link settings for the emulated phone, a hang guard, the sandbox path of a device folder.
- app: one launcher for app.py as a subprocess (tests and the soak benchmark).
- images: synthetic photos that differ per seed.

Nothing here runs in the product; it lives in the project (not under tests/) so benchmarks
import it without touching sys.path.
"""
from __future__ import annotations

import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the checkout: app.py, examples/ and requirements live here


def free_port(avoid: range = range(5555, 5586)) -> int:
    """A free loopback TCP port, never one adb scans for emulators (5555-5585)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port
