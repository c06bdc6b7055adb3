#!/usr/bin/env bash
# Prepare a fresh machine: system libraries, a virtual environment in .venv, Python packages.
#   scripts/setup.sh         runtime only (the demo on the host CPU)
#   scripts/setup.sh --dev   + conversion stack (torch CPU, litert-torch), test tools, Chromium
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1

python=${PYTHON:-python3}
apt_packages=()
# Debian/Ubuntu split venv's pip bootstrap (ensurepip) into python3-venv; without it
# `python3 -m venv` leaves a .venv with no pip in it.
"$python" -c "import ensurepip" 2>/dev/null || apt_packages+=(python3-venv)
# open3d loads libusb at import time; a bare Debian/Ubuntu machine lacks it.
ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' || apt_packages+=(libusb-1.0-0)
# exiftool reads maker-note focal data (Olympus, older Canon, Sony); the app works without it.
command -v exiftool >/dev/null || apt_packages+=(libimage-exiftool-perl)
if [ "$dev" = 1 ]; then
  command -v chromium >/dev/null || apt_packages+=(chromium)   # browser tests (Playwright drives it)
  command -v gcc >/dev/null || apt_packages+=(gcc libc6-dev)   # host build of the device runner
fi
if [ "${#apt_packages[@]}" -gt 0 ]; then
  echo "Installing system packages: ${apt_packages[*]}"
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
    echo "Please install these system packages, then rerun: ${apt_packages[*]}" >&2; exit 1
  fi
  $sudo apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt_packages[@]}"
fi
[ "$dev" = 1 ] && scripts/vulkan-driver.sh

# A .venv without pip (made before python3-venv was installed) is made again.
if [ -x .venv/bin/python ] && ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  echo "Recreating .venv: it has no pip (it was made without python3-venv)"
  rm -rf .venv
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$dev" = 1 ]; then
  .venv/bin/python -m pip install -q -r requirements-dev.txt
else
  .venv/bin/python -m pip install -q -r requirements.txt
fi
# The project itself (pyproject.toml), editable: imports and the metric3d-demo command point here.
.venv/bin/python -m pip install -q --no-deps -e .
echo "Ready: .venv"
