"""Deliberately broken backends: each breaks one clause of the contract, and the kit must notice.

They subclass the host backend and override one hook (or, where the core would prevent the bug, a
public method), so each differs from a correct backend in exactly one way. `BROKEN` pairs each with
the clause of the kit that must fail for it.
"""

from __future__ import annotations

import contextlib

from exo_gpu_plugins.errors import InvalidHandleError, OutOfBoundsError, OutOfMemoryError
from exo_gpu_plugins.host.backend import HostBackend
from exo_gpu_plugins.models import MemoryHandle, MemoryReport


class OffByOneWrite(HostBackend):
    """Writes land one byte after the requested offset."""

    async def _write(self, native: bytearray, offset: int, data: memoryview) -> None:
        room = len(native) - offset - 1
        await super()._write(native, offset + 1, data[: max(room, 0)])


class NoZeroFill(HostBackend):
    """Recycles freed buffers of the same size without clearing them."""

    def __init__(self) -> None:
        super().__init__()
        self._pool: dict[int, list[bytes]] = {}

    async def _allocate(self, index: int, size: int, zeroed: bool) -> bytearray:
        memory = await super()._allocate(index, size, zeroed)
        recycled = self._pool.get(size)
        if recycled:
            memory[:] = recycled.pop()
        return memory

    def _free(self, native: bytearray) -> None:
        self._pool.setdefault(len(native), []).append(bytes(native))
        super()._free(native)


class DoubleFreeAccepted(HostBackend):
    """A second free of the same handle is silently ignored."""

    async def deallocate(self, handle: MemoryHandle) -> None:  # type: ignore[override]
        with contextlib.suppress(InvalidHandleError):
            await super().deallocate(handle)


class OomAsRuntimeError(HostBackend):
    """Out-of-memory is reported as a bare RuntimeError."""

    async def _allocate(self, index: int, size: int, zeroed: bool) -> bytearray:
        try:
            return await super()._allocate(index, size, zeroed)
        except OutOfMemoryError as exc:
            raise RuntimeError(str(exc)) from None


class BoundsAsIndexError(HostBackend):
    """Out-of-range writes raise IndexError instead of OutOfBoundsError."""

    async def copy_to_device(self, src: object, dst_handle: MemoryHandle, offset_bytes: int = 0) -> None:
        try:
            await super().copy_to_device(src, dst_handle, offset_bytes)
        except OutOfBoundsError as exc:
            raise IndexError(str(exc)) from None


class ImpossibleReport(HostBackend):
    """The memory report claims more available memory than the device has (validator bypassed)."""

    def _memory_report(self, index: int) -> MemoryReport:
        report = super()._memory_report(index)
        return MemoryReport.model_construct(
            **{**report.model_dump(), "available_bytes": report.total_bytes + 1}
        )


class CopyIgnoresOffsets(HostBackend):
    """Device-to-device copies always run from offset 0 to offset 0."""

    async def _copy(
        self, src: bytearray, src_offset: int, dst: bytearray, dst_offset: int, size: int
    ) -> None:
        await super()._copy(src, 0, dst, 0, size)


class StaleReadCache(HostBackend):
    """Reads are cached by range and never invalidated by later writes."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[tuple[int, int, int], bytes] = {}

    async def _read(self, native: bytearray, offset: int, size: int) -> bytes:
        key = (id(native), offset, size)
        if key not in self._cache:
            self._cache[key] = await super()._read(native, offset, size)
        return self._cache[key]


class ShutdownFreesNothing(HostBackend):
    """Shutdown forgets its allocations instead of freeing them: the process keeps the memory."""

    def _shutdown_blocking(self) -> None:
        self._live.clear()
        super()._shutdown_blocking()


class ForwardCopy(HostBackend):
    """Copies byte by byte from the front, so an overlapping copy to a higher offset smears."""

    async def _copy(
        self, src: bytearray, src_offset: int, dst: bytearray, dst_offset: int, size: int
    ) -> None:
        for i in range(size):
            dst[dst_offset + i] = src[src_offset + i]


BROKEN: dict[str, tuple[type[HostBackend], str]] = {
    "off-by-one write": (OffByOneWrite, "copy to device"),
    "no zero-fill": (NoZeroFill, "allocation zero-fill"),
    "double free accepted": (DoubleFreeAccepted, "handles: double free"),
    "OOM as RuntimeError": (OomAsRuntimeError, "out of memory"),
    "bounds as IndexError": (BoundsAsIndexError, "copy bounds"),
    "available > total": (ImpossibleReport, "memory report"),
    "d2d ignores offsets": (CopyIgnoresOffsets, "device-to-device"),
    "stale read cache": (StaleReadCache, "copy from device"),
    "shutdown frees nothing": (ShutdownFreesNothing, "shutdown frees memory"),
    "overlap not memmove": (ForwardCopy, "device-to-device overlap"),
}
