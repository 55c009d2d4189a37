"""Several devices at once and copies between them (the engine's cross-device pipeline).

With one device (lavapipe in CI) the engine's test hook `_force_cross_device(path, True)` sends
copies between two allocations of that device through the cross-device pipeline, so every path
is checked byte for byte here, with validation when EXO_VULKAN_VALIDATION=1. With two or more
devices (the GPU machine) the real pairs are checked too, and a 1 GiB copy is timed.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from exo_gpu_plugins.errors import OutOfBoundsError
from exo_gpu_plugins.timing import gbps, median_seconds_async

MiB = 1 << 20
PATHS = ("host-import", "host-staging")


def make_backend() -> Any:
    from exo_gpu_vulkan.backend import VulkanBackend

    return VulkanBackend()


def pattern(seed: int, size: int) -> bytes:
    block = bytes((i * 131 + seed * 17 + (i >> 8)) & 0xFF for i in range(4099))
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture
async def backend() -> AsyncIterator[Any]:
    b = make_backend()
    await b.initialize()
    yield b
    await b.shutdown()


def devices_of(backend: Any) -> list[str]:
    return [d.device_id for d in backend.list_devices()]


async def check_copies(backend: Any, first: str, second: str, size: int) -> None:
    """Copies first -> second and back at offsets and odd sizes: every byte lands, no other
    byte changes, the source is untouched."""
    a_data, b_data = pattern(1, size), pattern(2, size)
    a = await backend.allocate(first, size)
    b = await backend.allocate(second, size)
    cases = [
        (size, 0, 0),
        (1, 1, 3),
        (3000, 7, 1001),
        (size - 5, 5, 0),
        (size - 4099, 3, 4096),
        (4 * MiB + 1, 4095, 1),
    ]
    for n, src_off, dst_off in cases:
        for src, dst, src_data, dst_data in ((a, b, a_data, b_data), (b, a, b_data, a_data)):
            await backend.copy_to_device(src_data, src)
            await backend.copy_to_device(dst_data, dst)
            await backend.copy_device_to_device(src, dst, n, src_off, dst_off)
            model = bytearray(dst_data)
            model[dst_off : dst_off + n] = src_data[src_off : src_off + n]
            got = await backend.copy_from_device(dst, 0, size)
            assert got == model, f"{n} bytes {src_off} -> {dst_off} ({src.device_id} -> {dst.device_id})"
            assert await backend.copy_from_device(src, 0, size) == src_data
    await backend.deallocate(a)
    await backend.deallocate(b)


async def check_concurrent(backend: Any, first: str, second: str, size: int) -> None:
    """Copies in both directions at once (and host writes beside them) all finish, exact."""

    async def one(k: int, src_dev: str, dst_dev: str) -> None:
        data = pattern(10 + k, size)
        src = await backend.allocate(src_dev, size)
        dst = await backend.allocate(dst_dev, size)
        for _ in range(3):
            await backend.copy_to_device(data, src)
            await backend.copy_device_to_device(src, dst, size)
            assert await backend.copy_from_device(dst, 0, size) == data
        await backend.deallocate(src)
        await backend.deallocate(dst)

    await asyncio.wait_for(
        asyncio.gather(*(one(k, *((first, second) if k % 2 else (second, first))) for k in range(6))),
        timeout=300,
    )


@pytest.mark.parametrize("path", PATHS)
async def test_forced_pipeline_on_one_device(backend: Any, path: str) -> None:
    device = devices_of(backend)[0]
    engine = backend._engine
    engine._force_cross_device(path, True)
    can_import = backend._infos[0]["external_memory_host"]
    expected = "host-staging" if path == "host-import" and not can_import else path
    assert backend.engine_stats(device)["cross_device_path"] == expected
    # 6 slots of 16 MiB by default: 100 MiB wraps the ring.
    await check_copies(backend, device, device, 100 * MiB + 3)
    await check_concurrent(backend, device, device, 9 * MiB + 1)
    stats = backend.engine_stats(device)
    assert stats["cross_device_path"] == expected
    assert stats["cross_device_bytes"] >= 2 * (100 * MiB + 3)
    assert stats["import_refused"] == 0
    assert backend.capabilities(device).peer_to_peer is (expected == "p2p")


async def test_forced_pipeline_errors_write_nothing(backend: Any) -> None:
    device = devices_of(backend)[0]
    backend._engine._force_cross_device("host-import", True)

    a = await backend.allocate(device, 4096)
    b = await backend.allocate(device, 4096)
    await backend.copy_to_device(b"x" * 4096, b)
    with pytest.raises(OutOfBoundsError):
        await backend.copy_device_to_device(a, b, 4096, 1, 0)
    with pytest.raises(OutOfBoundsError):
        await backend.copy_device_to_device(a, b, 4000, 0, 100)
    assert await backend.copy_from_device(b, 0, 4096) == b"x" * 4096
    # Within one allocation a copy stays a memmove (never through the pipeline).
    await backend.copy_to_device(pattern(3, 4096), a)
    await backend.copy_device_to_device(a, a, 4000, 0, 96)
    model = bytearray(pattern(3, 4096))
    model[96:4096] = pattern(3, 4096)[:4000]
    assert await backend.copy_from_device(a, 0, 4096) == model


def test_tunable_forces_pipeline_in_a_fresh_process() -> None:
    """EXO_VULKAN_TUNE=xsame=1,xpath=... sets the same switch for a whole process."""
    # A fresh interpreter (the tunable is read at start-up), so asyncio.run in it.
    script = (
        "import asyncio\n"
        "from exo_gpu_vulkan.backend import VulkanBackend\n"
        "async def main():\n"
        "    b = VulkanBackend(); await b.initialize()\n"
        "    d = b.list_devices()[0].device_id\n"
        "    x = await b.allocate(d, 3 << 20); y = await b.allocate(d, 3 << 20)\n"
        "    data = bytes(range(256)) * (3 << 12)\n"
        "    await b.copy_to_device(data, x)\n"
        "    await b.copy_device_to_device(x, y, (3 << 20) - 1, 1, 0)\n"
        "    assert await b.copy_from_device(y, 0, (3 << 20) - 1) == data[1:]\n"
        "    s = b.engine_stats(d)\n"
        "    print(s['cross_device_path'], s['cross_device_bytes'])\n"
        "    await b.shutdown()\n"
        "asyncio.run(main())\n"
    )
    env = dict(os.environ, EXO_VULKAN_TUNE="xsame=1,xpath=staging,xslot=1m,xslots=2")
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["host-staging", str((3 << 20) - 1)]


async def test_every_device_usable_at_once(backend: Any) -> None:
    """Each listed device has its own queues and allocator: work on all of them at once."""
    ids = devices_of(backend)
    for index, device in enumerate(ids):
        info = backend._infos[index]
        assert index in info["device_group"], info["device_group"]
        assert backend.engine_stats(device)["cross_device_path"] in {
            "p2p",
            "host-import",
            "host-staging",
        }

    async def on(device: str, seed: int) -> None:
        size = 8 * MiB + 5
        data = pattern(seed, size)
        handle = await backend.allocate(device, size)
        for _ in range(3):
            await backend.copy_to_device(data, handle)
            assert await backend.copy_from_device(handle, 0, size) == data
        await backend.synchronize(device)
        await backend.deallocate(handle)

    await asyncio.gather(*(on(d, i) for i, d in enumerate(ids)))
    for device in ids:
        assert backend.engine_stats(device)["device_created"] == 1


async def test_across_real_devices(backend: Any) -> None:
    ids = devices_of(backend)
    if len(ids) < 2:
        pytest.skip("one Vulkan device; the forced-pipeline tests cover the copy path")
    first, second = ids[0], ids[1]
    path = backend.engine_stats(first)["cross_device_path"]
    await check_copies(backend, first, second, 100 * MiB + 3)
    await check_concurrent(backend, first, second, 64 * MiB + 1)
    for forced in PATHS:
        backend._engine._force_cross_device(forced, False)
        await check_copies(backend, first, second, 40 * MiB + 7)
    backend._engine._force_cross_device("auto", False)
    assert backend.engine_stats(second)["cross_device_bytes"] > 0
    assert backend.capabilities(first).peer_to_peer is (path == "p2p")


async def test_one_gib_across_devices(backend: Any) -> None:
    """1 GiB between the first two devices, byte-exact at both ends; the rate is printed."""
    ids = devices_of(backend)
    if len(ids) < 2:
        pytest.skip("needs two devices")
    size = 1 << 30

    data = os.urandom(size)
    a = await backend.allocate(ids[0], size)
    b = await backend.allocate(ids[1], size)
    await backend.copy_to_device(data, a)
    seconds = await median_seconds_async(lambda: backend.copy_device_to_device(a, b, size), 5)
    got = await backend.copy_from_device(b, 0, size)
    assert got == data
    rate = gbps(size, seconds)
    path = backend.engine_stats(ids[0])["cross_device_path"]
    print(f"\n1 GiB {ids[0]} -> {ids[1]} ({path}): {rate:.1f} GB/s (median of 5)")
    await backend.deallocate(a)
    await backend.deallocate(b)
