"""The spec a backend implements: every hook, what it is given and what it returns.

A backend subclasses `GPUBackend` (backend.py) and writes these hooks; the public methods there
check every argument first, so a hook never repeats a check. Arguments arrive checked: indexes
exist, ranges are in bounds, sizes are > 0, views are flat unsigned-byte memoryviews.

Hooks come in two kinds, fixed per hook and checked when a subclass is defined: quick, plain `def`
hooks (describe, report, free, telemetry) and `async def` hooks for work that may wait on the
device (allocate, copies, synchronize). `HOOK_KINDS` lists them; docs/writing-a-backend.md says
what each one does. A hook of an earlier version (`REMOVED_HOOKS`) is refused with what replaced it.
"""

from __future__ import annotations

import abc
import functools
import inspect
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

from exo_gpu_plugins import file_copy
from exo_gpu_plugins.errors import InteropError
from exo_gpu_plugins.interop.memory import Retained
from exo_gpu_plugins.interop.sharing import SharedMemory
from exo_gpu_plugins.models import Capabilities, DeviceDescription, MemoryReport

__all__ = ["HOOK_KINDS", "REMOVED_HOOKS", "BackendHooks"]

NativeT = TypeVar("NativeT")

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
    "_allocate_host": True,
    "_register_host": True,
    "_allocate_exportable": True,
    "_import_fd": True,
    "_export_fd": False,
    "_retain": False,
    "_read_file_into": False,
}

# Hooks of earlier versions that no longer exist: the version that had them, and what replaced them
# (docs/writing-a-backend.md, "Migrating from earlier hooks").
REMOVED_HOOKS: dict[str, tuple[str, str]] = {
    "_describe": (
        "0.1",
        "remove it: the core builds GPUDevice from _discover_devices() and _memory_report()",
    ),
    "_free_blocking": ("0.1", "merge it into `def _free(self, native)`, the one free hook (sync)"),
    "_allocate_unzeroed": (
        "0.2",
        "merge it into `async def _allocate(self, index, size, zeroed)`: zeroed=False asks for "
        "memory the caller overwrites before reading",
    ),
}


class BackendHooks(abc.ABC, Generic[NativeT]):
    """The hooks of `GPUBackend`. `name` is the registry name and device-id prefix; `NativeT` is
    whatever the backend uses to find an allocation."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for hook, (version, advice) in REMOVED_HOOKS.items():
            if hook in cls.__dict__:
                raise TypeError(
                    f"{cls.__qualname__}.{hook} is a hook of exo-gpu-plugins {version}: {advice}"
                )
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
    async def _allocate(self, index: int, size: int, zeroed: bool) -> NativeT:
        """Allocate memory, zero-filled when `zeroed`; with `zeroed=False` the caller overwrites
        every byte before reading any, so skip the clearing where that saves time (zeroed memory
        is always right). Raise `OutOfMemoryError` when it does not fit."""

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
        write = functools.partial(self._write, native)
        await file_copy.pipelined_copy(write, offset, fd, file_offset, size)

    def _read_file_into(self, fd: int, file_offset: int, out: memoryview) -> None:
        """Fill `out` from the open file `fd` at `file_offset`, blocking (it runs in a worker
        thread): the reads of the CUDA copy path (docs/interop.md). The default is one `preadv`
        loop; a backend that reads in parallel without the GIL overrides it. A short read or an
        I/O error is `FileReadError`."""
        file_copy.read_exact(fd, out, file_offset)

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
