"""`HostBuffer`: host memory set aside for copies with one device.

It comes from `allocate_host_buffer()` (memory the backend allocated, pinned where it can) or
`register_host_buffer()` (the caller's own memory, registered once). Either way copies accept it
wherever they accept a buffer, and the backend moves it by DMA when `pinned` is true. After
`release_host_buffer()` its `view` is refused; memoryviews already taken from it stay valid memory
(the backend keeps the memory while they exist), they are just no longer pinned.
"""

from __future__ import annotations

from exo_gpu_plugins.errors import InvalidHandleError

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

    def __len__(self) -> int:
        return self.size_bytes

    def __repr__(self) -> str:
        kind = "registered" if self.registered else "allocated"
        state = "released" if self._released else ("pinned" if self.pinned else "pageable")
        return f"<HostBuffer {kind} {self.size_bytes} bytes for {self.device_id}, {state}>"
