"""The whole conformance kit against the Vulkan backend, under whatever EXO_VULKAN_TRANSFER and
EXO_VULKAN_VALIDATION say (scripts/test.sh runs it once per transfer strategy, validation on)."""

from __future__ import annotations

from typing import Any

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.testing import BackendContract


class TestVulkanContract(BackendContract):
    def make_backend(self) -> GPUBackend[Any]:
        from exo_gpu_vulkan.backend import VulkanBackend

        return VulkanBackend()
