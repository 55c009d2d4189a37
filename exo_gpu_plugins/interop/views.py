"""How `GPUBackend.export_tensor` turns an allocation into a `TensorView`: argument checks, the
choice of device, and the one CUDA import per allocation that all its views share."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

from exo_gpu_plugins.dtypes import count_elements, shape_text
from exo_gpu_plugins.errors import InteropError, OutOfBoundsError
from exo_gpu_plugins.integers import integer
from exo_gpu_plugins.interop.dlpack import DeviceKind, TensorView, checked_shape, itemsize_of
from exo_gpu_plugins.interop.memory import Retained
from exo_gpu_plugins.interop.sharing import SharedMemory

__all__ = ["CudaImports", "ExportDevice", "TensorRequest", "check_view", "cpu_view"]

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


class CudaImports:
    """One CUDA import per allocation, shared by all its views and dropped with the last. An
    import made ahead of its views (`prepare`) is held until a view takes it or the allocation
    is freed (`forget`)."""

    def __init__(self) -> None:
        self._mappings: weakref.WeakValueDictionary[str, CudaMapping] = weakref.WeakValueDictionary()
        self._prepared: dict[str, CudaMapping] = {}
        self._lock = threading.Lock()
        self._copiers: dict[int, CudaFileCopier | None] = {}  # per CUDA device; None: failed
        self._copiers_lock = threading.Lock()
        self._closed = False

    def _mapping(
        self, handle_id: str, share: Callable[[], SharedMemory], retain: Callable[[], Retained]
    ) -> CudaMapping:
        from exo_gpu_plugins.interop.cuda import import_into_cuda

        found = self.held(handle_id)
        if found is not None:
            return found
        with share() as shared:
            mapping = import_into_cuda(shared, retain().owner)
        with self._lock:
            self._mappings[handle_id] = mapping
        return mapping

    def prepare(
        self, handle_id: str, share: Callable[[], SharedMemory], retain: Callable[[], Retained]
    ) -> None:
        """Import now (blocking: call it from a worker thread) and hold the import."""
        mapping = self._mapping(handle_id, share, retain)
        with self._lock:
            self._prepared[handle_id] = mapping

    def held(self, handle_id: str) -> CudaMapping | None:
        """The allocation's CUDA import, made ahead or by a view still alive (None: none, or
        one whose last view went and which is being closed)."""
        with self._lock:
            found = self._prepared.get(handle_id) or self._mappings.get(handle_id)
        return None if found is None or found.closing else found

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
        already made keep theirs."""
        with self._lock:
            if handle_id is None:
                self._prepared.clear()
            else:
                self._prepared.pop(handle_id, None)

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
        mapping = self._mapping(handle_id, share, retain)
        with self._lock:
            self._prepared.pop(handle_id, None)  # the views hold it from now on
        return TensorView.checked(
            mapping.pointer, offset, dtype, shape, (DeviceKind.CUDA, mapping.ordinal), mapping
        )
