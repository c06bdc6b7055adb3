"""The Pixel link: a resident LiteRT runner (runner/), its protocol, builds and the adb side."""
