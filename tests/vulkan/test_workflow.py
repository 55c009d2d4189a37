"""The plugin's main path end to end on a real Vulkan device, as exo would drive it."""

from __future__ import annotations

import asyncio
import itertools
import os

import pytest

from exo_gpu_plugins import get_registry
from exo_gpu_plugins.errors import OutOfBoundsError, OutOfMemoryError
from exo_gpu_plugins.models import DeviceType

MiB = 1 << 20


def make_backend(**kwargs: object):  # type: ignore[no-untyped-def]
    from exo_gpu_vulkan.backend import VulkanBackend

    return VulkanBackend(**kwargs)  # type: ignore[arg-type]


def test_registered_through_entry_point() -> None:
    registry = get_registry(reload=True)
    assert "vulkan" in registry.names()
    assert registry.entry("vulkan").plugin.distribution == "exo-gpu-vulkan"
    assert registry.entry("vulkan").unavailable_reason() is None


async def test_workflow_returns_exactly_the_bytes_written() -> None:
    backend = make_backend()
    await backend.initialize()
    devices = backend.list_devices()
    assert devices and devices[0].device_id == "vulkan:0"
    device = devices[0].device_id
    handle = await backend.allocate(device, 10 * MiB)
    assert await backend.copy_from_device(handle, 0, 10 * MiB) == bytes(10 * MiB)
    payload = os.urandom(5 * MiB)
    await backend.copy_to_device(payload, handle, 3 * MiB + 7)
    assert await backend.copy_from_device(handle, 3 * MiB + 7, 5 * MiB) == payload
    into = bytearray(5 * MiB)
    await backend.copy_from_device_into(handle, 3 * MiB + 7, into)
    assert into == payload
    report = await backend.get_device_memory_info(device)
    assert report.used_bytes >= 10 * MiB or report.source == "VK_EXT_memory_budget"
    assert report.total_bytes == devices[0].memory_bytes
    await backend.synchronize(device)
    await backend.deallocate(handle)
    await backend.shutdown()


async def test_device_description_is_real() -> None:
    backend = make_backend()
    await backend.initialize()
    device = backend.list_devices()[0]
    assert device.name and device.memory_bytes > 0 and device.api_version
    assert device.device_type in set(DeviceType)
    assert device.driver_version
    fresh = await backend.get_device_properties(device.device_id)
    assert fresh.memory_available is not None and fresh.memory_available <= fresh.memory_bytes
    caps = backend.capabilities(device.device_id)
    assert caps.transfer_strategy in {"mapped", "staging", "import"}
    if os.environ.get("EXO_VULKAN_TRANSFER") in {"mapped", "staging", "import"}:
        assert caps.transfer_strategy == os.environ["EXO_VULKAN_TRANSFER"]
    await backend.shutdown()


async def test_large_copies_do_not_block_the_event_loop() -> None:
    backend = make_backend()
    await backend.initialize()
    handle = await backend.allocate("vulkan:0", 64 * MiB)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(ticker())
    await backend.copy_to_device(os.urandom(64 * MiB), handle)
    task.cancel()
    assert ticks > 1  # the loop kept running while 64 MiB moved
    await backend.shutdown()


async def test_out_of_memory_then_work_goes_on() -> None:
    backend = make_backend()
    await backend.initialize()
    canary = await backend.allocate("vulkan:0", 4096)
    await backend.copy_to_device(b"\x5a" * 4096, canary)
    total = backend.list_devices()[0].memory_bytes
    with pytest.raises(OutOfMemoryError):
        await backend.allocate("vulkan:0", total * 4)
    limit = backend.capabilities("vulkan:0").max_allocation_bytes
    for size, exportable in itertools.product([total * 4, (limit or total) + 1], [False, True]):
        with pytest.raises(OutOfMemoryError, match="cannot allocate"):
            await backend.allocate("vulkan:0", size, exportable=exportable)
    with pytest.raises(OutOfBoundsError):
        await backend.copy_to_device(b"x", canary, 4096)
    assert await backend.copy_from_device(canary, 0, 4096) == b"\x5a" * 4096
    await backend.shutdown()


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="transfer strategy"):
        make_backend(strategy="teleport")
