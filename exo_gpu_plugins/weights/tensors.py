"""A loaded tensor (where its bytes are on the device) and loaded tensors as framework tensors in
place: a DLPack view per tensor, and torch tensors made from them (torch is imported only when
asked for)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from exo_gpu_plugins.dtypes import DTYPES
from exo_gpu_plugins.errors import InteropError
from exo_gpu_plugins.interop.dlpack import DeviceKind, TensorView, checked_shape, itemsize_of
from exo_gpu_plugins.interop.views import ExportDevice, TensorRequest
from exo_gpu_plugins.models import MemoryHandle

if TYPE_CHECKING:
    from exo_gpu_plugins.backend import GPUBackend

__all__ = ["LoadedTensor", "tensor_views", "torch_tensors"]


class LoadedTensor(BaseModel):
    """One tensor on the device: `size_bytes` bytes at `offset_bytes` of `handle`, copied from
    `file` at `file_offset`. A zero-byte tensor needs no memory: its `handle` is None."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    handle: MemoryHandle | None
    offset_bytes: int = Field(ge=0)
    size_bytes: int = Field(ge=0)
    dtype: str
    shape: tuple[int, ...]
    file: str
    file_offset: int = Field(ge=0)


def _check_exportable(tensors: Mapping[str, LoadedTensor]) -> None:
    """Every dtype and shape has a DLPack form, before anything is exported; else the tensor is
    named. A tensor with bytes has a shape DLPack can carry (its sizes multiply to a file's
    bytes); an empty one may not (safetensors allows sizes up to 2**64 - 1, DLPack to 2**63 - 1)."""
    itemsizes: dict[str, int] = {}  # a few dtypes, hundreds of tensors
    for name, tensor in tensors.items():
        try:
            itemsize = itemsizes.get(tensor.dtype)
            if itemsize is None:
                itemsize = itemsizes[tensor.dtype] = itemsize_of(tensor.dtype)
            if not tensor.size_bytes:
                checked_shape(tensor.shape, itemsize)
        except (InteropError, ValueError) as exc:
            raise InteropError(f"tensor {name!r}: {exc}") from None


async def tensor_views(
    backend: GPUBackend[Any], tensors: Mapping[str, LoadedTensor], device: ExportDevice
) -> dict[str, TensorView]:
    """One view per tensor, by name; zero-byte tensors get an empty view of no memory."""
    _check_exportable(tensors)
    requests: list[TensorRequest] = []
    names: list[str] = []
    empty: list[str] = []
    for name, tensor in tensors.items():
        if tensor.handle is None:
            empty.append(name)
            continue
        names.append(name)
        requests.append(TensorRequest(tensor.handle, tensor.dtype, tensor.shape, tensor.offset_bytes))
    made = await backend.export_tensors(requests, device=device)
    views: dict[str, TensorView] = dict(zip(names, made, strict=True))
    # An empty tensor lives where its neighbours do (the CPU when there are none).
    where = next(iter(views.values())).device if views else (DeviceKind.CPU, 0)
    for name in empty:
        tensor = tensors[name]
        views[name] = TensorView(
            address=0, byte_offset=0, dtype=tensor.dtype, shape=tensor.shape, device=where, owner=None
        )
    return {name: views[name] for name in tensors}


async def torch_tensors(
    backend: GPUBackend[Any], tensors: Mapping[str, LoadedTensor], device: ExportDevice
) -> dict[str, Any]:
    """Torch tensors sharing the loaded memory: one DLPack view (one capsule) per allocation,
    and each tensor a torch view of it at its offset, with its dtype and shape (hundreds of
    tensors cost hundreds of cheap torch views, not hundreds of capsules)."""
    try:
        import torch
        from torch.utils.dlpack import from_dlpack
    except ImportError as exc:
        raise InteropError(f"to_torch needs torch, which cannot be imported: {exc}") from None
    _check_exportable(tensors)
    handles: dict[str, MemoryHandle] = {}
    for tensor in tensors.values():
        if tensor.handle is not None:
            handles.setdefault(tensor.handle.handle_id, tensor.handle)
    requests = [TensorRequest(handle, "U8", (handle.size_bytes,), 0) for handle in handles.values()]
    whole = await backend.export_tensors(requests, device=device)
    bases = {key: from_dlpack(view) for key, view in zip(handles, whole, strict=True)}
    where = next(iter(bases.values())).device if bases else torch.device("cpu")
    # Each allocation viewed once per dtype; each tensor is then one `as_strided` of that view
    # (a third of the cost of slicing and viewing the bytes per tensor).
    typed: dict[tuple[str, str], Any] = {}
    made: dict[str, Any] = {}
    kinds: dict[str, Any] = {}
    for name, tensor in tensors.items():
        kind = kinds.get(tensor.dtype)
        if kind is None:
            kind = kinds[tensor.dtype] = getattr(torch, DTYPES[tensor.dtype].torch_name or "", None)
        if kind is None:
            raise InteropError(f"tensor {name!r}: this torch has no dtype for {tensor.dtype}")
        if tensor.handle is None:  # no memory behind it
            made[name] = torch.empty(tensor.shape, dtype=kind, device=where)
            continue
        start, itemsize = tensor.offset_bytes, kind.itemsize
        if start % itemsize:  # a misaligned tensor cannot be a view of other elements
            raise InteropError(
                f"tensor {name!r} ({tensor.dtype}) at offset {start} is not aligned to its "
                f"{itemsize}-byte elements, so torch cannot view it in place "
                "(LoadedWeights.read gives its bytes)"
            )
        key = (tensor.handle.handle_id, tensor.dtype)
        elements = typed.get(key)
        if elements is None:
            base = bases[tensor.handle.handle_id]
            elements = typed[key] = base[: base.numel() - base.numel() % itemsize].view(kind)
        made[name] = elements.as_strided(tensor.shape, _contiguous(tensor.shape), start // itemsize)
    return made


@functools.lru_cache(maxsize=1024)  # a checkpoint repeats a few shapes hundreds of times
def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides, in elements, of `shape`."""
    strides = [1] * len(shape)
    for axis in range(len(shape) - 2, -1, -1):
        strides[axis] = strides[axis + 1] * max(shape[axis + 1], 1)
    return tuple(strides)
