"""The handle table's pieces: unguessable handle ids, the cheap `MemoryHandle` the core builds for
each allocation, and the entries that tie a handle (or host buffer) to the backend's native object.

The core owns handles so that a backend never checks one: each backend instance keeps a table from
handle id to `Live` entry, and a freed, forged or foreign handle is simply not in it.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Generic, TypeVar

from exo_gpu_plugins._trusted import trusted
from exo_gpu_plugins.host_buffer import HostBuffer
from exo_gpu_plugins.models import MemoryHandle

__all__ = ["HostEntry", "Live", "new_handle"]

NativeT = TypeVar("NativeT")


class Live(Generic[NativeT]):
    """A live allocation: the handle given out and the backend's native object behind it.
    (A plain slotted class: a frozen dataclass costs three times as much to build, per allocate.)"""

    __slots__ = ("device_index", "exportable", "handle", "native")

    def __init__(
        self, handle: MemoryHandle, native: NativeT, device_index: int, exportable: bool = False
    ) -> None:
        self.handle = handle
        self.native = native
        self.device_index = device_index
        self.exportable = exportable  # made with exportable=True, or opened from shared memory


class HostEntry:
    """A live host buffer: the object given out and the backend's native object behind it."""

    __slots__ = ("buffer", "native")

    def __init__(self, buffer: HostBuffer, native: object) -> None:
        self.buffer = buffer
        self.native = native


class _HandleIds:
    """128-bit random handle ids, drawn from the OS in batches (one syscall per 256 handles)."""

    _BATCH = 256

    def __init__(self) -> None:
        self._pool: list[str] = []

    def next(self) -> str:
        # list.pop is atomic; two threads refilling at once only draw more random bits.
        try:
            return self._pool.pop()
        except IndexError:
            raw = os.urandom(16 * self._BATCH).hex()
            fresh = [raw[i : i + 32] for i in range(0, len(raw), 32)]
            handle_id = fresh.pop()
            self._pool.extend(fresh)
            return handle_id


_handle_ids = _HandleIds()


def new_handle(device_id: str, size: int) -> MemoryHandle:
    """A MemoryHandle from values the core has already checked, without pydantic's validation."""
    values = {
        "handle_id": _handle_ids.next(),
        "device_id": device_id,
        "size_bytes": size,
        "allocated_at": datetime.now(timezone.utc),
    }
    return trusted(MemoryHandle, values)
