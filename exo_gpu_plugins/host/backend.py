"""`HostBackend`: one device, `host:0`, whose memory is this process's RAM.

It is the reference semantics of the contract (every other backend must behave like it, byte for
byte) and the fallback when no GPU backend is available. Each allocation is a `bytearray` (large
ones an anonymous `mmap`, whose pages the kernel zeroes faster than a memset in user space); the
memory report counts what host backends of this process hold, like a driver counts per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import mmap
import os
import platform
import threading
from collections.abc import Callable, Sequence
from typing import ClassVar

from exo_gpu_plugins import file_copy
from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import InteropError, InvalidHandleError, OutOfMemoryError
from exo_gpu_plugins.host.system_memory import cpu_identity, read_ram
from exo_gpu_plugins.interop.memory import Retained, buffer_address
from exo_gpu_plugins.interop.sharing import SharedMemory
from exo_gpu_plugins.models import Capabilities, DeviceDescription, DeviceType, MemoryReport

__all__ = ["HostBackend"]

# Copies at least this large run in a worker thread so a long memcpy does not stall the event loop.
_THREAD_THRESHOLD = 4 << 20
# Allocations from this size on are checked against the RAM the OS says is available (reading
# /proc/meminfo costs tens of microseconds; smaller requests fail with MemoryError if at all).
_CHECKED_ALLOCATION = 1 << 20


class _ProcessUsage:
    """Bytes held by every HostBackend of this process: the 'used' of the host device."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes = 0

    def add(self, delta: int) -> None:
        with self._lock:
            self.bytes += delta


_usage = _ProcessUsage()


# Host memory: a bytearray, or for large allocations an anonymous mapping.
HostMemory = bytearray | mmap.mmap


def _mapped(size: int) -> mmap.mmap:
    """Zeroed memory, faulted in by the kernel up front where it can (MAP_POPULATE, Linux): the
    pages are then ready for the copies, and touching them costs a fraction of a user-space
    memset's page faults."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(-1, size, flags=flags)


def _mapped_lazily(size: int) -> mmap.mmap:
    """Zeroed memory left for its first writes to fault in, as transparent huge pages where the
    kernel offers them (one fault per 2 MiB, not per 4 KiB): for memory the caller fills whole
    at once, such as weights read from a file by several threads."""
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        # Without transparent huge pages the advice fails: 4 KiB pages, still correct.
        with contextlib.suppress(OSError):
            memory.madvise(advice)
    return memory


class _SharedMapping(mmap.mmap):
    """Host memory another process can map too: a memfd, mapped shared. `fd` stays open (for
    more exports) until the allocation is freed; the mapping lives while anything views it."""

    fd: int


# Held while an export duplicates `fd` and while a free retires it: without it, a free on another
# thread could close the number between the check and the dup, and a new allocation reusing that
# number would be exported in its place.
_FD_LOCK = threading.Lock()


def _shared_mapping(fd: int, size: int) -> _SharedMapping:
    memory = _SharedMapping(fd, size, flags=mmap.MAP_SHARED)
    memory.fd = fd
    return memory


_SIZE_SEALS = getattr(fcntl, "F_SEAL_SHRINK", 0) | getattr(fcntl, "F_SEAL_GROW", 0)


def _memfd(size: int) -> _SharedMapping:
    """`size` zeroed bytes of shareable memory (Linux: memfd_create)."""
    create = getattr(os, "memfd_create", None)
    if create is None:
        raise InteropError("host memory can be shared only where memfd_create exists (Linux)")
    flags = getattr(os, "MFD_CLOEXEC", 0) | getattr(os, "MFD_ALLOW_SEALING", 0)
    fd = create("exo-gpu-host", flags)
    try:
        os.ftruncate(fd, size)
        # Sealed at its size: a process it is shared with can map it without fear of SIGBUS.
        os.set_blocking(fd, True)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SIZE_SEALS)
        return _shared_mapping(fd, size)
    except BaseException:
        os.close(fd)
        raise


class HostBackend(GPUBackend[HostMemory]):
    """The contract on plain RAM. Pure Python, always available."""

    name: ClassVar[str] = "host"

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def _discover_devices(self) -> Sequence[DeviceDescription]:
        ram = read_ram()
        cpu_name, vendor = cpu_identity()
        return [
            DeviceDescription(
                name=cpu_name,
                vendor=vendor,
                device_type=DeviceType.HOST,
                memory_bytes=ram.total_bytes,
                compute_units=os.cpu_count(),
                driver_version=f"{platform.python_implementation()} {platform.python_version()}",
                field_sources=(("memory_bytes", ram.source), ("compute_units", "os")),
            )
        ]

    def _capabilities(self, index: int) -> Capabilities:
        return Capabilities(
            device_id=self._device_ids[index],
            max_allocation_bytes=read_ram().total_bytes,
            allocation_granularity_bytes=1,
            host_visible_memory=True,
            unified_memory=True,
            peer_to_peer=False,
            cross_device_copy=True,
            memory_budget=False,
            available_tracks_allocations=False,  # the OS's MemAvailable, which lags allocations
            native_file_copy=True,
            transfer_strategy="memcpy",
            transfer_strategies=("memcpy",),
            export_kinds=("cpu", "fd") if hasattr(os, "memfd_create") else ("cpu",),
        )

    def _memory_report(self, index: int) -> MemoryReport:
        ram = read_ram()
        used = min(_usage.bytes, ram.total_bytes)
        available = self._available(ram.total_bytes, ram.available_bytes)
        return MemoryReport(
            device_id=self._device_ids[index],
            total_bytes=ram.total_bytes,
            used_bytes=used,
            available_bytes=available,
            reserved_bytes=ram.total_bytes - used - available,
            source=ram.source if ram.available_bytes is not None else "host-accounting",
        )

    @staticmethod
    def _available(total: int, os_available: int | None) -> int:
        used = min(_usage.bytes, total)
        if os_available is None:
            return total - used
        return max(0, min(os_available, total - used))

    async def _allocate(self, index: int, size: int, zeroed: bool) -> HostMemory:
        return await self._allocation(index, size, _mapped if zeroed else _mapped_lazily)

    async def _allocate_exportable(self, index: int, size: int, zeroed: bool) -> HostMemory:
        # A fresh memfd reads as zeros either way.
        return await self._allocation(index, size, _memfd, always_mapped=True)

    async def _allocation(
        self,
        index: int,
        size: int,
        mapped: Callable[[int], mmap.mmap],
        *,
        always_mapped: bool = False,
    ) -> HostMemory:
        if size >= _CHECKED_ALLOCATION:  # refuse what the OS cannot give rather than swap or die
            ram = read_ram()
            room = self._available(ram.total_bytes, ram.available_bytes)
            if size > room:
                raise OutOfMemoryError(
                    f"host:0 cannot hold {size} bytes: {room} bytes of RAM are available"
                )
        try:
            memory: HostMemory
            if always_mapped or size >= _THREAD_THRESHOLD:
                memory = await asyncio.to_thread(mapped, size)
            else:
                memory = bytearray(size)
        except (MemoryError, OSError):
            raise OutOfMemoryError(f"host:0 could not allocate {size} bytes") from None
        _usage.add(size)
        return memory

    def _free(self, native: HostMemory) -> None:
        _usage.add(-len(native))
        if isinstance(native, _SharedMapping):
            with _FD_LOCK:
                fd, native.fd = native.fd, -1
            if fd >= 0:
                os.close(fd)  # views keep the mapping itself

    def _export_fd(self, native: HostMemory) -> SharedMemory:
        if not isinstance(native, _SharedMapping):
            raise InteropError(
                "this host:0 allocation cannot be shared: allocate it with exportable=True"
            )
        with _FD_LOCK:
            if native.fd < 0:
                raise InvalidHandleError("this host:0 allocation was freed while it was exported")
            fd = os.dup(native.fd)
        size = len(native)
        return SharedMemory(
            fd=fd,
            backend=self.name,
            handle_type="memfd",
            size_bytes=size,
            allocation_bytes=size,
        )

    async def _import_fd(self, index: int, shared: SharedMemory) -> HostMemory:
        if shared.handle_type != "memfd":
            raise InteropError(f"host:0 opens memory shared as memfd, not {shared.handle_type}")
        try:
            found = os.fstat(shared.fd).st_size
            seals = fcntl.fcntl(shared.fd, fcntl.F_GET_SEALS) if hasattr(fcntl, "F_GET_SEALS") else 0
        except OSError as exc:
            raise InteropError(
                f"descriptor {shared.fd} is not a memfd that host:0 can open "
                f"({exc.strerror or exc}): share memory exported by a host backend"
            ) from None
        if seals & _SIZE_SEALS != _SIZE_SEALS:
            raise InteropError(
                "the shared descriptor is not sealed at its size (F_SEAL_SHRINK|F_SEAL_GROW): "
                "it could shrink under the mapping"
            )
        if found != shared.allocation_bytes:
            raise InteropError(
                f"the shared descriptor holds {found} bytes, not the {shared.allocation_bytes} "
                "it claims: wrong size"
            )
        fd = os.dup(shared.fd)
        try:
            memory = _shared_mapping(fd, shared.size_bytes)
        except (OSError, ValueError) as exc:
            os.close(fd)
            raise InteropError(f"the shared descriptor cannot be mapped: {exc}") from None
        _usage.add(shared.size_bytes)
        return memory

    def _retain(self, native: HostMemory) -> Retained:
        view = memoryview(native)  # pins the memory for as long as the consumer holds it
        return Retained(owner=view, host_address=buffer_address(view), size_bytes=len(native))

    async def _write(self, native: HostMemory, offset: int, data: memoryview) -> None:
        target = memoryview(native)[offset : offset + data.nbytes]
        if data.nbytes >= _THREAD_THRESHOLD:
            await asyncio.to_thread(target.__setitem__, slice(None), data)
        else:
            target[:] = data

    async def _read_into(self, native: HostMemory, offset: int, out: memoryview) -> None:
        source = memoryview(native)[offset : offset + out.nbytes]
        if out.nbytes >= _THREAD_THRESHOLD:
            await asyncio.to_thread(out.__setitem__, slice(None), source)
        else:
            out[:] = source

    async def _write_from_file(
        self, native: HostMemory, offset: int, fd: int, file_offset: int, size: int
    ) -> None:
        # Straight from the page cache into the allocation: one copy, several chunks at once.
        await file_copy.parallel_read_into(fd, memoryview(native)[offset : offset + size], file_offset)

    async def _read(self, native: HostMemory, offset: int, size: int) -> bytes:
        if size >= _THREAD_THRESHOLD:
            return await asyncio.to_thread(bytes, memoryview(native)[offset : offset + size])
        return bytes(memoryview(native)[offset : offset + size])

    async def _copy(
        self, src: HostMemory, src_offset: int, dst: HostMemory, dst_offset: int, size: int
    ) -> None:
        # Slicing the same object copies the source range first: memmove.
        chunk = (
            src[src_offset : src_offset + size]
            if src is dst
            else memoryview(src)[src_offset : src_offset + size]
        )
        dst[dst_offset : dst_offset + size] = chunk

    async def _synchronize(self, index: int) -> None:
        # Every host operation has finished when its await returns; there is nothing pending.
        return None
