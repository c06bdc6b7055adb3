#!/usr/bin/env bash
# A Vulkan driver that LiteRT's GPU accelerator (WebGPU over Dawn) accepts, so the tests run the
# model on LiteRT's GPU path on machines without a GPU: Mesa's software driver, lavapipe.
#
# Debian bookworm's own mesa-vulkan-drivers (22.3) is refused by Dawn ("Vulkan
# shaderUniform*ArrayDynamicIndexing required"); the one in bookworm-backports (25.x) works.
# The backports suite is added with the mirror URI and keyring this machine already uses for
# Debian (read from its apt sources). Idempotent: does nothing when a new enough driver is there.
# Called by `scripts/setup.sh --dev`; needs root or sudo only when it has something to install.
set -euo pipefail

MIN_MESA=23  # first Mesa major whose lavapipe Dawn accepts (22.3 refused, 25.0 measured to work)
APT_ETC=${APT_ETC:-/etc/apt}  # tests point this at a folder of sample sources
KEEP=$APT_ETC/sources.list.d/metric3d-backports.sources

installed_version() {
  dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null | awk '$3 == "installed" {print $4}'
}

driver_ok() {
  local mesa
  mesa=$(installed_version mesa-vulkan-drivers)
  [ -n "$mesa" ] && dpkg --compare-versions "$mesa" ge "$MIN_MESA" && [ -n "$(installed_version libvulkan1)" ]
}

# "URI KEYRING" (KEYRING "-" if none) of the source for this release's main suite, read from the
# deb822 *.sources files or the one-line sources.list format.
debian_mirror() {
  local codename=$1 file hit=""
  for file in "$APT_ETC"/sources.list.d/*.sources; do
    [ -f "$file" ] && [ -z "$hit" ] || continue
    hit=$(awk -v want="$codename" '
      function flush() { if (deb && suite && uri != "") { print uri, (key == "" ? "-" : key); done = 1 }
                         deb = suite = 0; uri = key = "" }
      done { next }
      /^[[:space:]]*$/ { flush(); next }
      /^Types:/ { deb = ($0 ~ /[[:space:]]deb([[:space:]]|$)/) }
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == want) suite = 1 }
      /^Signed-By:/ { key = $2 }
      END { if (!done) flush() }' "$file")
  done
  for file in "$APT_ETC"/sources.list "$APT_ETC"/sources.list.d/*.list; do
    [ -f "$file" ] && [ -z "$hit" ] || continue
    hit=$(awk -v want="$codename" '
      $1 == "deb" && !done {
        key = "-"; i = 2
        if ($2 ~ /^\[/) {
          for (; i <= NF; i++) {
            if ($i ~ /signed-by=/) { key = $i; sub(/.*signed-by=/, "", key); sub(/\].*/, "", key) }
            if ($i ~ /\]$/) break
          }
          i++
        }
        if ($(i + 1) == want) { print $i, key; done = 1 }
      }' "$file")
  done
  [ -n "$hit" ] && echo "$hit"
}

has_suite() {
  cat "$APT_ETC"/sources.list "$APT_ETC"/sources.list.d/*.sources "$APT_ETC"/sources.list.d/*.list 2>/dev/null |
    grep -v '^[[:space:]]*#' | grep -Eq "(^|[[:space:]])$1([[:space:]]|$)"
}

[ "${1:-}" = "--print-mirror" ] && { debian_mirror "$2"; exit; }  # for tests: what would be used

if driver_ok; then
  exit 0
fi
if ! command -v apt-get >/dev/null || [ ! -r /etc/os-release ]; then
  echo "GPU tests need a Vulkan driver Dawn accepts (e.g. Mesa >= $MIN_MESA lavapipe); install one by hand." >&2
  exit 0
fi
if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
  echo "Please install, as root, Mesa >= $MIN_MESA mesa-vulkan-drivers and libvulkan1, then rerun." >&2
  exit 1
fi
. /etc/os-release
target=()
if [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
  suite=bookworm-backports
  if ! has_suite "$suite"; then
    read -r uri key < <(debian_mirror bookworm) || {
      echo "No apt source for Debian bookworm found; cannot add $suite." >&2
      exit 1
    }
    echo "Adding the $suite suite from $uri"
    {
      printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\n' "$uri" "$suite"
      [ "$key" != "-" ] && printf 'Signed-By: %s\n' "$key"
    } | $sudo tee "$KEEP" >/dev/null
  fi
  target=(-t "$suite")
fi
echo "Installing a Vulkan driver for LiteRT's GPU path: mesa-vulkan-drivers libvulkan1 ${target[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${target[@]}" mesa-vulkan-drivers libvulkan1
if ! driver_ok; then
  echo "mesa-vulkan-drivers $(installed_version mesa-vulkan-drivers) is older than $MIN_MESA: Dawn will refuse it." >&2
  exit 1
fi
