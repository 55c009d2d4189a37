"""Broken backends whose failures were once reported by a symptom instead of their cause.

Each subclasses the host backend and overrides public methods only (through the core's checks), so
it stays one bug away from a correct backend whatever the hooks look like. test_failure_messages.py
runs the kit on each and checks that the message names the bug.
"""

from __future__ import annotations

from typing import ClassVar

from exo_gpu_plugins.host.backend import HostBackend
from exo_gpu_plugins.models import Capabilities, MemoryHandle, MemoryReport


class DirtyReuse(HostBackend):
    """Hands freed memory out again without clearing it (a naive pool): every allocation starts
    with the bytes of the last block freed, cut or zero-padded to its size.

    Any size is reused, not only the freed one, so that the state machine meets the bug on any
    free-then-allocate whatever sizes Hypothesis draws. A pool keyed by size met it only when a
    size repeated, and whether one did depended on the install: Hypothesis mixes the literals of
    modules outside site-packages into its draws, so sizes repeated with the kit installed
    editable (its literals drawn too) and not with the wheel installed."""

    def __init__(self) -> None:
        super().__init__()
        self._pool: list[bytes] = []

    async def deallocate(self, handle: MemoryHandle) -> None:
        left = await self.copy_from_device(handle, 0, handle.size_bytes)
        await super().deallocate(handle)
        self._pool.append(left)

    async def allocate(self, device_id: str, size_bytes: int, *, zeroed: bool = True) -> MemoryHandle:
        handle = await super().allocate(device_id, size_bytes, zeroed=zeroed)
        if self._pool:
            await self.copy_to_device(self._pool.pop()[:size_bytes], handle, 0)
        return handle


class StateOutlivesInstance(HostBackend):
    """Keeps what a shut-down instance held in a class-level cache and gives it to the next
    instance's allocations uncleared. Each instance on its own is correct."""

    leftovers: ClassVar[list[bytes]] = []

    async def shutdown(self) -> None:
        if self.is_open:
            for handle in self.live_handles():
                left = await self.copy_from_device(handle, 0, handle.size_bytes)
                type(self).leftovers.append(left)
        await super().shutdown()

    async def allocate(self, device_id: str, size_bytes: int, *, zeroed: bool = True) -> MemoryHandle:
        handle = await super().allocate(device_id, size_bytes, zeroed=zeroed)
        cache = type(self).leftovers
        for i, left in enumerate(cache):
            if len(left) >= size_bytes:
                del cache[i]
                await self.copy_to_device(left[:size_bytes], handle, 0)
                break
        return handle


class AvailableNeverFalls(HostBackend):
    """Reports a fixed available_bytes and says nothing about it in its capabilities: the figure
    the issue's honest-looking fake device gave (used_bytes still moves)."""

    fixed: ClassVar[int | None] = None

    async def get_device_memory_info(self, device_id: str) -> MemoryReport:
        real = await super().get_device_memory_info(device_id)
        if type(self).fixed is None:
            type(self).fixed = (real.total_bytes - real.used_bytes) // 2
        available = min(type(self).fixed or 0, real.total_bytes - real.used_bytes)
        return real.model_copy(
            update={
                "available_bytes": available,
                "reserved_bytes": real.total_bytes - real.used_bytes - available,
            }
        )

    def capabilities(self, device_id: str) -> Capabilities:
        caps = super().capabilities(device_id)
        said = {name: getattr(caps, name) for name in caps.model_fields_set}
        said.pop("available_tracks_allocations", None)
        return Capabilities(**{**said, "memory_budget": False})


class DeclaredEstimate(AvailableNeverFalls):
    """The same figure, declared for what it is: an estimate that does not follow allocations."""

    def capabilities(self, device_id: str) -> Capabilities:
        return super().capabilities(device_id).model_copy(update={"available_tracks_allocations": False})
