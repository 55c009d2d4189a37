"""Shared device memory into CUDA: an opaque file descriptor imported with the CUDA driver API
(`cuImportExternalMemory`, `cuExternalMemoryGetMappedBuffer`) as a device pointer that DLPack
hands to torch or CuPy as `kDLCUDA`.

`libcuda.so.1` is opened at run time with ctypes: nothing CUDA is needed to install or import
the package, and a machine without it gets `InteropError` saying so. The CUDA device is the one
whose UUID (`cuDeviceGetUuid`) equals the exporting device's (Vulkan's deviceUUID on NVIDIA),
in its primary context, the one torch and CuPy use.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from exo_gpu_plugins.errors import InteropError
from exo_gpu_plugins.interop.sharing import SharedMemory

__all__ = [
    "CudaMapping",
    "cuda_ordinal",
    "cuda_unavailable_reason",
    "import_into_cuda",
    "release_later",
    "retain_primary_context",
    "usable_driver",
]

log = logging.getLogger(__name__)

_OPAQUE_FD = 1  # CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD
_DEDICATED = 1  # CUDA_EXTERNAL_MEMORY_DEDICATED


class _Win32(ctypes.Structure):
    _fields_ = (("handle", ctypes.c_void_p), ("name", ctypes.c_void_p))


class _Handle(ctypes.Union):
    _fields_ = (("fd", ctypes.c_int), ("win32", _Win32), ("nvSciBufObject", ctypes.c_void_p))


class _MemoryHandleDesc(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_int),
        ("handle", _Handle),
        ("size", ctypes.c_ulonglong),
        ("flags", ctypes.c_uint),
        ("reserved", ctypes.c_uint * 16),
    )


class _BufferDesc(ctypes.Structure):
    _fields_ = (
        ("offset", ctypes.c_ulonglong),
        ("size", ctypes.c_ulonglong),
        ("flags", ctypes.c_uint),
        ("reserved", ctypes.c_uint * 16),
    )


class _Driver:
    """The few driver-API entry points used here, resolved once."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._lib = library

        def bind(*names: str) -> Any:
            for name in names:
                function = getattr(library, name, None)
                if function is not None:
                    function.restype = ctypes.c_int
                    return function
            raise InteropError(f"libcuda.so.1 lacks {names[0]}: the NVIDIA driver is too old")

        self.init = bind("cuInit")
        self.device_count = bind("cuDeviceGetCount")
        self.device_get = bind("cuDeviceGet")
        self.device_uuid = bind("cuDeviceGetUuid_v2", "cuDeviceGetUuid")
        self.primary_retain = bind("cuDevicePrimaryCtxRetain")
        self.primary_release = bind("cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease")
        self.push = bind("cuCtxPushCurrent_v2", "cuCtxPushCurrent")
        self.pop = bind("cuCtxPopCurrent_v2", "cuCtxPopCurrent")
        self.synchronize = bind("cuCtxSynchronize")
        self.import_memory = bind("cuImportExternalMemory")
        self.mapped_buffer = bind("cuExternalMemoryGetMappedBuffer")
        self.destroy_memory = bind("cuDestroyExternalMemory")
        self.mem_free = bind("cuMemFree_v2", "cuMemFree")
        self.error_name = bind("cuGetErrorName")
        # The copy engine's path (interop/cuda_copy.py): pinned host slots, a stream, events.
        self.host_alloc = bind("cuMemHostAlloc")
        self.host_free = bind("cuMemFreeHost")
        self.stream_create = bind("cuStreamCreate")
        self.stream_destroy = bind("cuStreamDestroy_v2", "cuStreamDestroy")
        self.stream_synchronize = bind("cuStreamSynchronize")
        self.event_create = bind("cuEventCreate")
        self.event_record = bind("cuEventRecord")
        self.event_synchronize = bind("cuEventSynchronize")
        self.event_destroy = bind("cuEventDestroy_v2", "cuEventDestroy")
        self.copy_to_device_async = bind("cuMemcpyHtoDAsync_v2")  # v1 takes 32-bit addresses
        self.host_alloc.argtypes = (ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_uint)
        self.host_free.argtypes = (ctypes.c_void_p,)
        self.stream_create.argtypes = (ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint)
        self.stream_destroy.argtypes = (ctypes.c_void_p,)
        self.stream_synchronize.argtypes = (ctypes.c_void_p,)
        self.event_create.argtypes = (ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint)
        self.event_record.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
        self.event_synchronize.argtypes = (ctypes.c_void_p,)
        self.event_destroy.argtypes = (ctypes.c_void_p,)
        self.copy_to_device_async.argtypes = (
            ctypes.c_uint64,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
        )
        self.mapped_buffer.argtypes = (
            ctypes.POINTER(ctypes.c_uint64),
            ctypes.c_void_p,
            ctypes.POINTER(_BufferDesc),
        )
        self.destroy_memory.argtypes = (ctypes.c_void_p,)
        self.mem_free.argtypes = (ctypes.c_uint64,)
        self.push.argtypes = (ctypes.c_void_p,)

    def check(self, result: int, call: str) -> None:
        if result == 0:
            return
        name = ctypes.c_char_p()
        self.error_name(result, ctypes.byref(name))
        text = name.value.decode() if name.value else f"CUresult {result}"
        raise InteropError(f"{call} failed: {text}")

    def in_context(self, context: ctypes.c_void_p) -> _Pushed:
        return _Pushed(self, context)


class _Pushed:
    """`with driver.in_context(ctx):` makes `ctx` current on this thread for the block."""

    def __init__(self, driver: _Driver, context: ctypes.c_void_p) -> None:
        self._driver = driver
        self._context = context

    def __enter__(self) -> None:
        self._driver.check(self._driver.push(self._context), "cuCtxPushCurrent")

    def __exit__(self, *exc_info: object) -> None:
        popped = ctypes.c_void_p()
        self._driver.pop(ctypes.byref(popped))


_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _driver() -> _Driver | str:
    """The initialised driver, or why there is none (cached: the answer does not change)."""
    try:
        library = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        return f"the CUDA driver (libcuda.so.1) cannot be loaded: {exc}"
    try:
        driver = _Driver(library)
        driver.check(driver.init(0), "cuInit")
    except InteropError as exc:
        return str(exc)
    return driver


def cuda_unavailable_reason() -> str | None:
    """None when the CUDA driver is usable here, else why not."""
    found = _driver()
    return found if isinstance(found, str) else None


def usable_driver() -> _Driver:
    """The initialised driver; `InteropError` saying why there is none."""
    found = _driver()
    if isinstance(found, str):
        raise InteropError(found)
    return found


def retain_primary_context(driver: _Driver, ordinal: int) -> tuple[ctypes.c_int, ctypes.c_void_p]:
    """(device, its primary context), retained: the context torch and CuPy use, so what is made
    in it is theirs to use. Release with `driver.primary_release(device)`."""
    device = ctypes.c_int()
    driver.check(driver.device_get(ctypes.byref(device), ordinal), "cuDeviceGet")
    context = ctypes.c_void_p()
    driver.check(driver.primary_retain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
    return device, context


@functools.lru_cache(maxsize=64)
def cuda_ordinal(device_uuid: bytes) -> int | None:
    """The CUDA device ordinal whose UUID equals `device_uuid` (16 bytes), or None (no driver,
    or no such device)."""
    found = _driver()
    if isinstance(found, str) or len(device_uuid) != 16:
        return None
    count = ctypes.c_int()
    if found.device_count(ctypes.byref(count)) != 0:
        return None
    for ordinal in range(count.value):
        device = ctypes.c_int()
        uuid = (ctypes.c_ubyte * 16)()
        if found.device_get(ctypes.byref(device), ordinal) != 0:
            continue
        if found.device_uuid(uuid, device) == 0 and bytes(uuid) == device_uuid:
            return ordinal
    return None


class CudaMapping:
    """Shared memory imported into CUDA and mapped as one device pointer. It holds `owner` (the
    exporting backend's retained memory) until `close()`, which waits for the context's work
    first, so no kernel still reads what is freed. Who closes it, and when, is its user's
    business (views.CudaImports counts the uses); a mapping nobody closed is freed with the
    process."""

    def __init__(self, shared: SharedMemory, ordinal: int, owner: object) -> None:
        _start_releaser()
        driver = usable_driver()
        self._driver = driver
        self.ordinal = ordinal
        self.size_bytes = shared.size_bytes
        self._owner: object | None = owner
        self._memory = ctypes.c_void_p()
        self._pointer = ctypes.c_uint64()
        self._device, context = retain_primary_context(driver, ordinal)
        self._context: ctypes.c_void_p | None = context
        try:
            self._import(shared)
        except BaseException:
            self.close()
            raise

    def _import(self, shared: SharedMemory) -> None:
        driver = self._driver
        assert self._context is not None
        with driver.in_context(self._context):
            descriptor = _MemoryHandleDesc()
            descriptor.type = _OPAQUE_FD
            fd = os.dup(shared.fd)  # CUDA owns the descriptor once the import succeeds
            descriptor.handle.fd = fd
            descriptor.size = shared.allocation_bytes
            descriptor.flags = _DEDICATED
            result = driver.import_memory(ctypes.byref(self._memory), ctypes.byref(descriptor))
            if result != 0:
                os.close(fd)
                driver.check(result, "cuImportExternalMemory")
            buffer = _BufferDesc()
            buffer.offset = 0
            buffer.size = shared.allocation_bytes
            driver.check(
                driver.mapped_buffer(ctypes.byref(self._pointer), self._memory, ctypes.byref(buffer)),
                "cuExternalMemoryGetMappedBuffer",
            )

    @property
    def pointer(self) -> int:
        """The device address of the memory's first byte."""
        return int(self._pointer.value)

    def close(self) -> None:
        """Free the mapping and the imported memory, then let the exporter's memory go
        (idempotent). Waits for the context's work first."""
        with _lock:
            context, self._context = self._context, None
        if context is None:
            return
        driver = self._driver
        try:
            with driver.in_context(context):
                driver.synchronize()
                if self._pointer.value:
                    driver.mem_free(self._pointer.value)
                if self._memory.value:
                    driver.destroy_memory(self._memory)
        except InteropError as exc:
            log.warning("releasing a CUDA import of shared memory failed: %s", exc)
        finally:
            driver.primary_release(self._device)
            self._owner = None


_release_queue: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
_releaser_lock = threading.Lock()
_releasers: list[threading.Thread] = []  # the one release thread, once started
_exiting = [False]  # set at interpreter exit: nothing is queued from then on
# How long the exit waits for the queued releases (each close waits for its CUDA context's work).
_EXIT_WAIT_S = 30.0


def _start_releaser() -> None:
    """Start the release thread (once), from ordinary code: `release_later` may be called from
    a `__del__` during garbage collection or interpreter exit, where starting a thread or
    taking a lock is unsafe."""
    with _releaser_lock:
        if _releasers or _exiting[0]:
            return
        thread = threading.Thread(target=_release_forever, name="exo-gpu-cuda-release", daemon=True)
        thread.start()
        _releasers.append(thread)


def release_later(work: Callable[[], object]) -> None:
    """Run `work` (a release: it may take locks and wait for a CUDA context) on the release
    thread, in the order given: a close waits for its context's work, so a long kernel delays
    the releases queued behind it. Takes no lock, so a `__del__` may call it, on whatever thread
    (the event loop's, a consumer's deleter). Once the interpreter is exiting nothing runs: the
    process's end frees what its drivers hold."""
    if not _exiting[0]:
        _release_queue.put(work)  # SimpleQueue.put is reentrant


def _release_forever() -> None:
    while True:
        work = _release_queue.get()
        if work is None:
            return
        try:
            work()
        except Exception:  # one failed release must not stop the others
            log.exception("a CUDA release failed")
        del work


def _stop_releaser() -> None:
    """At exit, let the release thread finish the releases it was given, then stop it. A daemon
    thread still inside the CUDA driver while the interpreter finalizes kills the process
    (SIGSEGV, seen on an H100 when a process exits right after its last tensor goes)."""
    with _releaser_lock:
        _exiting[0] = True
        threads = list(_releasers)
    for thread in threads:
        _release_queue.put(None)
        thread.join(_EXIT_WAIT_S)
        if thread.is_alive():
            log.warning("CUDA imports still closing after %.0f s at exit", _EXIT_WAIT_S)


atexit.register(_stop_releaser)  # at import: registering during exit may never run


def import_into_cuda(shared: SharedMemory, owner: object) -> CudaMapping:
    """Import `shared` into the CUDA device with its device UUID; `InteropError` naming what is
    missing (the driver, a device with that UUID)."""
    reason = cuda_unavailable_reason()
    if reason is not None:
        raise InteropError(reason)
    if shared.handle_type != "opaque-fd" or shared.device_uuid is None:
        raise InteropError(
            f"memory shared as {shared.handle_type} by the {shared.backend} backend cannot be "
            "imported into CUDA (it takes opaque fds of a device with a UUID)"
        )
    ordinal = cuda_ordinal(bytes.fromhex(shared.device_uuid))
    if ordinal is None:
        raise InteropError(f"no CUDA device has the UUID {shared.device_uuid} of the exporting device")
    return CudaMapping(shared, ordinal, owner)
