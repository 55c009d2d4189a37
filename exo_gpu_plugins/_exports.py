"""The public methods that hand device memory to other code in place: DLPack views for frameworks
(`export_tensor(s)`) and descriptors for other processes (`export_memory`, `import_memory`);
docs/interop.md. A part of `GPUBackend`, kept apart so that backend.py reads as the core contract.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, final

from exo_gpu_plugins._handles import Live, new_handle
from exo_gpu_plugins.config import env_choice
from exo_gpu_plugins.errors import GPUError, InteropError, InvalidHandleError
from exo_gpu_plugins.hooks import BackendHooks, NativeT
from exo_gpu_plugins.interop.dlpack import TensorView
from exo_gpu_plugins.interop.memory import Retained
from exo_gpu_plugins.interop.sharing import SharedMemory
from exo_gpu_plugins.interop.views import CudaImports, ExportDevice, TensorRequest, check_view, cpu_view
from exo_gpu_plugins.models import MemoryHandle
from exo_gpu_plugins.page_cache import is_cached
from exo_gpu_plugins.threads import to_the_end

if TYPE_CHECKING:
    from exo_gpu_plugins._gate import Gate

__all__ = ["ExportMethods"]

log = logging.getLogger(__name__)

# File copies at least this large into CUDA-imported memory go through CUDA (below it, the thread
# hop and the device synchronize outweigh the faster link).
CUDA_COPY_MIN_BYTES = 8 << 20
# "off" keeps every file copy on the backend's own path (docs/configuration.md).
ENV_CUDA_COPY = "EXO_GPU_CUDA_COPY"


class ExportMethods(BackendHooks[NativeT]):
    """`export_tensor`, `export_tensors`, `export_memory` and `import_memory` of `GPUBackend`."""

    if TYPE_CHECKING:  # kept by GPUBackend
        _gate: Gate
        _live: dict[str, Live[NativeT]]
        _device_ids: tuple[str, ...]
        _cuda_imports: CudaImports

        def _entry(self, handle: object, name: str) -> Live[NativeT]: ...

        def _device_index(self, device_id: object) -> int: ...

    @final
    async def export_tensor(
        self,
        handle: MemoryHandle,
        *,
        dtype: str = "U8",
        shape: Sequence[int] | None = None,
        offset_bytes: int = 0,
        device: ExportDevice = "auto",
    ) -> TensorView:
        """A DLPack view (`torch.from_dlpack(view)`, `numpy.from_dlpack(view)`, ...) of the
        allocation's bytes from `offset_bytes`, as a C-contiguous `dtype` (a safetensors dtype
        name) tensor of `shape` (default: the rest of the allocation, one dimension). No copy.

        `device="cpu"` views host-visible memory in place; `"cuda"` imports an exportable
        allocation into the CUDA device with the same UUID; `"auto"` takes CUDA for an exportable
        allocation where `capabilities().export_kinds` has it, else the CPU. Every operation
        issued on the device before this call has finished when it returns. The memory lives
        until the handle is freed *and* every view and tensor made from it is gone."""
        request = TensorRequest(handle, dtype, shape, offset_bytes)
        (view,) = await self.export_tensors([request], device=device)
        return view

    @final
    async def export_tensors(
        self, requests: Sequence[TensorRequest], *, device: ExportDevice = "auto"
    ) -> list[TensorView]:
        """`export_tensor` for many views at once (a checkpoint's tensors), in order: each device
        is synchronized once and each allocation imported into CUDA once."""
        with self._gate:
            checked: list[tuple[Live[NativeT], str, tuple[int, ...], int]] = []
            for request in requests:
                if not isinstance(request, TensorRequest):
                    raise TypeError(f"requests must hold TensorRequest, not {type(request).__name__}")
                entry = self._entry(request.handle, "handle")
                dtype, dims, offset = check_view(
                    request.dtype,
                    request.shape,
                    request.offset_bytes,
                    entry.handle.size_bytes,
                    "export_tensor",
                )
                checked.append((entry, dtype, dims, offset))
            if device not in ("auto", "cpu", "cuda"):
                raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
            kinds: dict[int, tuple[str, ...]] = {}
            for entry, *_ in checked:
                index = entry.device_index
                if index not in kinds:
                    kinds[index] = self._capabilities(index).export_kinds
                    await self._synchronize(index)
            for entry, *_ in checked:  # a deallocate may have run while the device was awaited
                if self._live.get(entry.handle.handle_id) is not entry:
                    raise InvalidHandleError(
                        f"handle {entry.handle.handle_id!r} was freed (deallocate or shutdown) "
                        "while its view waited for the device's work"
                    )
            views: list[TensorView | None] = [None] * len(checked)
            retained: dict[str, Retained] = {}
            on_cuda: list[tuple[int, Live[NativeT], str, tuple[int, ...], int]] = []
            for position, (entry, dtype, dims, offset) in enumerate(checked):
                # "auto": CUDA for exportable memory where the device exports there, else the CPU.
                cuda = "cuda" in kinds[entry.device_index] and entry.exportable
                if device == "cuda" and "cuda" not in kinds[entry.device_index]:
                    raise InteropError(
                        f"{self._device_ids[entry.device_index]} makes no CUDA views: its export "
                        f"kinds are {', '.join(kinds[entry.device_index]) or 'none'} ('cuda' needs "
                        "an NVIDIA device that the CUDA driver, libcuda.so.1, finds by UUID)"
                    )
                if device == "cuda" or (device == "auto" and cuda):
                    on_cuda.append((position, entry, dtype, dims, offset))
                    continue
                key = entry.handle.handle_id
                if key not in retained:
                    retained[key] = self._retain(entry.native)
                device_id = self._device_ids[entry.device_index]
                views[position] = cpu_view(retained[key], device_id, dtype, dims, offset)
            if on_cuda:  # imports take a while: off the event loop, all in one hop
                for position, view in await to_the_end(self._cuda_views, on_cuda):
                    views[position] = view
            return [view for view in views if view is not None]

    def _cuda_views(
        self, wanted: list[tuple[int, Live[NativeT], str, tuple[int, ...], int]]
    ) -> list[tuple[int, TensorView]]:
        made = []
        for position, entry, dtype, dims, offset in wanted:
            view = self._cuda_imports.view(
                entry.handle.handle_id,
                functools.partial(self._export_fd, entry.native),
                functools.partial(self._retain, entry.native),
                dtype,
                dims,
                offset,
            )
            made.append((position, view))
        return made

    async def _copy_file_on_cuda(
        self, entry: Live[NativeT], offset: int, fd: int, start: int, size: int
    ) -> bool:
        """Fill exportable memory that CUDA has imported (ahead of its views, as the weights
        loader asks, or for a view still alive) on CUDA's copy engine, when the file range is in
        the page cache: faster than Vulkan's DMA on NVIDIA (interop/cuda_copy.py). False when not
        taken; the backend's own path copies then."""
        if not entry.exportable or size < CUDA_COPY_MIN_BYTES:
            return False
        if env_choice(ENV_CUDA_COPY, ("on", "off"), "on") == "off":
            return False
        use = self._cuda_imports.held(entry.handle.handle_id)
        if use is None or not is_cached(fd, start, size):
            return False
        tried, copier = self._cuda_imports.made_copier(use.ordinal)
        if not tried:  # the first copy makes it, off the event loop (pinning takes milliseconds)
            copier = await to_the_end(self._cuda_imports.copier, use.ordinal, self._read_file_into)
        if copier is None:
            return False
        # The device's earlier work on this memory (its zeroing, say) ends before CUDA writes.
        await self._synchronize(entry.device_index)
        await to_the_end(copier.copy, fd, start, size, use.pointer + offset)
        return True

    @final
    async def prepare_export(self, handle: MemoryHandle) -> None:
        """Do now, without waiting for the device, what a later CUDA view of this exportable
        allocation needs first (importing it into CUDA), so that the view is quick, and so that
        file copies into it run on CUDA's copy engine: the weights loader calls it before the
        copies of an allocation (or beside them, when all are small). Nothing happens where the
        device has no "cuda" export kind; a failure is left for the view to report."""
        with self._gate:
            entry = self._entry(handle, "handle")
            if "cuda" not in self._capabilities(entry.device_index).export_kinds:
                return
            key = entry.handle.handle_id
            try:
                await to_the_end(
                    self._cuda_imports.prepare,
                    key,
                    functools.partial(self._export_fd, entry.native),
                    functools.partial(self._retain, entry.native),
                )
            except (GPUError, OSError, ValueError) as exc:
                log.debug("preparing the CUDA import of %s failed: %s", key, exc)
            finally:
                if key not in self._live:  # freed (or shut down) while the import ran
                    self._cuda_imports.forget(key)

    @final
    async def export_memory(self, handle: MemoryHandle) -> SharedMemory:
        """The allocation's memory as a file descriptor for another process (`send_shared`):
        a new `SharedMemory` that the caller owns and closes. The allocation must have been made
        with `exportable=True` (else `InteropError`). Every operation issued on the device before
        this call has finished when it returns."""
        with self._gate:
            entry = self._entry(handle, "handle")
            await self._synchronize(entry.device_index)
            entry = self._entry(handle, "handle")  # still live after the wait
            return self._export_fd(entry.native)

    @final
    async def import_memory(self, device_id: str, shared: SharedMemory) -> MemoryHandle:
        """Open memory another process (or instance) shared as a new allocation of this one, on
        `device_id`; `shared` stays the caller's to close. A descriptor of the wrong kind, size
        or device is refused with `InteropError` before anything is opened."""
        with self._gate:
            index = self._device_index(device_id)
            if not isinstance(shared, SharedMemory):
                raise TypeError(f"shared must be a SharedMemory, not {type(shared).__name__}")
            if shared.backend != self.name:
                raise InteropError(
                    f"the memory was shared by the {shared.backend!r} backend; the {self.name!r} "
                    "backend cannot open it"
                )
            shared.check_descriptor()
            native = await self._import_fd(index, shared)
            handle = new_handle(self._device_ids[index], shared.size_bytes)
            self._live[handle.handle_id] = Live(handle, native, index, exportable=True)
            return handle
