"""Which GPU LiteRT's WebGPU accelerator got, read from Dawn's own log line.

When Dawn (the WebGPU implementation inside libLiteRtWebGpuAccelerator.so) picks an adapter it
prints one line to native stderr, e.g. (ai-edge-litert 2.3.0 with Mesa's lavapipe, measured):

    Selected adapter: llvmpipe (LLVM 15.0.6, 256 bits), arch=software, vendor=mesa,
    backend=Vulkan, adapterType=CPU / Software

`adapterType` is Dawn's wgpu::AdapterType name: "Discrete GPU", "Integrated GPU",
"CPU / Software" or "Unknown". A software adapter (llvmpipe/lavapipe, SwiftShader, WARP) runs
this network ~30x slower than XNNPACK on the same CPU, so Auto never picks one.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_SELECTED = re.compile(r"Selected adapter: (?P<name>.+?)(?:, arch=(?P<arch>[^,]*))?(?:, vendor=[^,]*)?"
                       r", backend=(?P<backend>[^,]+), adapterType=(?P<type>.+?)\s*$")
_SOFTWARE_NAMES = ("llvmpipe", "lavapipe", "swiftshader", "basic render", "warp")


@dataclass(frozen=True)
class GpuAdapter:
    """The adapter Dawn selected: its name, graphics API (Vulkan, Metal, D3D12) and type."""

    name: str
    backend: str
    adapter_type: str
    arch: str = ""

    @property
    def is_software(self) -> bool:
        """True for a CPU rasterizer: Dawn says "CPU / Software", or the name is a known one."""
        lowered = self.name.lower()
        return ("cpu" in self.adapter_type.lower() or self.arch.lower() == "software"
                or any(n in lowered for n in _SOFTWARE_NAMES))

    @property
    def label(self) -> str:
        return f"{self.name}, {self.backend}, {self.adapter_type}"


def parse_selected_adapter(lines: Iterable[str]) -> GpuAdapter | None:
    """The last "Selected adapter" line among LiteRT's native log lines, or None if there is none."""
    found = None
    for line in lines:
        match = _SELECTED.search(line)
        if match:
            found = GpuAdapter(match["name"].strip(), match["backend"].strip(), match["type"].strip(),
                               (match["arch"] or "").strip())
    return found
