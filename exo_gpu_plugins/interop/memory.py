"""What an export holds on to: `Retained`, the memory of an allocation kept alive for a consumer,
and where the CPU can reach it; `buffer_address`, the address behind any Python buffer."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

__all__ = ["Retained", "buffer_address"]


@dataclass(frozen=True, slots=True)
class Retained:
    """An allocation's memory for a consumer: `owner` keeps it alive (after `deallocate` or
    `shutdown` too) for as long as the consumer holds it; `host_address` is where the CPU reads
    and writes it in place (host-visible, coherent memory), else None."""

    owner: object
    host_address: int | None
    size_bytes: int
    readonly: bool = False


class _PyBuffer(ctypes.Structure):
    _fields_ = (
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    )


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = (ctypes.POINTER(_PyBuffer),)
_release_buffer.restype = None


def buffer_address(view: memoryview) -> int:
    """Address of the first byte of a contiguous buffer (read-only ones too). The caller keeps
    `view` alive for as long as it uses the address: a memoryview pins its exporter's memory."""
    if not view.contiguous:
        raise ValueError("the buffer is not contiguous")
    raw = _PyBuffer()
    if _get_buffer(view, ctypes.byref(raw), 0) != 0:  # PyBUF_SIMPLE
        raise ValueError("the object does not export a buffer")
    try:
        return int(raw.buf or 0)
    finally:
        _release_buffer(ctypes.byref(raw))
