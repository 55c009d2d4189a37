"""Broken backends whose defect the kit once let pass, or reported by a symptom: each differs from a
correct backend (the host backend, or the free-list backend of free_list.py) in one method.

`CAUSES` pairs each with the clause of `exo-gpu check`'s table that must fail for it and words its
message there must contain: the cause, not a symptom further down. test_broken_causes.py runs the
check at its default settings on each.
"""

from __future__ import annotations

import itertools
import os
from typing import ClassVar, NamedTuple

from exo_gpu_plugins.host.backend import HostBackend, HostMemory

from .free_list import ARENA_BYTES, FreeListBackend


class LeaksOneSizeClass(FreeListBackend):
    """Blocks of 10 pages (allocations of 36,865 to 40,960 bytes) never return to the free list."""

    def give_back(self, offset: int, pages: int) -> None:
        if pages != 10:
            super().give_back(offset, pages)


class LeaksEveryFree(FreeListBackend):
    """No freed block returns to the free list: used_bytes falls on a free, available_bytes never
    rises again."""

    def give_back(self, offset: int, pages: int) -> None:
        return None


class ReportDoesNotAddUp(FreeListBackend):
    """Reports available memory as total minus reserved, forgetting what this process holds: right
    while nothing is held, impossible (the model refuses it) once something is."""

    def figures(self) -> tuple[int, int, int]:
        used, _ = self.arena.figures()
        return used, ARENA_BYTES, 0


class ShortReadsIgnored(HostBackend):
    """Copies files with one `preadv` per 1 MiB chunk and never looks at the count it returns: a
    file that ends early (shrank during the copy) leaves the rest of the range unwritten, and the
    copy returns as if it were complete."""

    async def _write_from_file(
        self, native: HostMemory, offset: int, fd: int, file_offset: int, size: int
    ) -> None:
        view = memoryview(native)[offset : offset + size]
        for start in range(0, size, 1 << 20):
            os.preadv(fd, [view[start : start + (1 << 20)]], file_offset + start)


class SmallReadsIgnoreOffset(HostBackend):
    """Reads of up to 64 bytes come from the start of the allocation, whatever the offset (a fast
    path for small reads that forgot it)."""

    async def _read(self, native: HostMemory, offset: int, size: int) -> bytes:
        return await super()._read(native, 0 if size <= 64 else offset, size)


_instances = itertools.count(1)


class PoolOutlivesInstance(HostBackend):
    """Keeps freed blocks in a pool at class level, by size, for reuse. An instance clears the
    blocks it freed itself before handing them out again, but takes blocks an earlier instance
    left in the pool for clean: each instance alone is correct, the next one sees the last one's
    bytes."""

    pool: ClassVar[dict[int, list[tuple[int, bytes]]]] = {}

    def _open(self) -> None:
        self._serial = next(_instances)

    async def _allocate(self, index: int, size: int, zeroed: bool) -> HostMemory:
        memory = await super()._allocate(index, size, True)
        kept = type(self).pool.get(size)
        if kept:
            owner, left = kept.pop()
            if owner != self._serial:  # the defect: only its own frees count as dirty
                memory[:] = left
        return memory

    def _free(self, native: HostMemory) -> None:
        if len(native) <= 1 << 20:  # small blocks only, a few per size: the pool stays small
            kept = type(self).pool.setdefault(len(native), [])
            kept[:] = [*kept[-7:], (self._serial, bytes(native))]
        super()._free(native)


class Cause(NamedTuple):
    backend: type[HostBackend]
    rows: dict[str, tuple[str, ...]]  # clause -> words its row of the table must show


CAUSES: dict[str, Cause] = {
    "free list leaks one size class": Cause(
        LeaksOneSizeClass,
        {
            "memory accounting": (
                "available_bytes is 40960 bytes below its level",
                "freeing 40000 bytes",
                "size class",
            )
        },
    ),
    "every free leaks": Cause(
        LeaksEveryFree,
        {
            "memory accounting": ("available_bytes is", "below its level", "not given back"),
            "shutdown frees memory": ("available_bytes is", "not given back to the allocator"),
            "state machine": ("available_bytes did not come back after",),
        },
    ),
    "short file reads ignored": Cause(
        ShortReadsIgnored,
        {
            "file copy errors": (
                "short of its",
                "instead of raising FileReadError",
                "short read taken for a complete one",
            )
        },
    ),
    "small reads ignore the offset": Cause(
        SmallReadsIgnoreOffset,
        {
            clause: ("wrong read: copy_from_device(offset=", "the read ignores or misplaces its offset")
            for clause in ("copy from device", "state machine", "allocation")
        },
    ),
    "memory report does not add up": Cause(
        ReportDoesNotAddUp,
        {
            clause: ("MemoryReport refused the backend's values", "used + available + reserved = ")
            for clause in ("memory report", "memory accounting", "allocation")
        },
    ),
    "state outlives its instance": Cause(
        PoolOutlivesInstance,
        {
            "allocation zero-fill": (
                "backend state outlives its instance",
                "written through an earlier instance",
            )
        },
    ),
}
