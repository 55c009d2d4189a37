"""`GPUBackend`: the contract every backend keeps, and the checks that hold it for all of them.

The public methods (names and argument order follow exo's fork, so exo code runs unchanged) are
final: they check the backend's state, the device id, the handle and every argument, and only then
call the backend's hooks (`_allocate`, `_write`, ...). A backend author writes the hooks and never
repeats a check; a bad call is refused before any backend code runs, so it cannot touch memory.

Handles are owned by the core: each instance keeps a table from unguessable handle ids to the
backend's native allocation object. A freed, forged or foreign handle is simply not in the table.

Hooks come in two kinds, fixed per hook and checked when a subclass is defined: quick, plain `def`
hooks (describe, report, free, telemetry) and `async def` hooks for work that may wait on the
device (allocate, copies, synchronize). `HOOK_KINDS` lists them; docs/writing-a-backend.md says
what each one does.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import enum
import functools
import inspect
import logging
import os
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar, final

from pydantic import BaseModel

from exo_gpu_plugins import arguments, file_copy
from exo_gpu_plugins.errors import (
    BackendClosedError,
    DeviceNotFoundError,
    FileReadError,
    GPUError,
    InteropError,
    InvalidHandleError,
    OutOfMemoryError,
)
from exo_gpu_plugins.host_buffer import HostBuffer
from exo_gpu_plugins.interop.dlpack import TensorView
from exo_gpu_plugins.interop.memory import Retained
from exo_gpu_plugins.interop.sharing import SharedMemory
from exo_gpu_plugins.interop.views import (
    CudaImports,
    ExportDevice,
    TensorRequest,
    check_view,
    cpu_view,
)
from exo_gpu_plugins.models import (
    Capabilities,
    DeviceDescription,
    GPUDevice,
    MemoryHandle,
    MemoryReport,
)

__all__ = ["GPUBackend"]

log = logging.getLogger(__name__)

NativeT = TypeVar("NativeT")

_MAX_ALLOCATION = (1 << 63) - 1  # no device holds more; larger sizes are refused up front


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class _Live(Generic[NativeT]):
    """A live allocation: the handle given out and the backend's native object behind it.
    (A plain slotted class: a frozen dataclass costs three times as much to build, per allocate.)"""

    __slots__ = ("device_index", "handle", "native")

    def __init__(self, handle: MemoryHandle, native: NativeT, device_index: int) -> None:
        self.handle = handle
        self.native = native
        self.device_index = device_index


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


class _Gate:
    """Counts the operations in flight, refusing new ones once the backend is not open, so that
    `shutdown()` can wait for running copies before it frees their memory.

    The count is the length of a deque: `append` and `pop` are atomic, so no lock is taken per
    operation. An operation counts itself *before* it looks at the state, and shutdown marks the
    state closed *before* it waits for the count to reach zero, so no operation can slip past."""

    __slots__ = ("_backend", "_inflight")

    def __init__(self, backend: GPUBackend[Any]) -> None:
        self._backend = backend
        self._inflight: collections.deque[None] = collections.deque()

    def __enter__(self) -> None:
        self._inflight.append(None)
        if self._backend._state is not _State.OPEN:
            self._inflight.pop()
            raise self._backend._closed_error()

    def __exit__(self, *exc_info: object) -> None:
        self._inflight.pop()

    def drain(self) -> None:
        """Wait until no operation is in flight (the backend is already marked closed, so the
        count only falls). Shutdown is rare; polling keeps the per-operation path lock-free."""
        while self._inflight:
            time.sleep(0.001)


def _new_handle(device_id: str, size: int) -> MemoryHandle:
    """A MemoryHandle from values the core has already checked, without pydantic's validation
    (about 3 us per handle on a small machine, more than the rest of `allocate`)."""
    handle: MemoryHandle = _make_model(MemoryHandle)
    _set_attribute(
        handle,
        "__dict__",
        {
            "handle_id": _handle_ids.next(),
            "device_id": device_id,
            "size_bytes": size,
            "allocated_at": datetime.now(timezone.utc),
        },
    )
    # One shared set: a frozen model never adds to its fields-set, and copies take their own.
    _set_fields_set(handle, _HANDLE_FIELDS_SET)
    _set_extra(handle, None)
    _set_private(handle, None)
    return handle


_HANDLE_FIELDS_SET = set(MemoryHandle.model_fields)
# BaseModel's slots, set through their descriptors: a third cheaper than object.__setattr__.
_make_model = object.__new__
_set_attribute = object.__setattr__
_set_fields_set = vars(BaseModel)["__pydantic_fields_set__"].__set__
_set_extra = vars(BaseModel)["__pydantic_extra__"].__set__
_set_private = vars(BaseModel)["__pydantic_private__"].__set__


class _HostEntry:
    """A live host buffer: the object given out and the backend's native object behind it."""

    __slots__ = ("buffer", "native")

    def __init__(self, buffer: HostBuffer, native: object) -> None:
        self.buffer = buffer
        self.native = native


# Every hook of the spec and whether it is a coroutine function. A backend written the obvious way
# is right: what only looks something up is sync; what may wait on the device is async.
HOOK_KINDS: dict[str, bool] = {
    "_open": False,
    "_close": False,
    "_discover_devices": False,
    "_capabilities": False,
    "_memory_report": False,
    "_free": False,
    "_temperature": False,
    "_power": False,
    "_clock_rate": False,
    "_utilization": False,
    "_release_host": False,
    "_allocate": True,
    "_write": True,
    "_read_into": True,
    "_read": True,
    "_copy": True,
    "_synchronize": True,
    "_write_from_file": True,
    "_allocate_unzeroed": True,
    "_allocate_host": True,
    "_register_host": True,
    "_allocate_exportable": True,
    "_import_fd": True,
    "_export_fd": False,
    "_retain": False,
}

# Hooks of version 0.1 that no longer exist, and what replaced them (docs/writing-a-backend.md).
_REMOVED_HOOKS = {
    "_describe": "remove it: the core builds GPUDevice from _discover_devices() and _memory_report()",
    "_free_blocking": "merge it into `def _free(self, native)`, the one free hook (sync)",
}


class GPUBackend(abc.ABC, Generic[NativeT]):
    """Async GPU memory operations on the devices of one backend.

    Subclasses set `name` (the registry name and device-id prefix) and implement the hooks in the
    second half of this class. `NativeT` is whatever the backend uses to find an allocation.
    """

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for hook, advice in _REMOVED_HOOKS.items():
            if hook in cls.__dict__:
                raise TypeError(f"{cls.__qualname__}.{hook} is a hook of exo-gpu-plugins 0.1: {advice}")
        for hook, is_async in HOOK_KINDS.items():
            if hook not in cls.__dict__:
                continue
            function = inspect.unwrap(cls.__dict__[hook])
            if isinstance(function, (staticmethod, classmethod)):
                function = function.__func__
            if not callable(function):
                raise TypeError(
                    f"{cls.__qualname__}.{hook} must be a method, not {type(function).__name__}"
                )
            if inspect.iscoroutinefunction(function) != is_async:
                kind = "an `async def` method" if is_async else "a plain `def` method (not async)"
                why = (
                    "the core awaits it"
                    if is_async
                    else "the core calls it without await; it must return quickly"
                )
                raise TypeError(f"{cls.__qualname__}.{hook} must be {kind}: {why}")

    def __init__(self) -> None:
        self._state = _State.NEW
        self._state_lock = threading.Lock()
        self._gate = _Gate(self)
        self._live: dict[str, _Live[NativeT]] = {}
        self._host: dict[int, _HostEntry] = {}
        self._descriptions: tuple[DeviceDescription, ...] = ()
        self._device_ids: tuple[str, ...] = ()
        self._index_of: dict[str, int] = {}
        self._cuda_imports = CudaImports()

    # ----------------------------------------------------------------------------------------------
    # Lifecycle

    @final
    async def initialize(self) -> None:
        """Open the backend; a second call does nothing. Raises `BackendUnavailableError`."""
        if self._state is _State.OPEN:
            return
        await asyncio.to_thread(self._initialize_blocking)

    @final
    async def shutdown(self) -> None:
        """Wait for operations in flight, free every allocation and host buffer and release the
        devices; afterwards every call is refused."""
        if self._state is _State.CLOSED:
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
        return self._state is _State.OPEN

    def _initialize_blocking(self) -> None:
        with self._state_lock:
            if self._state is _State.OPEN:
                return
            if self._state is _State.CLOSED:
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
            self._state = _State.OPEN
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
            if self._state is _State.CLOSED:
                return
            was_open = self._state is _State.OPEN
            self._state = _State.CLOSED  # from here on, new operations are refused
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
            self._close()
            self._cuda_imports.forget()
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
            size = arguments.integer(size_bytes, "size_bytes")
            if size <= 0:
                raise ValueError(f"size_bytes must be > 0, got {size}")
            if zeroed is not True and zeroed is not False:
                raise TypeError(f"zeroed must be a bool, got {type(zeroed).__name__}")
            if exportable is not True and exportable is not False:
                raise TypeError(f"exportable must be a bool, got {type(exportable).__name__}")
            if size > _MAX_ALLOCATION:
                raise OutOfMemoryError(f"{size} bytes is more than any device can hold")
            if exportable:
                native = await self._allocate_exportable(index, size, zeroed)
            elif zeroed:
                native = await self._allocate(index, size)
            else:
                native = await self._allocate_unzeroed(index, size)
            handle = _new_handle(self._device_ids[index], size)
            self._live[handle.handle_id] = _Live(handle, native, index)
            return handle

    @final
    async def deallocate(self, handle: MemoryHandle) -> None:
        """Free the allocation. A handle that is not live here raises `InvalidHandleError`."""
        with self._gate:
            entry = self._entry(handle, "handle")
            if self._live.pop(entry.handle.handle_id, None) is None:
                raise InvalidHandleError(f"handle {entry.handle.handle_id} was freed concurrently")
            self._free(entry.native)
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
        written; an unreadable file, an I/O error or a file that shrinks raises `FileReadError`."""
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

    # ----------------------------------------------------------------------------------------------
    # Memory used in place by frameworks and other processes (docs/interop.md)

    @final
    async def export_tensor(
        self,
        handle: MemoryHandle,
        *,
        dtype: str = "U8",
        shape: Sequence[int] | None = None,
        offset_bytes: int = 0,
        device: ExportDevice = "auto",
    ) -> TensorView:
        """A DLPack view (`torch.from_dlpack(view)`, `numpy.from_dlpack(view)`, ...) of the
        allocation's bytes from `offset_bytes`, as a C-contiguous `dtype` (a safetensors dtype
        name) tensor of `shape` (default: the rest of the allocation, one dimension). No copy.

        `device="cpu"` views host-visible memory in place; `"cuda"` imports an exportable
        allocation into the CUDA device with the same UUID; `"auto"` takes CUDA where
        `capabilities().export_kinds` has it, else the CPU. Every operation issued on the device
        before this call has finished when it returns. The memory lives until the handle is
        freed *and* every view and tensor made from it is gone."""
        request = TensorRequest(handle, dtype, shape, offset_bytes)
        (view,) = await self.export_tensors([request], device=device)
        return view

    @final
    async def export_tensors(
        self, requests: Sequence[TensorRequest], *, device: ExportDevice = "auto"
    ) -> list[TensorView]:
        """`export_tensor` for many views at once (a checkpoint's tensors), in order: each device
        is synchronized once and each allocation imported into CUDA once."""
        with self._gate:
            checked: list[tuple[_Live[NativeT], str, tuple[int, ...], int]] = []
            for request in requests:
                if not isinstance(request, TensorRequest):
                    raise TypeError(f"requests must hold TensorRequest, not {type(request).__name__}")
                entry = self._entry(request.handle, "handle")
                offset = arguments.non_negative(request.offset_bytes, "offset_bytes")
                size = entry.handle.size_bytes
                dtype, dims, _ = check_view(request.dtype, request.shape, offset, size, "export_tensor")
                checked.append((entry, dtype, dims, offset))
            if device not in ("auto", "cpu", "cuda"):
                raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
            kinds: dict[int, str] = {}
            for entry, *_ in checked:
                index = entry.device_index
                if index not in kinds:
                    found = self._capabilities(index).export_kinds
                    kinds[index] = device if device != "auto" else ("cuda" if "cuda" in found else "cpu")
                    await self._synchronize(index)
            views: list[TensorView | None] = [None] * len(checked)
            retained: dict[str, Retained] = {}
            on_cuda: list[tuple[int, _Live[NativeT], str, tuple[int, ...], int]] = []
            for position, (entry, dtype, dims, offset) in enumerate(checked):
                if kinds[entry.device_index] == "cuda":
                    on_cuda.append((position, entry, dtype, dims, offset))
                    continue
                key = entry.handle.handle_id
                if key not in retained:
                    retained[key] = self._retain(entry.native)
                device_id = self._device_ids[entry.device_index]
                views[position] = cpu_view(retained[key], device_id, dtype, dims, offset)
            if on_cuda:  # imports take a while: off the event loop, all in one hop
                for position, view in await asyncio.to_thread(self._cuda_views, on_cuda):
                    views[position] = view
            return [view for view in views if view is not None]

    def _cuda_views(
        self, wanted: list[tuple[int, _Live[NativeT], str, tuple[int, ...], int]]
    ) -> list[tuple[int, TensorView]]:
        made = []
        for position, entry, dtype, dims, offset in wanted:
            view = self._cuda_imports.view(
                entry.handle.handle_id,
                functools.partial(self._export_fd, entry.native),
                functools.partial(self._retain, entry.native),
                dtype,
                dims,
                offset,
            )
            made.append((position, view))
        return made

    @final
    async def prepare_export(self, handle: MemoryHandle) -> None:
        """Do now, without waiting for the device, what a later CUDA view of this exportable
        allocation needs first (importing it into CUDA), so that the view is quick: the weights
        loader calls it while its copies still fill the allocation. Nothing happens where the
        device has no "cuda" export kind; a failure is left for the view to report."""
        with self._gate:
            entry = self._entry(handle, "handle")
            if "cuda" not in self._capabilities(entry.device_index).export_kinds:
                return
            native = entry.native
            try:
                await asyncio.to_thread(
                    self._cuda_imports.prepare,
                    entry.handle.handle_id,
                    functools.partial(self._export_fd, native),
                    functools.partial(self._retain, native),
                )
            except GPUError as exc:
                log.debug("preparing the CUDA import of %s failed: %s", handle.handle_id, exc)

    @final
    async def export_memory(self, handle: MemoryHandle) -> SharedMemory:
        """The allocation's memory as a file descriptor for another process (`send_shared`):
        a new `SharedMemory` that the caller owns and closes. The allocation must have been made
        with `exportable=True` (else `InteropError`). Every operation issued on the device before
        this call has finished when it returns."""
        with self._gate:
            entry = self._entry(handle, "handle")
            await self._synchronize(entry.device_index)
            return self._export_fd(entry.native)

    @final
    async def import_memory(self, device_id: str, shared: SharedMemory) -> MemoryHandle:
        """Open memory another process (or instance) shared as a new allocation of this one, on
        `device_id`; `shared` stays the caller's to close. A descriptor of the wrong kind, size
        or device is refused with `InteropError` before anything is opened."""
        with self._gate:
            index = self._device_index(device_id)
            if not isinstance(shared, SharedMemory):
                raise TypeError(f"shared must be a SharedMemory, not {type(shared).__name__}")
            if shared.backend != self.name:
                raise InteropError(
                    f"the memory was shared by the {shared.backend!r} backend; the {self.name!r} "
                    "backend cannot open it"
                )
            shared.check_descriptor()
            native = await self._import_fd(index, shared)
            handle = _new_handle(self._device_ids[index], shared.size_bytes)
            self._live[handle.handle_id] = _Live(handle, native, index)
            return handle

    def live_handles(self) -> list[MemoryHandle]:
        """The handles allocated through this instance and not yet freed."""
        return [entry.handle for entry in list(self._live.values())]

    # ----------------------------------------------------------------------------------------------
    # Host buffers: host memory that copies to and from the device use directly

    @final
    async def allocate_host_buffer(self, device_id: str, size_bytes: int) -> HostBuffer:
        """Zero-filled host memory for copies with the device (the equivalent of `cudaHostAlloc`).

        Where the backend can (`capabilities().pinned_host_memory`), the device reads and writes it
        directly, so a copy from or into it is pure DMA; elsewhere it is ordinary memory."""
        with self._gate:
            index = self._device_index(device_id)
            size = arguments.integer(size_bytes, "size_bytes")
            if size <= 0:
                raise ValueError(f"size_bytes must be > 0, got {size}")
            if size > _MAX_ALLOCATION:
                raise OutOfMemoryError(f"{size} bytes is more than any host can hold")
            try:
                view, native = await self._allocate_host(index, size)
            except MemoryError:
                raise OutOfMemoryError(f"the host cannot hold a {size}-byte buffer") from None
            flat = arguments.writable_view(view, "_allocate_host() view")
            buffer = HostBuffer(
                self._device_ids[index], flat, pinned=native is not None, registered=False
            )
            self._host[id(buffer)] = _HostEntry(buffer, native)
            return buffer

    @final
    async def register_host_buffer(self, device_id: str, buffer: object) -> HostBuffer:
        """Register a caller's buffer once so that later copies from or into it need no staging
        copy (the equivalent of `cudaHostRegister`). The caller keeps the memory; release the
        registration with `release_host_buffer()` (shutdown releases those left)."""
        with self._gate:
            index = self._device_index(device_id)
            view = arguments.readable_view(buffer, "buffer")
            if view.nbytes == 0:
                raise ValueError("buffer must hold at least one byte")
            native = await self._register_host(index, view)
            host = HostBuffer(self._device_ids[index], view, pinned=native is not None, registered=True)
            self._host[id(host)] = _HostEntry(host, native)
            return host

    @final
    async def release_host_buffer(self, host_buffer: HostBuffer) -> None:
        """Release a host buffer or registration. Memoryviews taken from an allocated buffer stay
        valid memory; the device just stops using it directly."""
        with self._gate:
            if not isinstance(host_buffer, HostBuffer):
                raise TypeError(f"host_buffer must be a HostBuffer, not {type(host_buffer).__name__}")
            entry = self._host.get(id(host_buffer))
            if entry is None or entry.buffer is not host_buffer:
                raise InvalidHandleError(
                    "host_buffer is not a live host buffer of this backend instance "
                    "(released already, or from another instance)"
                )
            del self._host[id(host_buffer)]
            host_buffer._mark_released()
            self._release_host(entry.native)

    def live_host_buffers(self) -> list[HostBuffer]:
        """The host buffers allocated or registered through this instance and not yet released."""
        return [entry.buffer for entry in list(self._host.values())]

    # ----------------------------------------------------------------------------------------------
    # Checks shared by every call

    def _require_open(self) -> None:
        if self._state is not _State.OPEN:
            raise self._closed_error()

    def _closed_error(self) -> BackendClosedError:
        if self._state is _State.CLOSED:
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

    def _entry(self, handle: object, name: str) -> _Live[NativeT]:
        if type(handle) is not MemoryHandle and not isinstance(handle, MemoryHandle):
            raise TypeError(f"{name} must be a MemoryHandle, not {type(handle).__name__}")
        entry = self._live.get(handle.handle_id)
        if entry is None or (entry.handle is not handle and entry.handle != handle):
            raise InvalidHandleError(
                f"{name} {handle.handle_id!r} is not a live allocation of this {self.name!r} "
                "backend (freed, forged, or from another backend instance)"
            )
        return entry

    # ----------------------------------------------------------------------------------------------
    # Hooks a backend implements (HOOK_KINDS says which are async). Arguments arrive checked:
    # indexes exist, ranges are in bounds, sizes are > 0, views are flat unsigned-byte memoryviews.

    @abc.abstractmethod
    def _open(self) -> None:
        """Acquire the driver (runs in a worker thread). Raise `BackendUnavailableError`."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release the driver; every allocation has already been freed (runs in a worker thread)."""

    @abc.abstractmethod
    def _discover_devices(self) -> Sequence[DeviceDescription]:
        """Describe each device once, at open (runs in a worker thread); device `i` becomes
        `f'{name}:{i}'`. Only what the backend alone knows: the core adds id and free memory."""

    @abc.abstractmethod
    def _capabilities(self, index: int) -> Capabilities:
        """What the device supports."""

    @abc.abstractmethod
    def _memory_report(self, index: int) -> MemoryReport:
        """The device's memory now (a driver query at most: `list_devices()` calls it per device)."""

    @abc.abstractmethod
    async def _allocate(self, index: int, size: int) -> NativeT:
        """Allocate zero-filled memory; raise `OutOfMemoryError` when it does not fit."""

    async def _allocate_unzeroed(self, index: int, size: int) -> NativeT:
        """Allocate memory whose bytes the caller will overwrite before reading: skip clearing it
        where that saves time. The default allocates zeroed memory, which always satisfies it."""
        return await self._allocate(index, size)

    @abc.abstractmethod
    def _free(self, native: NativeT) -> None:
        """Free an allocation (already removed from the handle table). Called by `deallocate()`
        and, for allocations left over, by `shutdown()` from a worker thread."""

    @abc.abstractmethod
    async def _write(self, native: NativeT, offset: int, data: memoryview) -> None:
        """Write `data` at `offset`; done when the bytes are on the device."""

    @abc.abstractmethod
    async def _read_into(self, native: NativeT, offset: int, out: memoryview) -> None:
        """Fill `out` with the bytes at `offset`."""

    async def _read(self, native: NativeT, offset: int, size: int) -> bytes:
        """New `bytes` holding the range; override to fill the object directly."""
        buffer = bytearray(size)
        await self._read_into(native, offset, memoryview(buffer))
        return bytes(buffer)

    @abc.abstractmethod
    async def _copy(
        self, src: NativeT, src_offset: int, dst: NativeT, dst_offset: int, size: int
    ) -> None:
        """Copy between two allocations (maybe the same one, maybe on two devices): memmove."""

    @abc.abstractmethod
    async def _synchronize(self, index: int) -> None:
        """Wait for the device's outstanding work."""

    async def _write_from_file(
        self, native: NativeT, offset: int, fd: int, file_offset: int, size: int
    ) -> None:
        """Copy `size` bytes of the open file `fd` from `file_offset` to `offset`. The default reads
        chunks in worker threads, several at once, into host buffers from `_allocate_host` and
        writes each with `_write`; backends with a faster path override it."""
        await file_copy.pipelined_copy(self, native, offset, fd, file_offset, size)

    async def _allocate_host(self, index: int, size: int) -> tuple[memoryview, object | None]:
        """Host memory for copies with device `index`: (a writable view of zeroed memory, the
        native object to release it, or `None` when it is ordinary memory)."""
        return memoryview(bytearray(size)), None

    async def _register_host(self, index: int, view: memoryview) -> object | None:
        """Make the caller's memory directly accessible to the device; `None` when nothing was
        done (the default: copies from it go the ordinary way)."""
        return None

    def _release_host(self, native: object | None) -> None:
        """Release what `_allocate_host` or `_register_host` returned (never called with memory
        the device may still touch: every operation on it has finished)."""
        return None

    async def _allocate_exportable(self, index: int, size: int, zeroed: bool) -> NativeT:
        """Allocate memory that `_export_fd` can share (zero-filled when `zeroed`). Backends
        that declare `"fd"` in `export_kinds` override this."""
        raise InteropError(f"the {self.name!r} backend cannot make exportable memory")

    def _export_fd(self, native: NativeT) -> SharedMemory:
        """A new descriptor of an exportable allocation's memory; `InteropError` for memory that
        was not made exportable."""
        raise InteropError(f"the {self.name!r} backend cannot share memory with another process")

    async def _import_fd(self, index: int, shared: SharedMemory) -> NativeT:
        """Open shared memory (already checked: this backend's, a plausible descriptor) on
        device `index`; refuse, with `InteropError`, memory of another device or kind."""
        raise InteropError(f"the {self.name!r} backend cannot open shared memory")

    def _retain(self, native: NativeT) -> Retained:
        """What keeps the allocation's memory alive for a consumer after `_free` (and after
        `_close`), and where the CPU can use it in place (`host_address`, or None)."""
        raise InteropError(f"the {self.name!r} backend cannot hand its memory to other code")

    def _temperature(self, index: int) -> float | None:
        """A temperature reading in degrees Celsius; backends with a sensor override this."""
        return None

    def _power(self, index: int) -> float | None:
        """A power reading in watts; backends with a sensor override this."""
        return None

    def _clock_rate(self, index: int) -> int | None:
        """A graphics clock reading in MHz; backends with a sensor override this."""
        return None

    def _utilization(self, index: int) -> float | None:
        """Percent busy, 0-100; backends with a source override this."""
        return None
