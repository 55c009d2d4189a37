"""File bytes into CUDA device memory on CUDA's copy engine: how `copy_file_to_device` (and so
the weights loader) fills exportable memory that is imported into CUDA.

Why: on NVIDIA, Vulkan's host-to-device DMA ran at 32-49 GB/s depending on the machine, while
CUDA's copy engine wrote the same imported Vulkan memory at 52-55 GB/s (H100, PCIe 5,
2026-12-06; benchmarks/RESULTS.md). Each copy walks its range a slot at a time: the backend's
reader (`_read_file_into`: the Vulkan engine's parallel `pread`s, which reach the rate of its own
loads, where Python threads did not) fills a pinned host slot (`cuMemHostAlloc`), and
`cuMemcpyHtoDAsync` sends it on one stream while the next slot is read; a slot is reused once
its event says its copy is done. A copy returns only when all of its bytes are in device memory
(an event after its last slot, waited for), which is the documented rule for Vulkan to read
memory that CUDA wrote.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
from collections.abc import Callable

from exo_gpu_plugins.errors import InteropError
from exo_gpu_plugins.interop.cuda import retain_primary_context, usable_driver

__all__ = ["SLOT_BYTES", "CudaFileCopier", "Reader"]

log = logging.getLogger(__name__)

# (descriptor, file offset, out): fill `out` exactly, or raise FileReadError.
Reader = Callable[[int, int, memoryview], None]

# 16 MiB slots (the Vulkan engine's staging slot): CUDA copied 16 MiB pieces at 54.6 GB/s (H100).
SLOT_BYTES = 16 << 20
# Two per copy in flight (the loader keeps three), so each reads one while the other is sent.
SLOTS = 6
_NON_BLOCKING = 1  # CU_STREAM_NON_BLOCKING: no implicit order with the legacy default stream
_NO_TIMING = 2  # CU_EVENT_DISABLE_TIMING: the cheapest event


class CudaFileCopier:
    """A pinned ring and a stream in the primary context of one CUDA device, fed by `read`.
    Made once per backend and device (the ring's pinning costs milliseconds), closed at the
    backend's shutdown."""

    def __init__(self, ordinal: int, read: Reader) -> None:
        driver = usable_driver()
        self._driver = driver
        self.ordinal = ordinal
        self._read = read
        self._device, self._context = retain_primary_context(driver, ordinal)
        self._stream = ctypes.c_void_p()
        self._host = ctypes.c_void_p()
        self._events: list[ctypes.c_void_p] = []
        self._closed = False
        self._active = 0  # copies running: close() waits for them
        self._state = threading.Condition()
        self.copied_bytes = 0  # by the copies that succeeded
        try:
            with driver.in_context(self._context):
                driver.check(
                    driver.stream_create(ctypes.byref(self._stream), _NON_BLOCKING), "cuStreamCreate"
                )
                driver.check(
                    driver.host_alloc(ctypes.byref(self._host), SLOTS * SLOT_BYTES, 0), "cuMemHostAlloc"
                )
                for _ in range(SLOTS):
                    event = ctypes.c_void_p()
                    driver.check(driver.event_create(ctypes.byref(event), _NO_TIMING), "cuEventCreate")
                    self._events.append(event)
        except BaseException:
            self._release()
            raise
        base = int(self._host.value or 0)
        ring = (ctypes.c_ubyte * (SLOTS * SLOT_BYTES)).from_address(base)
        whole = memoryview(ring).cast("B")
        self._slots = [
            (base + i * SLOT_BYTES, whole[i * SLOT_BYTES : (i + 1) * SLOT_BYTES]) for i in range(SLOTS)
        ]
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(SLOTS):
            self._free.put(slot)

    def copy(self, fd: int, file_offset: int, size: int, device_pointer: int) -> None:
        """Copy `size` bytes of file `fd` from `file_offset` to CUDA address `device_pointer`;
        blocking. `FileReadError` when the file cannot be read (or ends early), `InteropError`
        when CUDA refuses a step. Returns, or raises, only once no copy of this call can still
        write to the device."""
        with self._state:
            if self._closed:
                raise InteropError("the CUDA file copier was closed (its backend shut down)")
            self._active += 1
        try:
            self._copy(fd, file_offset, size, device_pointer)
        finally:
            with self._state:
                self._active -= 1
                self._state.notify_all()

    def _copy(self, fd: int, file_offset: int, size: int, device_pointer: int) -> None:
        driver = self._driver
        failure: BaseException | None = None
        try:
            with driver.in_context(self._context):
                for start in range(0, size, SLOT_BYTES):
                    self._slot(
                        fd, file_offset + start, device_pointer + start, min(SLOT_BYTES, size - start)
                    )
        except BaseException as exc:
            failure = exc
        try:
            self._finish()
        except InteropError as exc:
            if failure is None:
                raise
            log.warning("waiting for a failed copy's CUDA work failed too: %s", exc)
        if failure is not None:
            raise failure
        with self._state:
            self.copied_bytes += size

    def _slot(self, fd: int, file_offset: int, device_pointer: int, size: int) -> None:
        """Read one slot's bytes and send them (the context is current)."""
        driver = self._driver
        slot = self._free.get()
        try:
            address, view = self._slots[slot]
            # The slot's previous copy has left it (an event never recorded is complete).
            driver.check(driver.event_synchronize(self._events[slot]), "cuEventSynchronize")
            self._read(fd, file_offset, view[:size])
            driver.check(
                driver.copy_to_device_async(device_pointer, address, size, self._stream),
                "cuMemcpyHtoDAsync",
            )
            driver.check(driver.event_record(self._events[slot], self._stream), "cuEventRecord")
        finally:
            self._free.put(slot)

    @property
    def closed(self) -> bool:
        """Whether `close()` ran: the ring is freed and copies are refused."""
        return self._closed

    def _finish(self) -> None:
        """Wait for every copy issued so far on the stream (this call's among them)."""
        driver = self._driver
        event = ctypes.c_void_p()
        with driver.in_context(self._context):
            driver.check(driver.event_create(ctypes.byref(event), _NO_TIMING), "cuEventCreate")
            try:
                driver.check(driver.event_record(event, self._stream), "cuEventRecord")
                driver.check(driver.event_synchronize(event), "cuEventSynchronize")
            finally:
                driver.event_destroy(event)

    def close(self) -> None:
        """Wait for the copies running, then free the stream and the ring (idempotent); later
        copies are refused."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            while self._active:
                self._state.wait()
        self._slots.clear()
        self._release()

    def _release(self) -> None:
        driver = self._driver
        try:
            with driver.in_context(self._context):
                if self._stream.value:
                    driver.check(driver.stream_synchronize(self._stream), "cuStreamSynchronize")
                for event in self._events:
                    driver.event_destroy(event)
                if self._host.value:
                    driver.host_free(self._host)
                if self._stream.value:
                    driver.stream_destroy(self._stream)
        except InteropError as exc:
            log.warning("releasing the CUDA file copier of device %d failed: %s", self.ordinal, exc)
        finally:
            self._events.clear()
            self._host = ctypes.c_void_p()
            self._stream = ctypes.c_void_p()
            driver.primary_release(self._device)
