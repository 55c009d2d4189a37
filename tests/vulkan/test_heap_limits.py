"""The Vulkan backend holds the device's heap on every driver, whether or not the driver does
(lavapipe grants allocations far past its heap's size: 33,715 of 256 MiB on a 2 GiB heap, before
the engine checked): allocating 256 MiB at a time ends in `OutOfMemoryError` within the heap's size
(or the driver's budget), the report's `used_bytes` follows the live allocations exactly at every
step (within the allocator's granularity where the figure is the driver's), and what was allocated
before the error is freed and can be allocated again after it. The allocations are not zeroed, so
an 80 GB device takes seconds, not minutes."""

from __future__ import annotations

from exo_gpu_vulkan.backend import VulkanBackend

from exo_gpu_plugins.errors import OutOfMemoryError
from exo_gpu_plugins.models import MemoryHandle, MemoryReport

STEP = 256 << 20
DEVICE = "vulkan:0"


async def report(backend: VulkanBackend) -> MemoryReport:
    return await backend.get_device_memory_info(DEVICE)


async def fill(
    backends: list[VulkanBackend],
    before: MemoryReport,
    slack: int,
) -> tuple[list[tuple[VulkanBackend, MemoryHandle]], OutOfMemoryError]:
    """Allocate STEP after STEP, taking the backends in turn, until one says out of memory;
    checks the report after each step."""
    held: list[tuple[VulkanBackend, MemoryHandle]] = []
    most = before.total_bytes // STEP  # more than this many is past the heap's size
    while True:
        backend = backends[len(held) % len(backends)]
        try:
            handle = await backend.allocate(DEVICE, STEP, zeroed=False)
        except OutOfMemoryError as exc:
            return held, exc
        held.append((backend, handle))
        live = len(held) * STEP
        assert len(held) <= most, f"{len(held)} x 256 MiB granted on a {before.total_bytes}-byte heap"
        for each in backends:
            now = await report(each)
            assert abs(now.used_bytes - before.used_bytes - live) <= slack, (
                f"after {len(held)} allocations: used {now.used_bytes}, "
                f"expected {before.used_bytes} + {live}"
            )


async def check_heap_held(backends: list[VulkanBackend]) -> None:
    first = backends[0]
    capabilities = first.capabilities(DEVICE)
    # The driver's own figure moves in its allocation granularity; ours is exact.
    slack = capabilities.allocation_granularity_bytes if capabilities.memory_budget else 0
    before = await report(first)
    held, error = await fill(backends, before, slack)
    live = len(held) * STEP
    assert DEVICE in str(error)
    assert before.used_bytes + live <= before.total_bytes, "stopped past the heap's size"
    assert live <= before.available_bytes + slack, "stopped past what the report said was available"
    assert live + STEP > before.available_bytes - slack, (
        f"refused with {live} bytes live, {before.available_bytes} available before"
    )
    count = len(held)
    for backend, handle in held:
        await backend.deallocate(handle)
    after = await report(first)
    assert abs(after.used_bytes - before.used_bytes) <= slack
    # Reusable: the same allocations again, and the backends still copy.
    again: list[tuple[VulkanBackend, MemoryHandle]] = []
    for number in range(count):
        backend = backends[number % len(backends)]
        again.append((backend, await backend.allocate(DEVICE, STEP, zeroed=False)))
    backend, handle = again[-1]
    await backend.copy_to_device(b"still usable", handle, STEP - 12)
    assert await backend.copy_from_device(handle, STEP - 12, 12) == b"still usable"
    for backend, handle in again:
        await backend.deallocate(handle)
    assert abs((await report(first)).used_bytes - before.used_bytes) <= slack


async def test_allocating_until_out_of_memory() -> None:
    backend = VulkanBackend()
    await backend.initialize()
    try:
        await check_heap_held([backend])
    finally:
        await backend.shutdown()


async def test_two_backends_share_one_heap() -> None:
    """Backends with and without validation open separate Vulkan devices of one physical device:
    the heap is still held for the process as a whole, and each reports what the process holds."""
    backends = [VulkanBackend(), VulkanBackend(validation=False)]
    for backend in backends:
        await backend.initialize()
    try:
        await check_heap_held(backends)
    finally:
        for backend in backends:
            await backend.shutdown()
