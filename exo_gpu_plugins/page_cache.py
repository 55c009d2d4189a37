"""Whether a file range sits in the page cache: `mincore` over a few windows of a mapping of it.

Paths that read through the page cache (buffered `pread`) are the fast ones for a cached file but
not for a cold one, where reading with `O_DIRECT` streams at the disk's rate; the CUDA copy path
reads buffered, so it is taken only for a cached range (the Vulkan engine's own path reads a
cold one directly).
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os

__all__ = ["COLD_BELOW", "cached_fraction", "is_cached"]

# Below this fraction of pages in the page cache a range counts as cold (as the Vulkan engine's).
COLD_BELOW = 0.5
_SAMPLES = 64  # windows per range
_WINDOW = 64  # pages per window


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = (
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        )
        libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
    except (OSError, AttributeError):  # not Linux-like: no answer
        return None
    return libc


def cached_fraction(fd: int, start: int, size: int) -> float | None:
    """The fraction of the pages of `[start, start+size)` of file `fd` in the page cache, from up
    to 64 evenly spaced windows of 64 pages; None when it cannot be told (no `mincore`, a file
    that cannot be mapped, an empty range)."""
    libc = _libc()
    if libc is None or size <= 0 or start < 0 or not _mincore_tells(fd):
        return None
    page = mmap.PAGESIZE
    first = start // page * page
    length = start + size - first
    address = libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, first)
    if address is None or address == ctypes.c_void_p(-1).value:
        return None
    try:
        pages = -(-length // page)
        windows = min(-(-pages // _WINDOW), _SAMPLES)
        stride = max(pages // windows, _WINDOW)  # windows never overlap
        resident = ctypes.create_string_buffer(_WINDOW)
        seen = cached = 0
        for window in range(windows):
            at = window * stride
            count = min(_WINDOW, pages - at)
            span = min(count * page, length - at * page)
            if libc.mincore(address + at * page, span, resident) != 0:
                return None
            seen += count
            cached += sum(byte & 1 for byte in resident.raw[:count])
        return cached / seen if seen else None
    finally:
        libc.munmap(address, length)


def _mincore_tells(fd: int) -> bool:
    """Whether `mincore` tells the truth about this file: since Linux 5.0 it reports every page
    of a file mapping resident unless the caller owns the file or may write it (so that it
    cannot probe what other users read)."""
    try:
        owner = os.fstat(fd).st_uid
    except OSError:
        return False
    if os.geteuid() in (0, owner):
        return True
    return os.access(
        f"/proc/self/fd/{fd}", os.W_OK, effective_ids=os.access in os.supports_effective_ids
    )


def is_cached(fd: int, start: int, size: int) -> bool:
    """Whether most of the range is in the page cache (unknown counts as not)."""
    fraction = cached_fraction(fd, start, size)
    return fraction is not None and fraction >= COLD_BELOW
