"""`FreeListBackend`: a correct sub-allocating backend, the base of the kit's accounting fixtures.

A device whose memory is an arena handed out in 4 KiB pages: a block freed goes onto the free list
of its size (in pages) and is handed out again before the arena grows. The memory figures are the
arena's own bookkeeping, as a backend that is its own allocator keeps them: `used_bytes` the pages
live allocations hold, `available_bytes` the arena's untouched pages plus its free lists, and
`reserved_bytes` what is neither (nothing, unless a free loses a block). The contents live in the
host backend's memory, one allocation each, zero-filled by it.

It passes the whole kit (tests/kit/test_broken_causes.py checks that), so the kit's accounting
clauses hold a real free list to nothing it cannot keep; the broken fixtures subclass it and change
one method.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import ClassVar

from exo_gpu_plugins.errors import InteropError, OutOfMemoryError
from exo_gpu_plugins.host.backend import HostBackend, HostMemory
from exo_gpu_plugins.models import Capabilities, DeviceDescription, MemoryReport

PAGE = 4096
ARENA_BYTES = 4 << 30


class Arena:
    """One device's pages: a bump pointer and a free list per block size. Per process (module
    level, one per backend class), as a device's memory is: every instance allocates from it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.top = 0  # bytes of the arena ever handed out
        self.free: dict[int, list[int]] = {}  # pages -> offsets of free blocks of that size
        self.held = 0  # bytes live allocations hold

    def take(self, pages: int) -> int:
        """The offset of a block of `pages` pages: a freed one of that size, else new pages."""
        with self.lock:
            blocks = self.free.get(pages)
            if blocks:
                offset = blocks.pop()
            elif self.top + pages * PAGE <= ARENA_BYTES:
                offset, self.top = self.top, self.top + pages * PAGE
            else:
                raise OutOfMemoryError(f"the arena has no block of {pages} pages left")
            self.held += pages * PAGE
            return offset

    def put_back(self, offset: int, pages: int) -> None:
        """A freed block goes onto the free list of its size."""
        with self.lock:
            self.free.setdefault(pages, []).append(offset)

    def released(self, pages: int) -> None:
        """A live allocation of `pages` pages is gone."""
        with self.lock:
            self.held -= pages * PAGE

    def figures(self) -> tuple[int, int]:
        """(used, available) bytes."""
        with self.lock:
            listed = sum(pages * PAGE * len(blocks) for pages, blocks in self.free.items())
            return self.held, ARENA_BYTES - self.top + listed


_arenas: dict[type, Arena] = {}
_arenas_lock = threading.Lock()


class FreeListBackend(HostBackend):
    """One device of `ARENA_BYTES`, allocated in pages from per-size free lists."""

    name: ClassVar[str] = "freelist"

    @property
    def arena(self) -> Arena:
        with _arenas_lock:
            return _arenas.setdefault(type(self), Arena())

    def _open(self) -> None:
        self._blocks: dict[int, tuple[int, int]] = {}  # id(native) -> (offset, pages)

    def _discover_devices(self) -> Sequence[DeviceDescription]:
        (host,) = super()._discover_devices()
        return [host.model_copy(update={"name": "free-list arena", "memory_bytes": ARENA_BYTES})]

    def _capabilities(self, index: int) -> Capabilities:
        return (
            super()
            ._capabilities(index)
            .model_copy(
                update={
                    "max_allocation_bytes": ARENA_BYTES,
                    "allocation_granularity_bytes": PAGE,
                    "available_tracks_allocations": True,
                    "native_file_copy": False,
                    # Its pages are not memfd-backed: CPU views only, no sharing.
                    "export_kinds": ("cpu",),
                }
            )
        )

    def _memory_report(self, index: int) -> MemoryReport:
        used, available, reserved = self.figures()
        return MemoryReport(
            device_id=self._device_ids[index],
            total_bytes=ARENA_BYTES,
            used_bytes=used,
            available_bytes=available,
            reserved_bytes=reserved,
            source="free-list accounting",
        )

    def figures(self) -> tuple[int, int, int]:
        """(used, available, reserved) bytes of the arena, as the report gives them."""
        used, available = self.arena.figures()
        return used, available, ARENA_BYTES - used - available

    async def _allocate(self, index: int, size: int, zeroed: bool) -> HostMemory:
        pages = -(-size // PAGE)
        offset = self.arena.take(pages)
        try:
            memory = await super()._allocate(index, size, True)
        except BaseException:
            self.arena.released(pages)
            self.arena.put_back(offset, pages)
            raise
        self._blocks[id(memory)] = (offset, pages)
        return memory

    async def _allocate_exportable(self, index: int, size: int, zeroed: bool) -> HostMemory:
        raise InteropError("the free-list arena's memory cannot be shared with another process")

    def _free(self, native: HostMemory) -> None:
        block = self._blocks.pop(id(native), None)
        if block is not None:  # exportable and imported memory is not the arena's
            offset, pages = block
            self.arena.released(pages)
            self.give_back(offset, pages)
        super()._free(native)

    def give_back(self, offset: int, pages: int) -> None:
        """Return a freed block to the allocator."""
        self.arena.put_back(offset, pages)

    async def _write_from_file(
        self, native: HostMemory, offset: int, fd: int, file_offset: int, size: int
    ) -> None:
        # The core's default (chunks read in threads, written with _write), not the host's own.
        await super(HostBackend, self)._write_from_file(native, offset, fd, file_offset, size)
