"""Allocations past 4 GiB and offsets past 2**32 (on devices with room for them: the H100, not
lavapipe's 2 GiB heap). maxMemoryAllocationSize is advice; whatever the engine accepts must work."""

from __future__ import annotations

import os

import pytest

from exo_gpu_plugins.errors import OutOfMemoryError

GiB = 1 << 30


async def test_five_gib_allocation_with_high_offsets() -> None:
    from exo_gpu_vulkan.backend import VulkanBackend

    backend = VulkanBackend()
    await backend.initialize()
    try:
        report = await backend.get_device_memory_info("vulkan:0")
        if report.available_bytes < 12 * GiB:
            pytest.skip(f"needs 12 GiB free, the device has {report.available_bytes}")
        try:
            big = await backend.allocate("vulkan:0", 5 * GiB)
        except OutOfMemoryError as exc:
            pytest.skip(f"the driver refuses single 5 GiB allocations: {exc}")
        high = 4 * GiB + 12345
        payload = os.urandom(3 << 20)
        assert await backend.copy_from_device(big, 5 * GiB - 4096, 4096) == bytes(4096)
        await backend.copy_to_device(payload, big, high)
        assert await backend.copy_from_device(big, high, len(payload)) == payload
        other = await backend.allocate("vulkan:0", 5 * GiB)
        await backend.copy_device_to_device(big, other, len(payload), high, high + 1)
        assert await backend.copy_from_device(other, high + 1, len(payload)) == payload
        await backend.copy_device_to_device(big, big, len(payload), high, 1000)
        assert await backend.copy_from_device(big, 1000, len(payload)) == payload
    finally:
        await backend.shutdown()
