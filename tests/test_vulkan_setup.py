"""scripts/vulkan-driver.sh: where it takes the Debian mirror from, and that it is idempotent."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "vulkan-driver.sh"


def _mirror(apt_etc: Path, codename: str = "bookworm") -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--print-mirror", codename], capture_output=True, text=True,
                          timeout=30, env={"APT_ETC": str(apt_etc), "PATH": "/usr/bin:/bin"})


@pytest.fixture
def apt_etc(tmp_path: Path) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    return tmp_path


def test_deb822_sources_give_the_main_suite_uri_and_keyring(apt_etc):
    (apt_etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n")
    proc = _mirror(apt_etc)
    assert proc.returncode == 0
    assert proc.stdout.split() == ["http://mirror.example/debian", "/usr/share/keyrings/debian-archive-keyring.gpg"]


def test_one_line_sources_with_and_without_signed_by(apt_etc):
    (apt_etc / "sources.list").write_text(
        "# deb http://old.example/debian bookworm main\n"
        "deb http://mirror.example/debian-security bookworm-security main\n"
        "deb [arch=amd64 signed-by=/etc/apt/keyrings/k.gpg] http://mirror.example/debian bookworm main\n")
    assert _mirror(apt_etc).stdout.split() == ["http://mirror.example/debian", "/etc/apt/keyrings/k.gpg"]
    (apt_etc / "sources.list").write_text("deb http://other.example/debian bookworm main contrib\n")
    assert _mirror(apt_etc).stdout.split() == ["http://other.example/debian", "-"]


def test_no_source_for_the_release_is_an_error(apt_etc):
    (apt_etc / "sources.list").write_text("deb http://mirror.example/debian trixie main\n")
    assert _mirror(apt_etc).returncode != 0


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian-family machine")
def test_a_machine_with_a_new_enough_driver_is_left_alone(apt_etc):
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "mesa-vulkan-drivers"], capture_output=True,
                             text=True).stdout
    if not version or int(version.split(".")[0].split(":")[-1]) < 23:
        pytest.skip(f"mesa-vulkan-drivers here is {version or 'absent'}")
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                          env={"APT_ETC": str(apt_etc), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    assert list((apt_etc / "sources.list.d").iterdir()) == []  # nothing added, nothing installed
