"""A loaded tensor (where its bytes are on the device) and loaded tensors as framework tensors in
place: a DLPack view per tensor, and torch tensors made from them (torch is imported only when
asked for)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from exo_gpu_plugins.errors import InteropError
from exo_gpu_plugins.interop.dlpack import DeviceKind, TensorView, itemsize_of
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


async def tensor_views(
    backend: GPUBackend[Any], tensors: Mapping[str, LoadedTensor], device: ExportDevice
) -> dict[str, TensorView]:
    """One view per tensor, by name; zero-byte tensors get an empty view of no memory."""
    requests: list[TensorRequest] = []
    names: list[str] = []
    empty: list[str] = []
    for name, tensor in tensors.items():
        try:
            itemsize_of(tensor.dtype)
        except InteropError as exc:
            raise InteropError(f"tensor {name!r}: {exc}") from None
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
    """`torch.from_dlpack` of every view: tensors sharing the loaded memory."""
    try:
        from torch.utils.dlpack import from_dlpack
    except ImportError as exc:
        raise InteropError(f"to_torch needs torch, which cannot be imported: {exc}") from None
    views = await tensor_views(backend, tensors, device)
    made: dict[str, Any] = {}
    for name, view in views.items():
        try:
            if view.nbytes == 0:  # no memory behind it: made on the CPU, moved (0 bytes) beside the rest
                kind, ordinal = view.device
                on_cpu = TensorView(
                    address=0,
                    byte_offset=0,
                    dtype=view.dtype,
                    shape=view.shape,
                    device=(DeviceKind.CPU, 0),
                    owner=None,
                )
                where = f"cuda:{ordinal}" if kind is DeviceKind.CUDA else "cpu"
                made[name] = from_dlpack(on_cpu).to(where)
            else:
                made[name] = from_dlpack(view)
        except (BufferError, RuntimeError, TypeError, ValueError) as exc:
            raise InteropError(f"tensor {name!r} ({view.dtype}): torch cannot take it: {exc}") from exc
    return made
