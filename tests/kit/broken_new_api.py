"""Broken backends for the calls of version 0.2 (host buffers, file copy, utilization, live free
memory): each breaks one clause, and the kit must notice. `BROKEN_NEW` pairs each with that clause
and the test that must fail (only that test runs: the whole kit per backend would cost minutes)."""

from __future__ import annotations

import contextlib
import os

from exo_gpu_plugins.errors import InvalidHandleError
from exo_gpu_plugins.host.backend import HostBackend
from exo_gpu_plugins.host_buffer import HostBuffer
from exo_gpu_plugins.models import Capabilities, MemoryReport


class DirtyHostBuffer(HostBackend):
    """Host buffers come from a reused scratch area that is never cleared."""

    async def _allocate_host(self, index: int, size: int) -> tuple[memoryview, object | None]:
        return memoryview(bytearray(b"\x5a" * size)), None


class ReleaseTwiceAccepted(HostBackend):
    """A second release of a host buffer is silently ignored."""

    async def release_host_buffer(self, host_buffer: HostBuffer) -> None:  # type: ignore[override]
        with contextlib.suppress(InvalidHandleError):
            await super().release_host_buffer(host_buffer)


class FileOffsetIgnored(HostBackend):
    """Reads the file from its start whatever file_offset says."""

    async def _write_from_file(
        self, native: bytearray, offset: int, fd: int, file_offset: int, size: int
    ) -> None:
        await super()._write_from_file(native, offset, fd, 0, size)


class FileReadMovesPosition(HostBackend):
    """Reads with lseek + read, moving the caller's file position."""

    async def _write_from_file(
        self, native: bytearray, offset: int, fd: int, file_offset: int, size: int
    ) -> None:
        os.lseek(fd, file_offset, os.SEEK_SET)
        native[offset : offset + size] = os.read(fd, size)


class InventedUtilization(HostBackend):
    """Reports a utilization figure though its capabilities say it has no source."""

    def _utilization(self, index: int) -> float | None:
        return 50.0


class FrozenFreeMemory(HostBackend):
    """The memory-report hook gives a fixed available_bytes, so the device's memory_available never
    moves either; the capabilities say nothing about available_tracks_allocations."""

    def _memory_report(self, index: int) -> MemoryReport:
        real = super()._memory_report(index)
        free = real.total_bytes // 4
        available = min(free, real.total_bytes - real.used_bytes)
        return real.model_copy(
            update={
                "available_bytes": available,
                "reserved_bytes": real.total_bytes - real.used_bytes - available,
            }
        )

    def _capabilities(self, index: int) -> Capabilities:
        caps = super()._capabilities(index)
        said = {name: getattr(caps, name) for name in caps.model_fields_set}
        said.pop("available_tracks_allocations", None)
        return Capabilities(**{**said, "memory_budget": False})


BROKEN_NEW: dict[str, tuple[type[HostBackend], str, str]] = {
    "host buffer not zeroed": (
        DirtyHostBuffer,
        "host buffers",
        "test_allocated_buffer_is_zeroed_and_writable",
    ),
    "host buffer released twice": (
        ReleaseTwiceAccepted,
        "host buffer release",
        "test_release_twice_and_view_after_release",
    ),
    "file offset ignored": (FileOffsetIgnored, "file copy", "test_ranges"),
    "file position moved": (FileReadMovesPosition, "file copy", "test_source_kinds"),
    "utilization invented": (InventedUtilization, "telemetry", "test_telemetry"),
    "free memory frozen": (FrozenFreeMemory, "live free memory", "test_memory_available_is_live"),
}
