"""`HostBuffer`: host memory set aside for copies with one device.

It comes from `allocate_host_buffer()` (memory the backend allocated, pinned where it can) or
`register_host_buffer()` (the caller's own memory, registered once). Either way copies accept it
wherever they accept a buffer, and the backend moves it by DMA when `pinned` is true. It is also a
DLPack producer (`numpy.from_dlpack(hb)`, `hb.as_tensor(dtype=..., shape=...)`): host memory,
viewed in place. After
`release_host_buffer()` its `view` is refused; memoryviews already taken from it stay valid memory
(the backend keeps the memory while they exist), they are just no longer pinned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from exo_gpu_plugins.errors import InvalidHandleError
from exo_gpu_plugins.interop.dlpack import DeviceKind, TensorView
from exo_gpu_plugins.interop.memory import buffer_address
from exo_gpu_plugins.interop.views import check_view

__all__ = ["HostBuffer"]


class HostBuffer:
    """Host memory for copies with `device_id`: `view` is a flat, byte-format memoryview."""

    __slots__ = ("_released", "_view", "device_id", "pinned", "registered", "size_bytes")

    def __init__(self, device_id: str, view: memoryview, *, pinned: bool, registered: bool) -> None:
        self.device_id = device_id
        self.size_bytes = view.nbytes
        self.pinned = pinned
        self.registered = registered
        self._view = view
        self._released = False

    @property
    def view(self) -> memoryview:
        """The memory, as a flat unsigned-byte memoryview (read-only where the registered buffer
        was). Raises `InvalidHandleError` once released."""
        if self._released:
            raise InvalidHandleError("this host buffer was released")
        return self._view

    @property
    def released(self) -> bool:
        """True once `release_host_buffer()` (or the backend's shutdown) released it."""
        return self._released

    def _mark_released(self) -> None:
        self._released = True

    def __buffer__(self, flags: int) -> memoryview:
        """The buffer protocol on Python >= 3.12: `memoryview(hb)`, `numpy.frombuffer(hb)`."""
        return self.view

    def as_tensor(
        self, *, dtype: str = "U8", shape: Sequence[int] | None = None, offset_bytes: int = 0
    ) -> TensorView:
        """A DLPack view (kDLCPU) of the buffer's memory from `offset_bytes`, as a `dtype`
        tensor of `shape` (default: the rest, one dimension). The view keeps the memory alive,
        also after the buffer is released."""
        view = self.view
        dtype, dims, offset = check_view(dtype, shape, offset_bytes, self.size_bytes, "as_tensor")
        return TensorView.checked(
            buffer_address(view), offset, dtype, dims, (DeviceKind.CPU, 0), view, view.readonly
        )

    def __dlpack__(self, **kwargs: Any) -> object:
        """The whole buffer as a one-dimensional uint8 DLPack tensor."""
        return self.as_tensor().__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (int(DeviceKind.CPU), 0)

    def __len__(self) -> int:
        return self.size_bytes

    def __repr__(self) -> str:
        kind = "registered" if self.registered else "allocated"
        state = "released" if self._released else ("pinned" if self.pinned else "pageable")
        return f"<HostBuffer {kind} {self.size_bytes} bytes for {self.device_id}, {state}>"
