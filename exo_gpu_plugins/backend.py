"""`GPUBackend`: the contract every backend keeps, and the checks that hold it for all of them.

The public methods (names and argument order follow exo's fork, so exo code runs unchanged) are
final: they check the backend's state, the device id, the handle and every argument, and only then
call the backend's hooks (`_allocate`, `_write`, ...: hooks.py, the spec a backend implements). A
backend author writes the hooks and never repeats a check; a bad call is refused before any
backend code runs, so it cannot touch memory.

Handles are owned by the core: each instance keeps a table from unguessable handle ids to the
backend's native allocation object (_handles.py). A freed, forged or foreign handle is simply not
in the table. Every operation passes the in-flight gate (_gate.py), so `shutdown()` waits for it.
Host buffers are in _host_buffers.py; the methods that hand memory to other code in place, in
_exports.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import final

from exo_gpu_plugins import arguments, file_copy
from exo_gpu_plugins._exports import ExportMethods
from exo_gpu_plugins._gate import Gate, State
from exo_gpu_plugins._handles import HostEntry, Live, new_handle
from exo_gpu_plugins._host_buffers import HostBufferMethods
from exo_gpu_plugins.errors import (
    BackendClosedError,
    DeviceNotFoundError,
    FileReadError,
    GPUError,
    InvalidHandleError,
)
from exo_gpu_plugins.hooks import HOOK_KINDS, NativeT
from exo_gpu_plugins.interop.views import CudaImports
from exo_gpu_plugins.models import (
    Capabilities,
    DeviceDescription,
    GPUDevice,
    MemoryHandle,
    MemoryReport,
)

__all__ = ["HOOK_KINDS", "GPUBackend"]


log = logging.getLogger(__name__)


class GPUBackend(HostBufferMethods[NativeT], ExportMethods[NativeT]):
    """Async GPU memory operations on the devices of one backend.

    Subclasses set `name` (the registry name and device-id prefix) and implement the hooks of
    `BackendHooks` (hooks.py). `NativeT` is whatever the backend uses to find an allocation.
    """

    def __init__(self) -> None:
        self._state_lock = threading.Lock()
        self._gate = Gate(self._closed_error)
        self._live: dict[str, Live[NativeT]] = {}
        self._host: dict[int, HostEntry] = {}
        self._descriptions: tuple[DeviceDescription, ...] = ()
        self._device_ids: tuple[str, ...] = ()
        self._index_of: dict[str, int] = {}
        self._cuda_imports = CudaImports()

    # ----------------------------------------------------------------------------------------------
    # Lifecycle

    @final
    async def initialize(self) -> None:
        """Open the backend; a second call does nothing. Raises `BackendUnavailableError`."""
        if self._gate.state is State.OPEN:
            return
        await asyncio.to_thread(self._initialize_blocking)

    @final
    async def shutdown(self) -> None:
        """Wait for operations in flight, free every allocation and host buffer and release the
        devices; afterwards every call is refused."""
        if self._gate.state is State.CLOSED:
            return
        await asyncio.to_thread(self._shutdown_blocking)

    async def __aenter__(self) -> GPUBackend[NativeT]:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    @property
    def is_open(self) -> bool:
        """True between a successful `initialize()` and `shutdown()`."""
        return self._gate.state is State.OPEN

    def _initialize_blocking(self) -> None:
        with self._state_lock:
            if self._gate.state is State.OPEN:
                return
            if self._gate.state is State.CLOSED:
                raise BackendClosedError(
                    f"backend {self.name!r} was shut down; create a new instance to use it again"
                )
            self._open()
            try:
                self._descriptions = self._checked_descriptions(self._discover_devices())
            except BaseException:
                self._descriptions = self._device_ids = ()
                self._close()
                raise
            self._index_of = {device_id: i for i, device_id in enumerate(self._device_ids)}
            self._gate.state = State.OPEN
            log.debug("backend %s open with %d device(s)", self.name, len(self._descriptions))

    def _checked_descriptions(self, found: object) -> tuple[DeviceDescription, ...]:
        """The hook's devices, refused with a message naming the fault when they are malformed."""
        owner = f"{type(self).__qualname__}._discover_devices()"
        if not isinstance(found, Sequence):
            raise TypeError(
                f"{owner} must return a sequence of DeviceDescription, not {type(found).__name__}"
            )
        descriptions = tuple(found)
        self._device_ids = tuple(f"{self.name}:{i}" for i in range(len(descriptions)))
        for index, description in enumerate(descriptions):
            if isinstance(description, GPUDevice) or not isinstance(description, DeviceDescription):
                raise TypeError(
                    f"{owner} returned a {type(description).__name__} for device {index}: return a "
                    "DeviceDescription; the core fills device_id, backend, backend_name and "
                    "memory_available itself"
                )
            total = self._memory_report(index).total_bytes
            if total != description.memory_bytes:
                raise GPUError(
                    f"{owner}: device {self.name}:{index} says memory_bytes={description.memory_bytes} "
                    f"but _memory_report() says total_bytes={total}; the two must agree"
                )
        return descriptions

    def _shutdown_blocking(self) -> None:
        with self._state_lock:
            if self._gate.state is State.CLOSED:
                return
            was_open = self._gate.state is State.OPEN
            self._gate.state = State.CLOSED  # from here on, new operations are refused
            self._gate.drain()  # and those already running finish first
            live = list(self._live.values())
            self._live.clear()
            hosts = list(self._host.values())
            self._host.clear()
            if not was_open:
                return
            for entry in live:
                try:
                    self._free(entry.native)
                except Exception:
                    log.exception(
                        "backend %s: freeing %s at shutdown failed", self.name, entry.handle.handle_id
                    )
            for host in hosts:
                host.buffer._mark_released()
                try:
                    self._release_host(host.native)
                except Exception:
                    log.exception("backend %s: releasing a host buffer at shutdown failed", self.name)
            try:
                self._close()
            finally:
                self._cuda_imports.close()  # the copiers' pinned rings, the held imports
            log.debug(
                "backend %s closed; freed %d allocation(s), %d host buffer(s)",
                self.name,
                len(live),
                len(hosts),
            )

    # ----------------------------------------------------------------------------------------------
    # Devices

    @final
    def list_devices(self) -> list[GPUDevice]:
        """The devices found at `initialize()`, each with its free memory as of this call."""
        self._require_open()
        return [self._device(index) for index in range(len(self._descriptions))]

    @final
    def get_device(self, device_id: str) -> GPUDevice | None:
        """The device with this id (free memory as of this call), or `None` when there is none."""
        self._require_open()
        if not isinstance(device_id, str):
            raise TypeError(f"device_id must be a str, not {type(device_id).__name__}")
        index = self._index_of.get(device_id)
        return None if index is None else self._device(index)

    @final
    def capabilities(self, device_id: str) -> Capabilities:
        """What this backend supports on the device."""
        with self._gate:
            return self._capabilities(self._device_index(device_id))

    @final
    async def get_device_properties(self, device_id: str) -> GPUDevice:
        """A fresh description of the device (free memory as of now)."""
        with self._gate:
            return self._device(self._device_index(device_id), strict=True)

    @final
    async def get_device_memory_info(self, device_id: str) -> MemoryReport:
        """Total, used, available and reserved bytes, and where the figures came from. The report
        is also a read-only mapping of the four figures, like the dict of exo's fork."""
        with self._gate:
            return self._memory_report(self._device_index(device_id))

    @final
    async def get_device_temperature(self, device_id: str) -> float | None:
        """Degrees Celsius, read now; `None` when this device has no temperature source."""
        with self._gate:
            return self._temperature(self._device_index(device_id))

    @final
    async def get_device_power_usage(self, device_id: str) -> float | None:
        """Watts drawn, read now; `None` when this device has no power source."""
        with self._gate:
            return self._power(self._device_index(device_id))

    @final
    async def get_device_clock_rate(self, device_id: str) -> int | None:
        """Current graphics clock in MHz; `None` when this device has no clock source."""
        with self._gate:
            return self._clock_rate(self._device_index(device_id))

    @final
    async def get_device_utilization(self, device_id: str) -> float | None:
        """Percent of time the device was busy over the driver's last sample period, read now;
        `None` when this device has no utilization source."""
        with self._gate:
            return self._utilization(self._device_index(device_id))

    def _device(self, index: int, *, strict: bool = False) -> GPUDevice:
        """The description plus the core's figures. The free memory is one memory report (a driver
        budget query at most); where it fails, `list_devices()` still answers, with `None`."""
        try:
            available: int | None = self._memory_report(index).available_bytes
        except GPUError:
            if strict:
                raise
            log.warning("backend %s: memory report of device %d failed", self.name, index, exc_info=True)
            available = None
        return GPUDevice.from_description(
            self._descriptions[index],
            device_id=self._device_ids[index],
            backend=self.name,
            memory_available=available,
        )

    # ----------------------------------------------------------------------------------------------
    # Memory

    @final
    async def allocate(
        self, device_id: str, size_bytes: int, *, zeroed: bool = True, exportable: bool = False
    ) -> MemoryHandle:
        """Allocate `size_bytes` (> 0) on the device; the memory reads back as zeros.

        `zeroed=False` skips clearing it, for memory the caller overwrites whole before reading
        any of it (a model's weights): its bytes are then unspecified. `exportable=True` makes
        memory that can leave the backend (`export_memory`, CUDA views): where the device cannot
        (`"fd"` missing from `capabilities().export_kinds`) it raises `InteropError`."""
        with self._gate:
            index = self._device_index(device_id)
            size = arguments.allocation_size(size_bytes, "size_bytes", "device")
            arguments.flag(zeroed, "zeroed")
            arguments.flag(exportable, "exportable")
            if exportable:
                native = await self._allocate_exportable(index, size, zeroed)
            else:
                native = await self._allocate(index, size, zeroed)
            handle = new_handle(self._device_ids[index], size)
            self._live[handle.handle_id] = Live(handle, native, index, exportable=exportable)
            return handle

    @final
    async def deallocate(self, handle: MemoryHandle) -> None:
        """Free the allocation. A handle that is not live here raises `InvalidHandleError`."""
        with self._gate:
            entry = self._entry(handle, "handle")
            if self._live.pop(entry.handle.handle_id, None) is None:
                raise InvalidHandleError(f"handle {entry.handle.handle_id} was freed concurrently")
            self._free(entry.native)
            if entry.exportable:  # only exportable memory can hold a CUDA import made ahead
                self._cuda_imports.forget(entry.handle.handle_id)

    @final
    async def copy_to_device(self, src: object, dst_handle: MemoryHandle, offset_bytes: int = 0) -> None:
        """Write the bytes of `src` (any contiguous buffer, or a HostBuffer) at `offset_bytes`."""
        with self._gate:
            entry = self._entry(dst_handle, "dst_handle")
            view = arguments.readable_view(src, "src")
            offset = arguments.non_negative(offset_bytes, "offset_bytes")
            arguments.check_range(offset, view.nbytes, entry.handle.size_bytes, "copy_to_device")
            if view.nbytes:
                await self._write(entry.native, offset, view)

    @final
    async def copy_file_to_device(
        self,
        src: object,
        dst_handle: MemoryHandle,
        offset_bytes: int = 0,
        *,
        file_offset: int = 0,
        size_bytes: int | None = None,
    ) -> int:
        """Copy `size_bytes` of a file from `file_offset` (default: to its end) into the allocation
        at `offset_bytes`; returns the byte count. `src` is a path, an open file or a descriptor.

        A range outside the file or the allocation raises `OutOfBoundsError` before anything is
        written; an unreadable file, an I/O error or a file that shrinks raises `FileReadError`.
        Into exportable memory that CUDA has imported, a page-cached range of 8 MiB or more goes
        over CUDA's copy engine (docs/interop.md)."""
        with self._gate:
            entry = self._entry(dst_handle, "dst_handle")
            offset = arguments.non_negative(offset_bytes, "offset_bytes")
            start = arguments.non_negative(file_offset, "file_offset")
            wanted = None if size_bytes is None else arguments.non_negative(size_bytes, "size_bytes")
            with file_copy.open_source(src) as (fd, file_size, label):
                size = file_size - start if wanted is None else wanted
                arguments.check_range(
                    start, max(size, 0), file_size, f"copy_file_to_device {label}", "file"
                )
                arguments.check_range(offset, size, entry.handle.size_bytes, "copy_file_to_device")
                if size:
                    try:
                        if not await self._copy_file_on_cuda(entry, offset, fd, start, size):
                            await self._write_from_file(entry.native, offset, fd, start, size)
                    except FileReadError as exc:
                        file_copy.name_file(exc, label, start, size, file_size)
                        raise
            return size

    @final
    async def copy_from_device(
        self, src_handle: MemoryHandle, offset_bytes: int = 0, size_bytes: int | None = None
    ) -> bytes:
        """The `size_bytes` bytes at `offset_bytes` (default: from the start to the end of the
        allocation), exactly as last written."""
        with self._gate:
            entry = self._entry(src_handle, "src_handle")
            offset = arguments.non_negative(offset_bytes, "offset_bytes")
            if size_bytes is None:
                arguments.check_range(offset, 0, entry.handle.size_bytes, "copy_from_device")
                size = entry.handle.size_bytes - offset
            else:
                size = arguments.non_negative(size_bytes, "size_bytes")
            arguments.check_range(offset, size, entry.handle.size_bytes, "copy_from_device")
            if size == 0:
                return b""
            return await self._read(entry.native, offset, size)

    @final
    async def copy_from_device_into(
        self, src_handle: MemoryHandle, offset_bytes: int, dst: object
    ) -> int:
        """Fill the writable buffer `dst` (or HostBuffer) from `offset_bytes` on; returns the count."""
        with self._gate:
            entry = self._entry(src_handle, "src_handle")
            view = arguments.writable_view(dst, "dst")
            offset = arguments.non_negative(offset_bytes, "offset_bytes")
            arguments.check_range(offset, view.nbytes, entry.handle.size_bytes, "copy_from_device_into")
            if view.nbytes:
                await self._read_into(entry.native, offset, view)
            return view.nbytes

    @final
    async def copy_device_to_device(
        self,
        src_handle: MemoryHandle,
        dst_handle: MemoryHandle,
        size_bytes: int,
        src_offset_bytes: int = 0,
        dst_offset_bytes: int = 0,
    ) -> None:
        """Copy between allocations, on one device or across devices; overlap acts like memmove."""
        with self._gate:
            src = self._entry(src_handle, "src_handle")
            dst = self._entry(dst_handle, "dst_handle")
            size = arguments.non_negative(size_bytes, "size_bytes")
            src_offset = arguments.non_negative(src_offset_bytes, "src_offset_bytes")
            dst_offset = arguments.non_negative(dst_offset_bytes, "dst_offset_bytes")
            arguments.check_range(src_offset, size, src.handle.size_bytes, "copy_device_to_device src")
            arguments.check_range(dst_offset, size, dst.handle.size_bytes, "copy_device_to_device dst")
            if size:
                await self._copy(src.native, src_offset, dst.native, dst_offset, size)

    @final
    async def synchronize(self, device_id: str) -> None:
        """Return once every operation issued on the device before this call has finished."""
        with self._gate:
            await self._synchronize(self._device_index(device_id))

    def live_handles(self) -> list[MemoryHandle]:
        """The handles allocated through this instance and not yet freed."""
        return [entry.handle for entry in list(self._live.values())]

    # ----------------------------------------------------------------------------------------------
    # Checks shared by every call

    def _require_open(self) -> None:
        if self._gate.state is not State.OPEN:
            raise self._closed_error()

    def _closed_error(self) -> BackendClosedError:
        if self._gate.state is State.CLOSED:
            return BackendClosedError(f"backend {self.name!r} was shut down")
        return BackendClosedError(f"backend {self.name!r} is not initialized; await initialize() first")

    def _device_index(self, device_id: object) -> int:
        index = self._index_of.get(device_id) if isinstance(device_id, str) else None
        if index is not None:
            return index
        if not isinstance(device_id, str):
            raise TypeError(f"device_id must be a str, not {type(device_id).__name__}")
        known = ", ".join(self._index_of) or "none"
        raise DeviceNotFoundError(f"no device {device_id!r} in backend {self.name!r} (devices: {known})")

    def _entry(self, handle: object, name: str) -> Live[NativeT]:
        if type(handle) is not MemoryHandle and not isinstance(handle, MemoryHandle):
            raise TypeError(f"{name} must be a MemoryHandle, not {type(handle).__name__}")
        entry = self._live.get(handle.handle_id)
        if entry is None or (entry.handle is not handle and entry.handle != handle):
            raise InvalidHandleError(
                f"{name} {handle.handle_id!r} is not a live allocation of this {self.name!r} "
                "backend (freed, forged, or from another backend instance)"
            )
        return entry
