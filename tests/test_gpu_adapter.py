"""Reading the GPU adapter LiteRT's WebGPU accelerator selected from Dawn's log line."""
from __future__ import annotations

from backend.gpu_adapter import GpuAdapter, parse_selected_adapter

# Logged here by ai-edge-litert 2.3.0 (Dawn) with Mesa 25.0.7 lavapipe:
LAVAPIPE = ("I0000 00:00:1796025988.977322    9074 environment.cc:532] Selected adapter: llvmpipe (LLVM 15.0.6, "
            "256 bits), arch=software, vendor=mesa, backend=Vulkan, adapterType=CPU / Software")


def test_the_lavapipe_line_is_a_software_adapter():
    adapter = parse_selected_adapter(["INFO: other", LAVAPIPE, "INFO: [delegate_webgpu.cc:363] Created"])
    assert adapter == GpuAdapter("llvmpipe (LLVM 15.0.6, 256 bits)", "Vulkan", "CPU / Software", "software")
    assert adapter.is_software


def test_discrete_and_integrated_gpus_are_hardware():
    # Dawn's wgpu::AdapterType names are "Discrete GPU", "Integrated GPU", "CPU / Software", "Unknown".
    discrete = parse_selected_adapter(["Selected adapter: NVIDIA GeForce RTX 3060, vendor=nvidia, backend=Vulkan, "
                                       "adapterType=Discrete GPU"])
    integrated = parse_selected_adapter(["Selected adapter: Apple M2, backend=Metal, adapterType=Integrated GPU"])
    assert discrete == GpuAdapter("NVIDIA GeForce RTX 3060", "Vulkan", "Discrete GPU")
    assert integrated == GpuAdapter("Apple M2", "Metal", "Integrated GPU")
    assert not discrete.is_software and not integrated.is_software


def test_software_names_count_even_when_the_type_is_unknown():
    swiftshader = parse_selected_adapter(["Selected adapter: SwiftShader Device (Subzero), backend=Vulkan, "
                                          "adapterType=Unknown"])
    assert swiftshader is not None and swiftshader.is_software


def test_no_line_means_no_adapter():
    assert parse_selected_adapter(["INFO: Created a WebGPU environment.", "No adapters found"]) is None
