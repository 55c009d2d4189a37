"""What a load gives back: its tensors (`LoadedTensor`, weights/tensors.py), the allocations to
free, and progress reports."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from exo_gpu_plugins.errors import GPUError
from exo_gpu_plugins.models import MemoryHandle
from exo_gpu_plugins.weights.selection import LayerRange
from exo_gpu_plugins.weights.tensors import LoadedTensor

if TYPE_CHECKING:
    from exo_gpu_plugins.backend import GPUBackend
    from exo_gpu_plugins.interop.dlpack import TensorView
    from exo_gpu_plugins.interop.views import ExportDevice

__all__ = ["LoadProgress", "LoadedWeights", "PlacedWeights", "PlacementProgress"]

log = logging.getLogger(__name__)

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class LoadProgress(BaseModel):
    """How far a load is: reported once the first allocation is made, then after every copy."""

    model_config = _FROZEN

    bytes_done: int = Field(ge=0)
    bytes_total: int = Field(ge=0)
    tensors_done: int = Field(ge=0)
    tensors_total: int = Field(ge=0)
    seconds: float = Field(ge=0, description="since load_weights was called")


class LoadedWeights(BaseModel):
    """The tensors of a load and the allocations holding them; `await loaded.deallocate(backend)`
    frees every allocation (the verb of `GPUBackend.deallocate`; `free` is the older name).
    `total_bytes` counts tensor bytes; `allocated_bytes` adds the alignment padding between runs;
    `seconds` runs from the call to the last byte on the device."""

    model_config = _FROZEN

    device_id: str
    tensors: dict[str, LoadedTensor]
    handles: tuple[MemoryHandle, ...]
    total_bytes: int = Field(ge=0)
    allocated_bytes: int = Field(ge=0)
    seconds: float = Field(ge=0)
    files: tuple[str, ...]
    pack: Literal["file", "tensor"]
    layers: LayerRange | None = Field(
        default=None, description="the range loaded, with end and count resolved; None = every tensor"
    )
    exportable: bool = Field(
        default=False, description="the allocations were made exportable (CUDA views possible)"
    )

    @property
    def bytes_per_second(self) -> float | None:
        """Tensor bytes over `seconds`; None for a load too fast to time."""
        return self.total_bytes / self.seconds if self.seconds > 0 else None

    async def read(self, backend: GPUBackend[Any], name: str) -> bytes:
        """The bytes of tensor `name`, read back from the device (for checks, not a fast path)."""
        tensor = self.tensors[name]
        if tensor.handle is None:
            return b""
        return await backend.copy_from_device(tensor.handle, tensor.offset_bytes, tensor.size_bytes)

    async def views(
        self, backend: GPUBackend[Any], *, device: ExportDevice = "auto"
    ) -> dict[str, TensorView]:
        """Every tensor as a DLPack view of its bytes on the device (`backend.export_tensor`),
        with its safetensors dtype and shape, by name: no copy. A dtype DLPack cannot carry is an
        `InteropError` naming the tensor."""
        from exo_gpu_plugins.weights.tensors import tensor_views

        return await tensor_views(backend, self.tensors, device)

    async def to_torch(
        self, backend: GPUBackend[Any], *, device: ExportDevice = "auto"
    ) -> dict[str, Any]:
        """`dict[str, torch.Tensor]` over the loaded memory (torch is imported only here): the
        same names, dtypes, shapes and bytes as `safetensors.torch.load_file` gives, on CUDA
        where the backend exports there (`load_weights(..., exportable=True)`), else the CPU."""
        from exo_gpu_plugins.weights.tensors import torch_tensors

        return await torch_tensors(backend, self.tensors, device)

    async def verify(self, backend: GPUBackend[Any]) -> list[str]:
        """Read every tensor back and compare it with the file; returns the names that differ
        (empty when every byte is exact)."""
        from exo_gpu_plugins.weights.verify import mismatched_tensors

        return await mismatched_tensors(backend, self.tensors)

    async def deallocate(self, backend: GPUBackend[Any]) -> None:
        """Free every allocation of the load. Each handle is attempted even if one fails; the first
        failure is raised afterwards (a second `deallocate` raises `InvalidHandleError`)."""
        first: GPUError | None = None
        for handle in self.handles:
            try:
                await backend.deallocate(handle)
            except GPUError as exc:
                log.debug("freeing %s failed: %s", handle.handle_id, exc)
                first = first or exc
        if first is not None:
            raise first

    async def free(self, backend: GPUBackend[Any]) -> None:
        """The older name of `deallocate`, kept for exo code written against docs/exo-integration.md
        before version 0.3."""
        await self.deallocate(backend)


class PlacementProgress(BaseModel):
    """How far a load over several devices is: sent each time one device advances. `device` is
    that device's own progress; `bytes_done`/`bytes_total` count bytes landed on every device (a
    shared tensor once per device that holds it)."""

    model_config = _FROZEN

    device_id: str
    device: LoadProgress
    bytes_done: int = Field(ge=0)
    bytes_total: int = Field(ge=0)
    seconds: float = Field(ge=0, description="since the load was called")


class PlacedWeights(BaseModel):
    """A checkpoint loaded over several devices: each device's `LoadedWeights`, by device id in
    pipeline order. `read_bytes` were read from the files (each byte once); `delivered_bytes`
    landed on the devices; `seconds` runs from the call to the last byte on the last device."""

    model_config = _FROZEN

    weights: dict[str, LoadedWeights]
    files: tuple[str, ...]
    read_bytes: int = Field(ge=0)
    delivered_bytes: int = Field(ge=0)
    seconds: float = Field(ge=0)
    split: str = Field(description="the rule that placed the layers: memory, explicit or callable")

    @property
    def bytes_per_second(self) -> float | None:
        """Bytes delivered over `seconds`; None for a load too fast to time."""
        return self.delivered_bytes / self.seconds if self.seconds > 0 else None

    async def deallocate(self, backends: Sequence[tuple[GPUBackend[Any], str]]) -> None:
        """Free every device's allocations, with the backend each device id is paired with (the
        pairs the load was given). Every device is attempted; the first failure is raised after."""
        by_device = {device_id: backend for backend, device_id in backends}
        first: GPUError | None = None
        missing = [device_id for device_id in self.weights if device_id not in by_device]
        if missing:
            raise ValueError(f"no backend given for {', '.join(missing)}")
        for device_id, loaded in self.weights.items():
            try:
                await loaded.deallocate(by_device[device_id])
            except GPUError as exc:
                first = first or exc
        if first is not None:
            raise first
