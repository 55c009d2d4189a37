"""DLPack out: `TensorView`, a typed view of memory that torch, CuPy, numpy and JAX take in place.

A capsule is made by numpy (a dependency) over one byte that holds the view's owner, then pointed
at the view's memory with ctypes: numpy's deleter and capsule destructor are C functions, safe
from any thread and while an exception is being raised, and DLPack 1.x versioned capsules and
the legacy ones are both produced, whichever the consumer asks for. A view holds an *owner*:
whatever keeps the memory alive (the backend's retained allocation, a CUDA mapping, a host
buffer's memoryview).
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
import weakref
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from exo_gpu_plugins.dtypes import DTYPES, are_sizes, count_elements, shape_text
from exo_gpu_plugins.errors import InteropError
from exo_gpu_plugins.integers import integer, is_integer

__all__ = [
    "DLPACK_DTYPES",
    "DeviceKind",
    "TensorView",
    "checked_shape",
    "itemsize_of",
    "read_dlpack_bytes",
]


class DeviceKind(enum.IntEnum):
    """DLPack's device types that this project produces."""

    CPU = 1
    CUDA = 2


# safetensors dtype -> (DLPack type code, bits), for every dtype with a DLPack form (the sub-byte
# floats have none: they are refused with the dtype named).
DLPACK_DTYPES: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        name: (kind.dlpack_code, kind.bits)
        for name, kind in DTYPES.items()
        if kind.dlpack_code is not None
    }
)


# DLPack's shape and strides are int64_t: a size, or a stride, past this would reach the consumer
# wrapped around (or overflow inside it).
_INT64_END = 1 << 63


def checked_shape(shape: object, itemsize: int = 1) -> tuple[int, ...]:
    """`shape` as sizes DLPack can carry: ints (numpy's too, not bools) from 0 to 2**63 - 1 whose
    non-zero sizes span at most 2**63 - 1 bytes of `itemsize` elements (so every C-contiguous
    stride fits int64, even in an empty tensor); `TypeError` or `ValueError` naming what is
    wrong otherwise."""
    if type(shape) is tuple:
        dims: tuple[Any, ...] = shape
    elif isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"shape must be a sequence of ints, not {type(shape).__name__}")
    else:
        dims = tuple(shape)
    if not are_sizes(dims, _INT64_END):
        dims = tuple(_size(position, entry, dims) for position, entry in enumerate(dims))
    spanned = dims if 0 not in dims else [n for n in dims if n]
    if count_elements(spanned, (_INT64_END - 1) // itemsize) is None:
        raise ValueError(
            f"shape {shape_text(dims)}: its sizes other than 0 span more than 2**63 - 1 bytes of "
            f"{itemsize}-byte elements, past DLPack's int64 strides"
        )
    return dims


def _size(position: int, entry: object, dims: tuple[object, ...]) -> int:
    """One entry of a shape as a size, or the error naming it."""
    size = integer(entry, f"shape[{position}]")
    if not 0 <= size < _INT64_END:
        raise ValueError(
            f"shape[{position}] must be from 0 to 2**63 - 1 (DLPack's int64), got {size} "
            f"(shape {shape_text(dims)})"
        )
    return size


def itemsize_of(dtype: str) -> int:
    """Bytes per element of a dtype DLPack can carry; `InteropError` naming it otherwise."""
    found = DLPACK_DTYPES.get(dtype)
    if found is None:
        known = ", ".join(DLPACK_DTYPES)
        if dtype not in DTYPES:
            raise InteropError(
                f"dtype {dtype!r} is not a safetensors dtype name (they are upper case: {known})"
            )
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
_LEGACY = b"dltensor"
_VERSIONED = b"dltensor_versioned"

_capsule_valid = ctypes.pythonapi.PyCapsule_IsValid
_capsule_valid.restype = ctypes.c_int
_capsule_valid.argtypes = (ctypes.py_object, ctypes.c_char_p)
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = (ctypes.py_object, ctypes.c_char_p)
_capsule_rename = ctypes.pythonapi.PyCapsule_SetName
_capsule_rename.restype = ctypes.c_int
_capsule_rename.argtypes = (ctypes.py_object, ctypes.c_char_p)


class _Holder(bytearray):
    """One byte a numpy array is made over, holding the owner of the memory a capsule describes:
    the capsule's deleter (numpy's, in C) drops the array, the array drops this, this the owner."""

    owner: object


_live = [0]  # holders not yet collected: capsules and views a consumer still holds
_live_lock = threading.Lock()


def _count(delta: int) -> None:
    with _live_lock:
        _live[0] += delta


def live_exports() -> int:
    """Capsules handed out and not yet released by their consumers (for leak checks)."""
    with _live_lock:
        return _live[0]


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:  # a dependency of the package: only a broken install lacks it
        raise InteropError(f"DLPack export needs numpy, which cannot be imported: {exc}") from None
    return numpy


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
        shape = checked_shape(shape, itemsize_of(dtype))
        self._fill(address, byte_offset, dtype, shape, device, owner, readonly)

    @classmethod
    def checked(
        cls,
        address: int,
        byte_offset: int,
        dtype: str,
        shape: tuple[int, ...],
        device: tuple[DeviceKind, int],
        owner: object,
        readonly: bool = False,
    ) -> TensorView:
        """A view of a dtype and shape that `check_view` (or `checked_shape`) has passed, made
        without checking them again: a checkpoint's hundreds of views are made at once."""
        view = cls.__new__(cls)
        view._fill(address, byte_offset, dtype, shape, device, owner, readonly)
        return view

    def _fill(
        self,
        address: int,
        byte_offset: int,
        dtype: str,
        shape: tuple[int, ...],
        device: tuple[DeviceKind, int],
        owner: object,
        readonly: bool,
    ) -> None:
        self._address = address
        self.byte_offset = byte_offset
        self.dtype = dtype
        self.shape = shape
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
        if copy is not None and type(copy) is not bool:
            raise TypeError(f"copy must be True, False or None, not {copy!r}")
        if copy:
            raise BufferError("a TensorView is memory in place: it never copies (copy=True)")
        if dl_device is not None:
            if not _is_pair(dl_device):
                raise TypeError(f"dl_device must be a (device type, device id) pair, not {dl_device!r}")
            if tuple(dl_device) != self.__dlpack_device__():
                raise BufferError(
                    f"this view lives on DLPack device {self.__dlpack_device__()}, not "
                    f"{tuple(dl_device)}"
                )
        if max_version is not None and not _is_pair(max_version):
            raise TypeError(f"max_version must be a (major, minor) pair, not {max_version!r}")
        versioned = max_version is not None and max_version[0] >= 1
        return self._capsule(versioned)

    def _capsule(self, versioned: bool) -> object:
        """A capsule made by numpy over one byte that holds the owner, then pointed at this
        view's memory: its deleter and capsule destructor are numpy's, in C, which run safely
        from any thread and while an exception is being raised (Python callbacks through ctypes
        do neither), and keep the owner alive until the consumer lets go."""
        numpy = _numpy()
        holder = _Holder(1)
        holder.owner = self._owner
        _count(1)
        weakref.finalize(holder, _count, -1)
        ndim = len(self.shape)
        array = numpy.frombuffer(holder, dtype=numpy.uint8).reshape((1,) * ndim)
        if self.readonly:
            array.flags.writeable = False  # numpy marks a versioned capsule read-only, refuses legacy
        if versioned:
            try:
                capsule = array.__dlpack__(max_version=_VERSION)
            except TypeError:  # numpy < 2.1 makes legacy capsules only, which DLPack allows
                capsule = array.__dlpack__()
        else:
            capsule = array.__dlpack__()
        name = _VERSIONED if _capsule_valid(capsule, _VERSIONED) else _LEGACY
        pointer = _capsule_pointer(capsule, name)
        if name == _VERSIONED:
            versioned_struct = _ManagedVersioned.from_address(pointer)
            tensor = versioned_struct.dl_tensor
            if self.readonly:
                versioned_struct.flags |= _FLAG_READ_ONLY
        else:
            tensor = _Managed.from_address(pointer).dl_tensor
        code, bits = DLPACK_DTYPES[self.dtype]
        # The offset goes into the pointer: torch refuses a non-zero byte_offset.
        tensor.data = self._address + self.byte_offset
        tensor.device = _Device(int(self.device[0]), self.device[1])
        tensor.dtype = _DataType(code, bits, 1)
        for axis, extent in enumerate(self.shape):  # numpy's own shape array, ndim long
            tensor.shape[axis] = extent
        tensor.strides = None  # compact, row-major
        tensor.byte_offset = 0
        return capsule

    def __repr__(self) -> str:
        kind = self.device[0].name.lower()
        return f"<TensorView {self.dtype}{shape_text(self.shape)} on {kind}:{self.device[1]}>"


def _is_pair(value: object) -> bool:
    """A pair of ints, as DLPack's device and version arguments are."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        return False
    return all(map(is_integer, value))


def read_dlpack_bytes(producer: object) -> bytes:
    """The bytes of a host (kDLCPU) DLPack producer, through its capsule: a consumer that needs
    no framework (the kit checks exports with it). The capsule is used and released here."""
    dlpack = getattr(producer, "__dlpack__", None)
    if dlpack is None:
        raise TypeError(f"{type(producer).__name__} does not implement __dlpack__")
    capsule = dlpack(max_version=_VERSION)
    if _capsule_valid(capsule, _VERSIONED):
        managed_v = _ManagedVersioned.from_address(_capsule_pointer(capsule, _VERSIONED))
        tensor, deleter, pointer = managed_v.dl_tensor, managed_v.deleter, ctypes.addressof(managed_v)
        _capsule_rename(capsule, b"used_dltensor_versioned")
    elif _capsule_valid(capsule, _LEGACY):
        managed = _Managed.from_address(_capsule_pointer(capsule, _LEGACY))
        tensor, deleter, pointer = managed.dl_tensor, managed.deleter, ctypes.addressof(managed)
        _capsule_rename(capsule, b"used_dltensor")
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
