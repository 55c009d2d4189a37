"""The public methods for host memory that copies with the device use directly: buffers the
backend allocates (`cudaHostAlloc`'s equivalent) and caller memory it registers
(`cudaHostRegister`'s). A part of `GPUBackend`, kept apart so that backend.py reads as the core
contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from exo_gpu_plugins import arguments
from exo_gpu_plugins._handles import HostEntry
from exo_gpu_plugins.errors import InvalidHandleError, OutOfMemoryError
from exo_gpu_plugins.hooks import BackendHooks, NativeT
from exo_gpu_plugins.host_buffer import HostBuffer

if TYPE_CHECKING:
    from exo_gpu_plugins._gate import Gate

__all__ = ["HostBufferMethods"]


class HostBufferMethods(BackendHooks[NativeT]):
    """`allocate_host_buffer`, `register_host_buffer`, `release_host_buffer` and
    `live_host_buffers` of `GPUBackend`."""

    if TYPE_CHECKING:  # kept by GPUBackend
        _gate: Gate
        _host: dict[int, HostEntry]
        _device_ids: tuple[str, ...]

        def _device_index(self, device_id: object) -> int: ...

    @final
    async def allocate_host_buffer(self, device_id: str, size_bytes: int) -> HostBuffer:
        """Zero-filled host memory for copies with the device (the equivalent of `cudaHostAlloc`).

        Where the backend can (`capabilities().pinned_host_memory`), the device reads and writes it
        directly, so a copy from or into it is pure DMA; elsewhere it is ordinary memory."""
        with self._gate:
            index = self._device_index(device_id)
            size = arguments.allocation_size(size_bytes, "size_bytes", "host")
            try:
                view, native = await self._allocate_host(index, size)
            except MemoryError:
                raise OutOfMemoryError(f"the host cannot hold a {size}-byte buffer") from None
            flat = arguments.writable_view(view, "_allocate_host() view")
            buffer = HostBuffer(
                self._device_ids[index], flat, pinned=native is not None, registered=False
            )
            self._host[id(buffer)] = HostEntry(buffer, native)
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
            self._host[id(host)] = HostEntry(host, native)
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
