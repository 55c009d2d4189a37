"""Faults inside the Vulkan engine (needs the engine built with the `fault-injection` feature, as
`make test` builds it): a Rust panic arrives as GPUError ("internal error"), a lost device fails
fast afterwards with DeviceLostError."""

from __future__ import annotations

import time

import pytest

from exo_gpu_plugins.errors import BackendUnavailableError, DeviceLostError, GPUError

native = pytest.importorskip("exo_gpu_vulkan._native")


@pytest.fixture
async def vulkan():  # type: ignore[no-untyped-def]
    from exo_gpu_vulkan.backend import VulkanBackend, probe

    if probe() is not None:
        pytest.skip(f"no Vulkan device: {probe()}")
    if not native.FAULT_INJECTION:
        pytest.skip("engine built without the fault-injection feature")
    backend = VulkanBackend()
    await backend.initialize()
    yield backend
    await backend.shutdown()


async def test_panic_becomes_gpu_error(vulkan) -> None:  # type: ignore[no-untyped-def]
    handle = await vulkan.allocate("vulkan:0", 4096)
    await vulkan.copy_to_device(b"kept", handle)
    with pytest.raises(GPUError, match=r"internal error") as raised:
        vulkan._engine._inject_fault("panic", 0)
    assert type(raised.value) is GPUError
    assert await vulkan.copy_from_device(handle, 0, 4) == b"kept"


async def test_lost_device_fails_fast(vulkan) -> None:  # type: ignore[no-untyped-def]
    handle = await vulkan.allocate("vulkan:0", 4096)
    vulkan._engine._inject_fault("device_lost", 0)
    for call in (
        lambda: vulkan.copy_to_device(b"x", handle),
        lambda: vulkan.copy_from_device(handle, 0, 1),
        lambda: vulkan.allocate("vulkan:0", 64),
        lambda: vulkan.synchronize("vulkan:0"),
    ):
        start = time.perf_counter()
        with pytest.raises(DeviceLostError, match="lost"):
            await call()
        assert time.perf_counter() - start < 1.0


def test_lost_device_releases_untouched_buffers(vulkan) -> None:  # type: ignore[no-untyped-def]
    """A call refused because the device is lost never reached the caller's buffer by DMA: its
    export is released (a bytearray can be resized again), not kept forever."""
    engine = vulkan._engine
    alloc = engine.allocate(0, 1 << 20)
    engine._inject_fault("device_lost", 0)
    src = bytearray(b"s" * (1 << 20))
    dst = bytearray(1 << 20)
    with pytest.raises(DeviceLostError, match="lost"):
        engine.write(alloc, 0, src)
    with pytest.raises(DeviceLostError, match="lost"):
        engine.read_into(alloc, 0, dst)
    src.extend(b"more")  # BufferError if the export were kept
    dst.extend(b"more")
    assert len(src) == len(dst) == (1 << 20) + 4


def test_hang_keeps_memory_a_dma_may_still_touch() -> None:
    """A device hung while a DMA straight from the caller's pages (import strategy) was in
    flight: the caller's bytearray stays exported (it cannot be resized: a late DMA may still
    read it), while a buffer passed to a later, fail-fast call is released."""
    import os

    from exo_gpu_vulkan.backend import probe

    if probe() is not None:
        pytest.skip(f"no Vulkan device: {probe()}")
    if not native.FAULT_INJECTION:
        pytest.skip("engine built without the fault-injection feature")
    validation = os.environ.get("EXO_VULKAN_VALIDATION") == "1"
    try:
        engine = native.Engine(validation, "import")
    except BackendUnavailableError as exc:
        pytest.skip(f"import strategy unavailable: {exc}")
    size = 32 << 20
    alloc = engine.allocate(0, size)
    src = bytearray(os.urandom(size))
    engine.write(alloc, 0, src)
    assert int(engine.stats(0)["imported_bytes"]) > 0, engine.stats(0)
    engine._inject_fault("hang", 0, timeout_ms=300)
    with pytest.raises(DeviceLostError, match="in flight"):
        engine.write(alloc, 0, src)
    with pytest.raises(BufferError):
        src.extend(b"x")  # still exported
    later = bytearray(size)
    with pytest.raises(DeviceLostError, match="lost"):
        engine.read_into(alloc, 0, later)
    later.extend(b"x")  # refused before any DMA: released
    engine.close()
