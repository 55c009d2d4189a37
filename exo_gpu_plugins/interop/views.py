"""How `GPUBackend.export_tensor` turns an allocation into a `TensorView`: argument checks, the
choice of device, and the one CUDA import per allocation that all its views share."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

from exo_gpu_plugins.dtypes import count_elements, shape_text
from exo_gpu_plugins.errors import InteropError, OutOfBoundsError
from exo_gpu_plugins.integers import integer
from exo_gpu_plugins.interop.dlpack import DeviceKind, TensorView, checked_shape, itemsize_of
from exo_gpu_plugins.interop.memory import Retained
from exo_gpu_plugins.interop.sharing import SharedMemory

__all__ = ["CudaImports", "CudaUse", "ExportDevice", "TensorRequest", "check_view", "cpu_view"]

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from exo_gpu_plugins.interop.cuda import CudaMapping
    from exo_gpu_plugins.interop.cuda_copy import CudaFileCopier, Reader
    from exo_gpu_plugins.models import MemoryHandle

ExportDevice = Literal["auto", "cpu", "cuda"]


class TensorRequest(NamedTuple):
    """One view `GPUBackend.export_tensors` should make: `dtype`/`shape` at `offset_bytes` of
    `handle` (shape None: the rest of the allocation, one dimension)."""

    handle: MemoryHandle
    dtype: str = "U8"
    shape: Sequence[int] | None = None
    offset_bytes: int = 0


def check_view(
    dtype: object, shape: object, offset_bytes: object, size: int, what: str
) -> tuple[str, tuple[int, ...], int]:
    """(dtype, shape, offset) of a view at `offset_bytes` of an allocation of `size` bytes; the
    shape defaults to the rest of the allocation, as one dimension. A wrong type is a
    `TypeError`, a negative number or a bad size a `ValueError`, a view past the end an
    `OutOfBoundsError`."""
    offset = integer(offset_bytes, "offset_bytes")
    if offset < 0:
        raise ValueError(f"offset_bytes must be >= 0, got {offset}")
    if not isinstance(dtype, str):
        raise TypeError(
            f"dtype must be a str (a safetensors dtype such as 'F16'), not {type(dtype).__name__}"
        )
    itemsize = itemsize_of(dtype)
    if offset > size:
        raise OutOfBoundsError(f"{what}: offset {offset} is past the allocation's {size} bytes")
    if shape is None:
        rest = size - offset
        if rest % itemsize:
            raise ValueError(
                f"{what}: the {rest} bytes from offset {offset} are not a whole number of {dtype} "
                f"elements; give a shape"
            )
        dims: tuple[int, ...] = (rest // itemsize,)
    else:
        dims = checked_shape(shape, itemsize)
    count = count_elements(dims, (size - offset) // itemsize)
    if count is None:
        raise OutOfBoundsError(
            f"{what}: {dtype}{shape_text(dims)} at offset {offset} reaches past the allocation's "
            f"{size} bytes"
        )
    return dtype, dims, offset


def cpu_view(
    retained: Retained, device_id: str, dtype: str, shape: tuple[int, ...], offset: int
) -> TensorView:
    """A kDLCPU view of host-visible memory, in place."""
    if retained.host_address is None:
        raise InteropError(
            f"this allocation on {device_id} is not host-visible memory, so the CPU cannot use it "
            "in place: view it on CUDA (device='cuda', allocated with exportable=True) or copy it "
            "with copy_from_device"
        )
    return TensorView.checked(
        retained.host_address,
        offset,
        dtype,
        shape,
        (DeviceKind.CPU, 0),
        retained.owner,
        retained.readonly,
    )


class CudaUse:
    """One use of an allocation's CUDA import: a view's (the owner its tensors and capsules
    hold) or a file copy's. When it goes, its release is queued for the CUDA release thread;
    the import closes there once it has no use left and no `prepare` holds it. Counting uses
    under a lock, rather than finding imports by weak reference, means a view made while the
    last one goes always gets an import that stays open."""

    __slots__ = ("_imports", "handle_id", "mapping")

    def __init__(self, imports: CudaImports, handle_id: str, mapping: CudaMapping) -> None:
        self._imports = imports
        self.handle_id = handle_id
        self.mapping = mapping

    @property
    def ordinal(self) -> int:
        return self.mapping.ordinal

    @property
    def pointer(self) -> int:
        return self.mapping.pointer

    def __del__(self) -> None:
        # Maybe inside a consumer's deleter or a garbage collection: only a queue put here.
        release_later = self._imports.release_later
        if release_later is not None:
            release_later(functools.partial(self._imports.release, self.handle_id))


@dataclass
class _Import:
    mapping: CudaMapping
    uses: int = 0  # the CudaUse objects alive or not yet released
    prepared: bool = False  # held by `prepare` until a view takes it or the memory is freed


class CudaImports:
    """One CUDA import per allocation, shared by all its uses (views, file copies) and closed
    on the CUDA release thread once the last goes. An import made ahead of its views
    (`prepare`) is held until a view takes it or the allocation is freed (`forget`)."""

    def __init__(self) -> None:
        self._imports: dict[str, _Import] = {}
        self._lock = threading.Lock()
        self._copiers: dict[int, CudaFileCopier | None] = {}  # per CUDA device; None: failed
        self._copiers_lock = threading.Lock()
        self._closed = False
        # cuda.release_later, set with the first import (whose mapping starts the release thread).
        self.release_later: Callable[[Callable[[], object]], None] | None = None

    def _import(
        self,
        handle_id: str,
        share: Callable[[], SharedMemory],
        retain: Callable[[], Retained],
        holder: Literal["prepare", "view"],
    ) -> CudaUse | None:
        """Count `holder` on the allocation's import, made now if there is none (blocking):
        a view gets a new use (and from then on the views hold the import), `prepare` none."""
        with self._lock:
            entry = self._imports.get(handle_id)
            if entry is not None:
                return self._count(entry, handle_id, holder)
        from exo_gpu_plugins.interop.cuda import import_into_cuda, release_later

        self.release_later = release_later
        with share() as shared:
            mapping = import_into_cuda(shared, retain().owner)
        with self._lock:
            entry = self._imports.get(handle_id)
            lost = entry is not None  # another thread's import won the race: ours is closed
            if entry is None:
                entry = self._imports[handle_id] = _Import(mapping)
            use = self._count(entry, handle_id, holder)
        if lost:
            release_later(mapping.close)
        return use

    def _count(
        self, entry: _Import, handle_id: str, holder: Literal["prepare", "view", "copy"]
    ) -> CudaUse | None:
        """(Under the lock.) Count `holder` on `entry`: a view or a copy gets a new use."""
        if holder == "prepare":
            entry.prepared = True
            return None
        if holder == "view":
            entry.prepared = False  # the views hold it from now on
        entry.uses += 1
        return CudaUse(self, handle_id, entry.mapping)

    def prepare(
        self, handle_id: str, share: Callable[[], SharedMemory], retain: Callable[[], Retained]
    ) -> None:
        """Import now (blocking: call it from a worker thread) and hold the import."""
        self._import(handle_id, share, retain, "prepare")

    def held(self, handle_id: str) -> CudaUse | None:
        """A new use of the allocation's CUDA import, made ahead or by a view still alive
        (None: there is none), for a file copy into it."""
        with self._lock:
            entry = self._imports.get(handle_id)
            return None if entry is None else self._count(entry, handle_id, "copy")

    def release(self, handle_id: str) -> None:
        """A use of the allocation's import went (on the release thread): close the import if
        it was the last and no `prepare` holds it. (An entry outlives its uses, so it is there.)"""
        with self._lock:
            entry = self._imports[handle_id]
            mapping = entry.mapping
            entry.uses -= 1
            if entry.uses or entry.prepared:
                return
            del self._imports[handle_id]
        mapping.close()

    def made_copier(self, ordinal: int) -> tuple[bool, CudaFileCopier | None]:
        """Without waiting: whether making the copier of CUDA device `ordinal` was tried (or
        the imports are closed), and the copier (None: not made, its making failed, or closed)."""
        with self._copiers_lock:
            if self._closed:
                return True, None
            return ordinal in self._copiers, self._copiers.get(ordinal)

    def copier(self, ordinal: int, read: Reader) -> CudaFileCopier | None:
        """The file copier of CUDA device `ordinal`, made on first use with `read` as its
        reader (blocking: pinning its ring takes milliseconds); None once its making failed
        (logged once: the copies keep the backend's own path) or after `close()`."""
        from exo_gpu_plugins.interop.cuda_copy import CudaFileCopier

        with self._copiers_lock:
            if self._closed:
                return None
            if ordinal not in self._copiers:
                try:
                    self._copiers[ordinal] = CudaFileCopier(ordinal, read)
                except Exception as exc:  # any failure leaves the backend's own path
                    log.warning("CUDA device %d: copies keep the backend's own path: %s", ordinal, exc)
                    self._copiers[ordinal] = None
            return self._copiers[ordinal]

    def close(self) -> None:
        """At shutdown: drop every held import, close the copiers (each waits for its copies)."""
        self.forget()
        with self._copiers_lock:
            self._closed = True
            copiers = [copier for copier in self._copiers.values() if copier is not None]
            self._copiers.clear()
        for copier in copiers:
            copier.close()

    def forget(self, handle_id: str | None = None) -> None:
        """Drop the held import of an allocation that was freed (all of them: None); views
        already made keep theirs. An import nothing uses any more closes on the release
        thread (closing waits for the CUDA context's work)."""
        unused = []
        with self._lock:
            for key in list(self._imports) if handle_id is None else [handle_id]:
                entry = self._imports.get(key)
                if entry is not None:
                    entry.prepared = False
                    if not entry.uses:
                        del self._imports[key]
                        unused.append(entry.mapping)
        for mapping in unused:
            if self.release_later is not None:
                self.release_later(mapping.close)

    def view(
        self,
        handle_id: str,
        share: Callable[[], SharedMemory],
        retain: Callable[[], Retained],
        dtype: str,
        shape: tuple[int, ...],
        offset: int,
    ) -> TensorView:
        itemsize = itemsize_of(dtype)
        if offset % itemsize:
            raise InteropError(
                f"a {dtype} view at offset {offset} would not be aligned to its {itemsize}-byte "
                "elements, which CUDA kernels require (a misaligned access poisons the CUDA context)"
            )
        use = self._import(handle_id, share, retain, "view")
        assert use is not None
        return TensorView.checked(use.pointer, offset, dtype, shape, (DeviceKind.CUDA, use.ordinal), use)
