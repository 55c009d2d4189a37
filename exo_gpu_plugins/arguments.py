"""Argument checks shared by every backend, written once so that all backends refuse bad input alike.

Wrong types raise `TypeError`, negative numbers `ValueError`, ranges past the end of an allocation
`OutOfBoundsError`. Each check runs before any backend code, so a refused call has touched nothing.
"""

from __future__ import annotations

from exo_gpu_plugins.errors import OutOfBoundsError, OutOfMemoryError
from exo_gpu_plugins.host_buffer import HostBuffer
from exo_gpu_plugins.integers import integer

__all__ = ["allocation_size", "check_range", "non_negative", "readable_view", "writable_view"]

_MAX_ALLOCATION = (1 << 63) - 1  # no device or host holds more


def flag(value: object, name: str) -> bool:
    """A bool itself (not a truthy stand-in: `zeroed=0` is a mistake to report)."""
    if value is not True and value is not False:
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def non_negative(value: object, name: str) -> int:
    """An int >= 0 (offsets, copy sizes)."""
    number = integer(value, name)
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {number}")
    return number


def allocation_size(value: object, name: str, holder: str) -> int:
    """A size to allocate: an int > 0; one no `holder` ("device", "host") could hold is refused
    up front with `OutOfMemoryError`."""
    size = integer(value, name)
    if size <= 0:
        raise ValueError(f"{name} must be > 0, got {size}")
    if size > _MAX_ALLOCATION:
        raise OutOfMemoryError(f"{size} bytes is more than any {holder} can hold")
    return size


def check_range(offset: int, size: int, limit: int, what: str, noun: str = "allocation") -> None:
    """Refuse `[offset, offset + size)` unless it lies inside `[0, limit)` (of an allocation, or
    whatever `noun` names)."""
    if offset + size > limit or size < 0:
        raise OutOfBoundsError(
            f"{what}: bytes [{offset}, {offset + size}) reach past the end of the {limit}-byte {noun}"
        )


def readable_view(obj: object, name: str) -> memoryview:
    """A flat byte view of any C-contiguous buffer (bytes, bytearray, memoryview, numpy, mmap) or
    of a `HostBuffer`."""
    if isinstance(obj, HostBuffer):
        return obj.view
    try:
        view = memoryview(obj)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{name} must support the buffer protocol (bytes, bytearray, memoryview, numpy array), "
            f"not {type(obj).__name__}"
        ) from None
    return _flat(view, name)


def writable_view(obj: object, name: str) -> memoryview:
    """Like `readable_view`, and refuses read-only buffers such as `bytes`."""
    view = readable_view(obj, name)
    if view.readonly:
        raise TypeError(f"{name} must be writable (bytearray, numpy array, ...), not read-only")
    return view


def _flat(view: memoryview, name: str) -> memoryview:
    if not view.c_contiguous:
        raise TypeError(f"{name} must be C-contiguous; copy it first (e.g. numpy.ascontiguousarray)")
    if view.ndim == 1 and view.format == "B":
        return view
    return view.cast("B")
