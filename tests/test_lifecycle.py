"""The core's lifecycle guarantees: shutdown waits for operations in flight before it frees their
memory, refuses new ones, and never frees an allocation twice."""

from __future__ import annotations

import asyncio
import threading

import pytest

from exo_gpu_plugins.errors import BackendClosedError
from exo_gpu_plugins.host.backend import HostBackend


class SlowHost(HostBackend):
    """Writes wait for `release` (a threading.Event), so a test can hold one in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.freed: list[int] = []

    async def _write(self, native: bytearray, offset: int, data: memoryview) -> None:
        self.entered.set()
        await asyncio.to_thread(self.release.wait, 10)
        await super()._write(native, offset, data)

    def _free(self, native: bytearray) -> None:
        self.freed.append(id(native))
        super()._free(native)


async def test_shutdown_waits_for_operations_in_flight() -> None:
    backend = SlowHost()
    await backend.initialize()
    handle = await backend.allocate("host:0", 64)
    write = asyncio.ensure_future(backend.copy_to_device(b"late", handle))
    await asyncio.to_thread(backend.entered.wait, 10)
    closing = asyncio.ensure_future(backend.shutdown())
    await asyncio.sleep(0.05)
    assert not closing.done()  # the write is still running: shutdown waits
    assert backend.freed == []
    with pytest.raises(BackendClosedError):  # but new operations are refused already
        await backend.allocate("host:0", 64)
    backend.release.set()
    await write
    await closing
    assert len(backend.freed) == 1  # freed once, after the write finished


async def test_concurrent_deallocate_and_shutdown_free_once() -> None:
    for _ in range(50):
        backend = SlowHost()
        await backend.initialize()
        handles = [await backend.allocate("host:0", 16) for _ in range(20)]
        results = await asyncio.gather(
            *(backend.deallocate(h) for h in handles), backend.shutdown(), return_exceptions=True
        )
        assert all(r is None or isinstance(r, BackendClosedError) for r in results)
        assert len(backend.freed) == len(set(backend.freed)) == 20


async def test_calls_before_initialize_are_refused() -> None:
    backend = HostBackend()
    with pytest.raises(BackendClosedError, match="not initialized"):
        await backend.allocate("host:0", 16)
    with pytest.raises(BackendClosedError, match="not initialized"):
        backend.list_devices()
