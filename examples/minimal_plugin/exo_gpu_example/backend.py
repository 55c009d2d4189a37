"""`ExampleBackend`: two emulated devices, each allocation a `bytearray` in a dict.

It implements only the hooks of `GPUBackend`; the core's public methods check the state, the
device id, the handle and every argument before calling them, so no hook repeats a check. Quick
hooks (describe, report, free) are plain functions; those that would wait on a device are async.
Memory figures are this process's own accounting, kept at module level because `used_bytes` is
per process, not per backend instance (a new instance must see what an old one left behind).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from typing import ClassVar

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import OutOfMemoryError
from exo_gpu_plugins.models import Capabilities, DeviceDescription, DeviceType, MemoryReport

DEVICES = 2
DEVICE_BYTES = 1 << 30  # each emulated device "has" 1 GiB

_lock = threading.Lock()
_used = [0] * DEVICES  # bytes this process holds on each device, across all instances


class ExampleBackend(GPUBackend[int]):
    """The native allocation object is an int key into `self._memory`."""

    name: ClassVar[str] = "example"

    def __init__(self) -> None:
        super().__init__()
        self._memory: dict[int, bytearray] = {}
        self._device_of: dict[int, int] = {}
        self._keys = itertools.count()

    # Lifecycle and devices -----------------------------------------------------------------------

    def _open(self) -> None:
        pass  # a real backend loads its driver here and raises BackendUnavailableError without one

    def _close(self) -> None:
        pass  # every allocation has been freed through _free by now

    def _discover_devices(self) -> Sequence[DeviceDescription]:
        # Only what the backend alone knows: the core adds the id, the backend name and the free
        # memory (from _memory_report) to make the GPUDevice that callers see.
        return [
            DeviceDescription(
                name=f"Example device {index}",
                vendor="example",
                device_type=DeviceType.VIRTUAL,
                memory_bytes=DEVICE_BYTES,
            )
            for index in range(DEVICES)
        ]

    def _capabilities(self, index: int) -> Capabilities:
        return Capabilities(
            device_id=f"{self.name}:{index}",
            max_allocation_bytes=DEVICE_BYTES,
            allocation_granularity_bytes=1,
            host_visible_memory=True,
            unified_memory=True,
            cross_device_copy=True,
            memory_budget=False,  # no driver: figures are our own bookkeeping,
            available_tracks_allocations=True,  # which fall by exactly what we allocate
        )  # temperature/power/clock default to False: the telemetry calls return None

    def _memory_report(self, index: int) -> MemoryReport:
        used = _used[index]
        return MemoryReport(
            device_id=f"{self.name}:{index}",
            total_bytes=DEVICE_BYTES,
            used_bytes=used,
            available_bytes=DEVICE_BYTES - used,
            reserved_bytes=0,
            source="example-accounting",
        )

    # Memory ------------------------------------------------------------------------------------

    async def _allocate(self, index: int, size: int, zeroed: bool) -> int:
        with _lock:
            if size > DEVICE_BYTES - _used[index]:
                raise OutOfMemoryError(
                    f"example:{index} has {DEVICE_BYTES - _used[index]} bytes free, not {size}"
                )
            _used[index] += size
        key = next(self._keys)
        self._memory[key] = bytearray(size)  # zero-filled: right for zeroed=False too
        self._device_of[key] = index
        return key

    def _free(self, native: int) -> None:
        memory = self._memory.pop(native)
        with _lock:
            _used[self._device_of.pop(native)] -= len(memory)

    async def _write(self, native: int, offset: int, data: memoryview) -> None:
        self._memory[native][offset : offset + data.nbytes] = data

    async def _read_into(self, native: int, offset: int, out: memoryview) -> None:
        out[:] = memoryview(self._memory[native])[offset : offset + out.nbytes]

    async def _copy(self, src: int, src_offset: int, dst: int, dst_offset: int, size: int) -> None:
        # bytes(...) copies the source range first, so overlapping ranges behave like memmove.
        chunk = bytes(memoryview(self._memory[src])[src_offset : src_offset + size])
        self._memory[dst][dst_offset : dst_offset + size] = chunk

    async def _synchronize(self, index: int) -> None:
        return None  # every operation above is finished when its await returns
