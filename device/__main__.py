"""`python -m device build-host | build-android`: build the resident runner."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from device.build import LITERT_BINARIES_BASE, BuildError, build_android, build_host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device", description="Build the Metric3D LiteRT runner.")
    sub = parser.add_subparsers(dest="command", required=True)
    host = sub.add_parser("build-host", help="compile the host (x86-64) runner with gcc")
    host.add_argument("--force", action="store_true", help="rebuild even when the sources did not change")
    android = sub.add_parser("build-android", help="cross-compile the arm64 runner with the Android NDK")
    android.add_argument("--ndk", help="NDK folder (default: $ANDROID_NDK_HOME)")
    android.add_argument("--cache-dir", help="where the LiteRT arm64 libraries are kept")
    android.add_argument("--base-url", default=LITERT_BINARIES_BASE, help="LiteRT binaries bucket")
    args = parser.parse_args(argv)
    try:
        if args.command == "build-host":
            print(build_host(force=args.force))
        else:
            build = build_android(args.ndk, Path(args.cache_dir) if args.cache_dir else None, args.base_url)
            print(build.runner)
            for lib in build.libraries:
                print(lib)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
