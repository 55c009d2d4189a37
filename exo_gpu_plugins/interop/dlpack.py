"""DLPack out: `TensorView`, a typed view of memory that torch, CuPy, numpy and JAX take in place.

The capsules are built here with ctypes (DLPack 1.x versioned ones, and the legacy ones for older
consumers), so no framework is needed to make them. A view holds an *owner*: whatever keeps the
memory alive (the backend's retained allocation, a CUDA mapping, a host buffer's memoryview).
Each capsule a consumer takes holds the owner too, until the consumer calls the deleter (when its
tensor goes), so memory outlives every tensor made from it, whatever happens to the handle or the
backend meanwhile.

`read_dlpack_bytes` is a minimal consumer of host (kDLCPU) capsules: the conformance kit and the
tests read views through it without numpy.
"""

from __future__ import annotations

import ctypes
import enum
import math
import threading
from collections.abc import Sequence
from typing import Any

from exo_gpu_plugins.errors import InteropError

__all__ = ["DLPACK_DTYPES", "DeviceKind", "TensorView", "itemsize_of", "read_dlpack_bytes"]


class DeviceKind(enum.IntEnum):
    """DLPack's device types that this project produces."""

    CPU = 1
    CUDA = 2


# safetensors dtype -> (DLPack type code, bits). Sub-byte floats (F4, F6_*) and C64 have no
# DLPack form a consumer takes for whole bytes: they are refused with the dtype named.
DLPACK_DTYPES: dict[str, tuple[int, int]] = {
    "BOOL": (6, 8),
    "U8": (1, 8),
    "I8": (0, 8),
    "U16": (1, 16),
    "I16": (0, 16),
    "U32": (1, 32),
    "I32": (0, 32),
    "U64": (1, 64),
    "I64": (0, 64),
    "F16": (2, 16),
    "BF16": (4, 16),
    "F32": (2, 32),
    "F64": (2, 64),
    "F8_E4M3": (10, 8),  # kDLFloat8_e4m3fn: safetensors' F8_E4M3 is torch's float8_e4m3fn
    "F8_E5M2": (12, 8),
    "F8_E8M0": (14, 8),  # kDLFloat8_e8m0fnu
}


def itemsize_of(dtype: str) -> int:
    """Bytes per element of a dtype DLPack can carry; `InteropError` naming it otherwise."""
    found = DLPACK_DTYPES.get(dtype)
    if found is None:
        known = ", ".join(DLPACK_DTYPES)
        raise InteropError(f"dtype {dtype!r} has no DLPack form a consumer can take (known: {known})")
    return found[1] // 8


# --------------------------------------------------------------------------------------------------
# The C structures (dlpack.h, version 1.1)


class _Device(ctypes.Structure):
    _fields_ = (("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32))


class _DataType(ctypes.Structure):
    _fields_ = (("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16))


class _Tensor(ctypes.Structure):
    _fields_ = (
        ("data", ctypes.c_void_p),
        ("device", _Device),
        ("ndim", ctypes.c_int32),
        ("dtype", _DataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    )


_Deleter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _Managed(ctypes.Structure):
    _fields_ = (("dl_tensor", _Tensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _Deleter))


class _Version(ctypes.Structure):
    _fields_ = (("major", ctypes.c_uint32), ("minor", ctypes.c_uint32))


class _ManagedVersioned(ctypes.Structure):
    _fields_ = (
        ("version", _Version),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", _Deleter),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", _Tensor),
    )


_VERSION = (1, 1)
_FLAG_READ_ONLY = 1
# Capsule names; module-level bytes, so the pointers PyCapsule keeps stay valid.
_LEGACY = b"dltensor"
_VERSIONED = b"dltensor_versioned"

_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)
_capsule_valid = ctypes.pythonapi.PyCapsule_IsValid
_capsule_valid.restype = ctypes.c_int
_capsule_valid.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
_capsule_rename = ctypes.pythonapi.PyCapsule_SetName
_capsule_rename.restype = ctypes.c_int
_capsule_rename.argtypes = (ctypes.py_object, ctypes.c_char_p)

# What each live managed tensor holds (its structure, shape array and owner), by address: the
# deleter drops the entry, whichever thread the consumer calls it from.
_live: dict[int, tuple[object, ...]] = {}
_live_lock = threading.Lock()


def _delete(
    address: int | None,
    live: dict[int, tuple[object, ...]] = _live,
    lock: threading.Lock = _live_lock,
) -> None:
    # The table and lock are bound as defaults: this runs from C, maybe while the interpreter
    # finalizes and module globals are already gone.
    if address:
        with lock:
            live.pop(address, None)


_deleter = _Deleter(_delete)


def _destroy_capsule(capsule: int | None) -> None:
    # A capsule no consumer took still owns its tensor (a taken one was renamed "used_...").
    for name in (_LEGACY, _VERSIONED):
        if capsule and _capsule_valid(capsule, name):
            _delete(_capsule_pointer(capsule, name))
            return


_capsule_destructor = _Deleter(_destroy_capsule)

# Both callbacks can be called while the interpreter finalizes (a framework tensor freed last):
# they are never freed, so the trampolines stay valid to the end.
ctypes.pythonapi.Py_IncRef(ctypes.py_object(_deleter))
ctypes.pythonapi.Py_IncRef(ctypes.py_object(_capsule_destructor))
_DESTRUCTOR = ctypes.cast(_capsule_destructor, ctypes.c_void_p).value


def live_exports() -> int:
    """Managed tensors handed out and not yet deleted by their consumers (for leak checks)."""
    with _live_lock:
        return len(_live)


# --------------------------------------------------------------------------------------------------


class TensorView:
    """A typed, C-contiguous view of `nbytes` bytes at `address + byte_offset` on one device,
    handed to frameworks through DLPack without a copy (`torch.from_dlpack(view)`).

    `owner` keeps the memory alive: the view and every tensor taken from it hold it."""

    __slots__ = ("_address", "_owner", "byte_offset", "device", "dtype", "readonly", "shape")

    def __init__(
        self,
        *,
        address: int,
        byte_offset: int,
        dtype: str,
        shape: Sequence[int],
        device: tuple[DeviceKind, int],
        owner: object,
        readonly: bool = False,
    ) -> None:
        itemsize_of(dtype)
        self._address = address
        self.byte_offset = byte_offset
        self.dtype = dtype
        self.shape = tuple(int(n) for n in shape)
        self.device = device
        self._owner = owner
        self.readonly = readonly

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * itemsize_of(self.dtype)

    @property
    def data_pointer(self) -> int:
        """Address of the first element (in the device's address space)."""
        return self._address + self.byte_offset

    def __dlpack_device__(self) -> tuple[int, int]:
        return (int(self.device[0]), self.device[1])

    def __dlpack__(
        self,
        *,
        stream: Any = None,
        max_version: tuple[int, int] | None = None,
        dl_device: tuple[int, int] | None = None,
        copy: bool | None = None,
    ) -> object:
        """A DLPack capsule (versioned when the consumer asks for version >= 1). The memory is
        ready: every backend operation on it finished before the view was made, so the consumer's
        `stream` needs no wait."""
        if copy:
            raise BufferError("a TensorView is memory in place: it never copies (copy=True)")
        if dl_device is not None and tuple(dl_device) != self.__dlpack_device__():
            raise BufferError(
                f"this view lives on DLPack device {self.__dlpack_device__()}, not {tuple(dl_device)}"
            )
        versioned = max_version is not None and max_version[0] >= 1
        return self._capsule(versioned)

    def _capsule(self, versioned: bool) -> object:
        ndim = len(self.shape)
        shape = (ctypes.c_int64 * max(ndim, 1))(*self.shape)
        code, bits = DLPACK_DTYPES[self.dtype]
        managed: _Managed | _ManagedVersioned
        managed = _ManagedVersioned() if versioned else _Managed()
        tensor = managed.dl_tensor
        # The offset goes into the pointer: torch refuses a non-zero byte_offset.
        tensor.data = self._address + self.byte_offset
        tensor.device = _Device(int(self.device[0]), self.device[1])
        tensor.ndim = ndim
        tensor.dtype = _DataType(code, bits, 1)
        tensor.shape = ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64))
        tensor.strides = None  # compact, row-major
        tensor.byte_offset = 0
        managed.deleter = _deleter
        if isinstance(managed, _ManagedVersioned):
            managed.version = _Version(*_VERSION)
            managed.flags = _FLAG_READ_ONLY if self.readonly else 0
        address = ctypes.addressof(managed)
        with _live_lock:
            _live[address] = (managed, shape, self._owner)
        try:
            return _capsule_new(address, _VERSIONED if versioned else _LEGACY, _DESTRUCTOR)
        except BaseException:
            _delete(address)
            raise

    def __repr__(self) -> str:
        kind = self.device[0].name.lower()
        return f"<TensorView {self.dtype}{list(self.shape)} on {kind}:{self.device[1]}>"


def read_dlpack_bytes(producer: object) -> bytes:
    """The bytes of a host (kDLCPU) DLPack producer, through its capsule: a consumer that needs
    no framework (the kit checks exports with it). The capsule is used and released here."""
    dlpack = getattr(producer, "__dlpack__", None)
    if dlpack is None:
        raise TypeError(f"{type(producer).__name__} does not implement __dlpack__")
    capsule = dlpack(max_version=_VERSION)
    capsule_object = ctypes.py_object(capsule)
    address = id(capsule)
    if _capsule_valid(address, _VERSIONED):
        managed_v = _ManagedVersioned.from_address(_capsule_pointer(address, _VERSIONED))
        tensor, deleter, pointer = managed_v.dl_tensor, managed_v.deleter, ctypes.addressof(managed_v)
        _capsule_rename(capsule_object, b"used_dltensor_versioned")
    elif _capsule_valid(address, _LEGACY):
        managed = _Managed.from_address(_capsule_pointer(address, _LEGACY))
        tensor, deleter, pointer = managed.dl_tensor, managed.deleter, ctypes.addressof(managed)
        _capsule_rename(capsule_object, b"used_dltensor")
    else:
        raise InteropError("the producer's __dlpack__ returned no DLPack capsule")
    try:
        if tensor.device.device_type != DeviceKind.CPU:
            raise InteropError(
                f"only host (kDLCPU) tensors can be read here, not device type "
                f"{tensor.device.device_type}"
            )
        count = math.prod(tensor.shape[i] for i in range(tensor.ndim))
        if tensor.strides:
            expected = 1
            for i in reversed(range(tensor.ndim)):
                if tensor.shape[i] != 1 and tensor.strides[i] != expected:
                    raise InteropError("only compact, row-major tensors can be read here")
                expected *= tensor.shape[i]
        nbytes = count * tensor.dtype.bits // 8 * tensor.dtype.lanes
        base = tensor.data or 0
        return ctypes.string_at(base + tensor.byte_offset, nbytes)
    finally:
        deleter(pointer)
