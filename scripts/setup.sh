#!/usr/bin/env bash
# Prepare a fresh machine: system libraries, a virtual environment in .venv, Python packages.
#   scripts/setup.sh         runtime only (the demo on the host CPU)
#   scripts/setup.sh --dev   + conversion stack (torch CPU, litert-torch), test tools, Chromium
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1

apt_packages=()
# open3d loads libusb at import time; a bare Debian/Ubuntu machine lacks it.
ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' || apt_packages+=(libusb-1.0-0)
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

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$dev" = 1 ]; then
  .venv/bin/python -m pip install -q -r requirements-dev.txt
else
  .venv/bin/python -m pip install -q -r requirements.txt
fi
echo "Ready: .venv"
