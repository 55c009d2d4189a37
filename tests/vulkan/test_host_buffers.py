"""Host buffers and file copies through the public API of VulkanBackend, under every transfer
strategy: pinned buffers and registered caller buffers move by one DMA (the engine counts those
bytes), their memory outlives release, and copy_file_to_device takes the engine's own path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exo_gpu_plugins.errors import InvalidHandleError
from tests.vulkan.strategies import STRATEGIES, open_with

MiB = 1 << 20


@pytest.fixture(params=STRATEGIES)
def strategy(request: pytest.FixtureRequest) -> Iterator[str]:
    yield str(request.param)


def _pinned_bytes(backend: Any) -> int:
    return int(backend.engine_stats("vulkan:0")["pinned_bytes"])


async def test_capabilities_announce_host_buffers(strategy: str) -> None:
    backend = await open_with(strategy)
    try:
        caps = backend.capabilities("vulkan:0")
        assert caps.pinned_host_memory
        assert caps.native_file_copy == (os.name == "posix")
        info = backend._infos[0]
        assert caps.host_registration == bool(info["external_memory_host"])
    finally:
        await backend.shutdown()


async def test_pinned_buffer_round_trip(strategy: str) -> None:
    backend = await open_with(strategy)
    try:
        size = 24 * MiB + 5
        src = await backend.allocate_host_buffer("vulkan:0", size)
        dst = await backend.allocate_host_buffer("vulkan:0", size)
        assert src.pinned and not src.registered and len(src) == size
        assert src.view[:4096] == bytes(4096)
        payload = os.urandom(size)
        src.view[:] = payload
        handle = await backend.allocate("vulkan:0", size)
        before = _pinned_bytes(backend)
        await backend.copy_to_device(src, handle)
        await backend.copy_from_device_into(handle, 0, dst)
        assert dst.view == payload
        if backend.engine_stats("vulkan:0")["strategy"] != "mapped":
            assert _pinned_bytes(backend) - before >= 2 * size
        kept = src.view
        await backend.release_host_buffer(src)
        with pytest.raises(InvalidHandleError):
            _ = src.view
        with pytest.raises(InvalidHandleError):
            await backend.release_host_buffer(src)
        kept[:4] = b"live"  # views taken earlier stay valid memory
        assert kept[:4] == b"live"
        await backend.copy_to_device(kept, handle)  # now an ordinary buffer
        assert (await backend.copy_from_device(handle, 0, 4)) == b"live"
    finally:
        await backend.shutdown()


async def test_registered_buffer_round_trip(strategy: str) -> None:
    backend = await open_with(strategy)
    try:
        size = 24 * MiB + 3
        src = bytearray(os.urandom(size))
        out = bytearray(size)
        hs = await backend.register_host_buffer("vulkan:0", src)
        ho = await backend.register_host_buffer("vulkan:0", out)
        expected = bool(backend._infos[0]["external_memory_host"])
        assert hs.registered and hs.pinned == expected and ho.pinned == expected
        handle = await backend.allocate("vulkan:0", size)
        before = _pinned_bytes(backend)
        await backend.copy_to_device(hs, handle)
        await backend.copy_from_device_into(handle, 0, ho)
        assert out == src
        if expected and backend.engine_stats("vulkan:0")["strategy"] != "mapped":
            assert _pinned_bytes(backend) - before >= 2 * size
        await backend.release_host_buffer(hs)
        await backend.release_host_buffer(ho)
        del hs, ho
        src.extend(b"x")  # the registration no longer holds the buffer
    finally:
        await backend.shutdown()


async def test_copy_file_to_device(strategy: str, tmp_path: Path) -> None:
    backend = await open_with(strategy)
    try:
        data = os.urandom(40 * MiB + 9)
        path = tmp_path / "shard.bin"
        path.write_bytes(data)
        handle = await backend.allocate("vulkan:0", len(data))
        assert await backend.copy_file_to_device(path, handle) == len(data)
        assert await backend.copy_from_device(handle, 0, len(data)) == data
        n = await backend.copy_file_to_device(path, handle, 100, file_offset=1000, size_bytes=5 * MiB)
        assert n == 5 * MiB
        assert await backend.copy_from_device(handle, 100, n) == data[1000 : 1000 + n]
    finally:
        await backend.shutdown()


async def test_first_call_on_a_device_runs_in_the_executor() -> None:
    """The first host-buffer or allocation call on a device may open it (slow): it is offloaded
    even when small; later small calls run inline."""

    backend = await open_with(STRATEGIES[0])
    offloaded: list[str] = []
    original = backend._offload

    async def spy(call: Any, *args: Any) -> Any:
        offloaded.append(call.__name__)
        return await original(call, *args)

    backend._offload = spy
    try:
        host = await backend.allocate_host_buffer("vulkan:0", 4096)
        assert offloaded == ["host_alloc"], offloaded
        handle = await backend.allocate("vulkan:0", 4096)
        second = await backend.allocate_host_buffer("vulkan:0", 4096)
        assert offloaded == ["host_alloc"], offloaded
        await backend.deallocate(handle)
        await backend.release_host_buffer(second)
        await backend.release_host_buffer(host)
    finally:
        await backend.shutdown()
