"""The entry point module: tells exo-gpu-plugins about the Vulkan backend without loading Vulkan.

Importing this module imports no native code; the engine is loaded when the backend is probed or
created."""

from __future__ import annotations

from exo_gpu_plugins.hookspecs import BackendInfo, hookimpl

__all__ = ["exo_gpu_backends"]


@hookimpl
def exo_gpu_backends() -> list[BackendInfo]:
    """The Vulkan backend: preferred over host when a Vulkan device is present."""
    return [
        BackendInfo(
            name="vulkan",
            backend="exo_gpu_vulkan.backend:VulkanBackend",
            probe="exo_gpu_vulkan.backend:probe",
            priority=100,
            description="device memory through Vulkan (AMD, Intel, NVIDIA, Apple via MoltenVK)",
        )
    ]
