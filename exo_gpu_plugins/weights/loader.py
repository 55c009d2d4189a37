"""`load_weights`: a checkpoint (or exo's layer range of it) into device memory, file to device.

The plan is made (every header checked) before the first allocation. Then each planned copy runs
as one `backend.copy_file_to_device` call, three at a time (so the transfer pipeline does not drain
between them), the next allocation being made while the current one fills, so the bytes go from
the file to the device by whatever path the backend has (the Vulkan engine reads in parallel
straight into staging or pinned memory; exportable memory that CUDA imported is filled by CUDA's
copy engine) and never become Python objects. An allocation that the copies overwrite whole is not
zeroed first.

Whatever ends the load early (a bad file, a full device, a failing progress callback, the task
being cancelled) frees every allocation the load made before the exception leaves. A copy that
is running when the task is cancelled is allowed to finish first: the backend may still be
writing into that memory, and memory the device may still touch is never freed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from exo_gpu_plugins._exports import CUDA_COPY_MIN_BYTES
from exo_gpu_plugins._trusted import trusted
from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import (
    BackendClosedError,
    CheckpointError,
    InvalidHandleError,
    OutOfMemoryError,
)
from exo_gpu_plugins.file_copy import open_regular_file
from exo_gpu_plugins.models import MemoryHandle
from exo_gpu_plugins.weights.checkpoint import PathsArg
from exo_gpu_plugins.weights.models import LoadedWeights, LoadProgress
from exo_gpu_plugins.weights.plan import AllocationPlan, CheckpointPlan, Pack, plan_checkpoint
from exo_gpu_plugins.weights.selection import LayerRange
from exo_gpu_plugins.weights.tensors import LoadedTensor

__all__ = ["load_plan", "load_weights"]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[LoadProgress], None]


async def load_weights(
    backend: GPUBackend[Any],
    device_id: str,
    paths: PathsArg,
    *,
    layers: LayerRange | None = None,
    select: Callable[[str], bool] | None = None,
    pack: Pack = "file",
    progress: ProgressCallback | None = None,
    exportable: bool = False,
) -> LoadedWeights:
    """Load the safetensors checkpoint at `paths` (a file, a folder, an index, or a list of them)
    onto `device_id`: the tensors of `layers` (exo's range; see `LayerRange`) for which `select`
    is true, packed in file order into allocations of about 1 GiB, the first smaller
    (`pack="file"`; see `ALLOCATION_PIECE_BYTES`) or one per tensor (`pack="tensor"`).
    `exportable=True` makes every allocation exportable, so that `loaded.to_torch(backend)` can
    view the tensors on CUDA in place.

    The headers are read, and `select` is called, in a worker thread, so planning a large
    checkpoint does not stall the event loop. Raises `CheckpointError` (a `ValueError`) for a
    malformed checkpoint before allocating anything, and the backend's errors
    (`OutOfMemoryError`, `FileReadError`, ...) after freeing whatever it had allocated."""
    started = time.perf_counter()
    if not isinstance(backend, GPUBackend):
        raise TypeError(f"backend must be a GPUBackend, not {type(backend).__name__}")
    limit = backend.capabilities(device_id).max_allocation_bytes  # DeviceNotFoundError if unknown
    plan = await asyncio.to_thread(
        plan_checkpoint, paths, layers, select, pack=pack, max_allocation_bytes=limit
    )
    return await load_plan(
        backend, device_id, plan, progress=progress, started=started, exportable=exportable
    )


async def load_plan(
    backend: GPUBackend[Any],
    device_id: str,
    plan: CheckpointPlan,
    *,
    progress: ProgressCallback | None = None,
    started: float | None = None,
    exportable: bool = False,
) -> LoadedWeights:
    """Carry out a plan from `plan_checkpoint`; the files must not have changed since."""
    begun = time.perf_counter() if started is None else started
    descriptors: dict[str, OpenFile] = {}
    try:
        open_plan_files(plan, descriptors)
        handles = await fill_plan(
            backend, device_id, plan, descriptors, _Reporter(progress, plan, begun), exportable
        )
    finally:
        for file in descriptors.values():
            os.close(file.fd)
    return plan_result(plan, device_id, handles, time.perf_counter() - begun, exportable)


class StepReport(Protocol):
    """What `fill_plan` tells after the first allocation (`step(0, 0)`) and after each copy:
    the bytes it copied and the tensors of the plan complete so far."""

    def step(self, size: int, tensors_done: int) -> None: ...


def open_plan_files(plan: CheckpointPlan, descriptors: dict[str, OpenFile]) -> None:
    """Open every file the plan's allocations are filled from, into `descriptors` (by path; a
    file already there is not opened again), each checked unchanged since its header was read.
    The caller closes them, also those opened before one failed."""
    for allocation in plan.allocations:
        if allocation.file not in descriptors:
            descriptors[allocation.file] = open_unchanged(allocation.file, allocation.identity)


async def fill_plan(
    backend: GPUBackend[Any],
    device_id: str,
    plan: CheckpointPlan,
    descriptors: dict[str, OpenFile],
    report: StepReport,
    exportable: bool,
) -> list[MemoryHandle]:
    """Allocate and fill the plan's allocations from the open `descriptors` (left open); returns
    their handles, in the plan's order. On any failure or cancellation, every allocation made is
    freed before the exception leaves, once no copy can still write into it."""
    allocations = plan.allocations
    handles: list[MemoryHandle] = []
    pending: list[asyncio.Future[MemoryHandle]] = []  # the allocation being made, if any
    copies: collections.deque[_Copy] = collections.deque()  # in flight, oldest first
    # Exportable memory is imported into CUDA (where the device exports there), so that
    # `to_torch` afterwards only makes views: before its copies where one is large enough for
    # CUDA's copy engine (`start_allocation`), else while they run.
    preparing: list[asyncio.Future[None]] = []
    loaded = False
    interrupted = False  # a cancellation arrived while the clean-up waited
    try:
        tensors_before = 0
        # Which allocations are imported into CUDA before their copies (exportable ones only).
        first = [exportable and _imported_first(allocation) for allocation in allocations]
        if allocations:
            pending.append(
                start_allocation(backend, device_id, allocations[0], exportable, import_first=first[0])
            )
        for number, allocation in enumerate(allocations):
            handles.append(await _allocated(pending[0], plan, number))
            pending.clear()
            if exportable and not first[number]:
                preparing.append(asyncio.ensure_future(backend.prepare_export(handles[-1])))
            if number + 1 < len(allocations):  # the next allocation is made while this one fills
                following = allocations[number + 1]
                pending.append(
                    start_allocation(
                        backend, device_id, following, exportable, import_first=first[number + 1]
                    )
                )
            if number == 0:
                report.step(0, 0)
            source = descriptors[allocation.file]
            for step in allocation.steps:
                copy = backend.copy_file_to_device(
                    source, handles[-1], step.offset, file_offset=step.file_offset, size_bytes=step.size
                )
                copies.append(
                    _Copy(asyncio.ensure_future(copy), step.size, tensors_before + step.tensors_done)
                )
                if len(copies) >= _COPIES_IN_FLIGHT:
                    await _finish_oldest(copies, report)
            tensors_before += allocation.tensor_count
        while copies:
            await _finish_oldest(copies, report)
        for preparation in preparing:
            await asyncio.shield(preparation)
        if not allocations:  # only zero-byte tensors: nothing to copy, but say so once
            report.step(0, 0)
        loaded = True
        return handles
    finally:
        if not loaded:
            # A copy still running may be writing into the memory: let each finish first.
            for running in copies:
                interrupted = await settle(running.future) or interrupted
            for preparation in preparing:
                interrupted = await settle(preparation) or interrupted
            for future in pending:  # an allocation still being made: take it, to free it
                interrupted = await settle(future) or interrupted
                if not future.cancelled() and future.exception() is None:
                    handles.append(future.result())
            await free_handles(backend, handles, interrupted)


# Copies kept in flight: the next one's first reads overlap the last DMA of the one before, so
# the transfer pipeline never drains between steps (three: 1-2 % faster than two on an H100,
# 2026-12-06; four no faster).
_COPIES_IN_FLIGHT = 3


async def _allocated(
    pending: asyncio.Future[MemoryHandle], plan: CheckpointPlan, number: int
) -> MemoryHandle:
    """The allocation being made (shielded: a cancellation leaves it to the clean-up); a full
    device is reported naming the file and how much of the load it stopped."""
    try:
        return await asyncio.shield(pending)
    except OutOfMemoryError as exc:
        allocation = plan.allocations[number]
        made = sum(a.size_bytes for a in plan.allocations[:number])
        raise OutOfMemoryError(
            f"{allocation.file}: allocation {number + 1} of {len(plan.allocations)} "
            f"({allocation.size_bytes} bytes) failed after {made} of the load's "
            f"{plan.allocated_bytes} bytes were allocated (all freed again): {exc}"
        ) from exc


class _Copy(NamedTuple):
    future: asyncio.Future[int]
    size: int
    tensors_done: int


def start_allocation(
    backend: GPUBackend[Any],
    device_id: str,
    allocation: AllocationPlan,
    exportable: bool,
    *,
    import_first: bool = False,
) -> asyncio.Future[MemoryHandle]:
    """Start making the allocation; memory the copies overwrite whole is not zeroed first.
    `import_first`: an exportable allocation is imported into CUDA before it is returned."""
    zeroed = not allocation.fills_whole
    if exportable and import_first:
        return asyncio.ensure_future(_imported(backend, device_id, allocation.size_bytes, zeroed))
    if exportable:
        return asyncio.ensure_future(
            backend.allocate(device_id, allocation.size_bytes, zeroed=zeroed, exportable=True)
        )
    return asyncio.ensure_future(backend.allocate(device_id, allocation.size_bytes, zeroed=zeroed))


def _imported_first(allocation: AllocationPlan) -> bool:
    """Whether an exportable allocation is imported into CUDA before its copies start: where
    one of them is large enough to then run on CUDA's copy engine (docs/interop.md)."""
    return any(step.size >= CUDA_COPY_MIN_BYTES for step in allocation.steps)


async def _imported(backend: GPUBackend[Any], device_id: str, size: int, zeroed: bool) -> MemoryHandle:
    """An exportable allocation, imported into CUDA (`prepare_export`; nothing where the device
    has no CUDA) before it is returned. The next allocation is made and imported while the
    current one fills, so only the first import is waited for."""
    handle = await backend.allocate(device_id, size, zeroed=zeroed, exportable=True)
    try:
        await backend.prepare_export(handle)
    except BackendClosedError:
        log.debug("%s: the backend shut down before its CUDA import", handle.handle_id)
    except BaseException:
        await free_handles(backend, [handle], interrupted=False)
        raise
    return handle


async def _finish_oldest(copies: collections.deque[_Copy], report: StepReport) -> None:
    """Wait for the oldest copy in flight (shielded: a cancellation leaves it running, for the
    clean-up to wait on), then report its step."""
    await asyncio.shield(copies[0].future)
    done = copies.popleft()
    report.step(done.size, done.tensors_done)
    # Yield once, so that a cancellation requested meanwhile (by the progress callback itself,
    # say) lands here even when the next copy has already finished and awaiting it would not.
    await asyncio.sleep(0)


class _Reporter:
    """Sends LoadProgress after each step; empty tensors count as done from the start."""

    def __init__(self, callback: ProgressCallback | None, plan: CheckpointPlan, started: float) -> None:
        self._callback = callback
        self._started = started
        self._bytes_total = plan.total_bytes
        self._tensors_total = len(plan.tensors)
        self._empty = sum(1 for tensor in plan.tensors if tensor.allocation is None)
        self._bytes_done = 0

    def step(self, size: int, tensors_done: int) -> None:
        self._bytes_done += size
        if self._callback is None:
            return
        self._callback(
            LoadProgress(
                bytes_done=self._bytes_done,
                bytes_total=self._bytes_total,
                tensors_done=self._empty + tensors_done,
                tensors_total=self._tensors_total,
                seconds=time.perf_counter() - self._started,
            )
        )


class OpenFile(NamedTuple):
    """A checkpoint file opened for the load: what `copy_file_to_device` reads (by `fileno()`),
    and its path (`name`), which every error of the copy names."""

    fd: int
    name: str

    def fileno(self) -> int:
        return self.fd


def open_unchanged(path: str, identity: tuple[int, int, int, int]) -> OpenFile:
    fd, stat = open_regular_file(path, CheckpointError)
    if (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns) != identity:
        os.close(fd)
        raise CheckpointError(f"{path}: the file changed after its header was checked; plan again")
    return OpenFile(fd, path)


async def settle(task: asyncio.Future[Any]) -> bool:
    """Wait until `task` is done, whatever cancellations arrive meanwhile (returns whether one
    did), and consume its outcome so that no error goes unretrieved."""
    interrupted = False
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            interrupted = True
    if not task.cancelled() and task.exception() is not None:
        log.debug("operation finished after the load ended, with %r", task.exception())
    return interrupted


async def free_handles(backend: GPUBackend[Any], handles: list[MemoryHandle], interrupted: bool) -> None:
    """Free every handle even if this task is cancelled again while doing so (a cancellation that
    arrived during the clean-up is passed on afterwards)."""
    for handle in handles:
        while True:
            try:
                await backend.deallocate(handle)
            except asyncio.CancelledError:
                interrupted = True
                continue
            except InvalidHandleError:
                pass  # freed by a deallocate the cancellation interrupted after it took the handle
            except BackendClosedError:
                # shutdown() ran meanwhile, and freed every allocation itself.
                log.debug("%s was freed by the backend's shutdown", handle.handle_id)
            except Exception:
                log.exception("freeing %s after a failed load failed", handle.handle_id)
            break
    if interrupted:
        raise asyncio.CancelledError


def plan_result(
    plan: CheckpointPlan,
    device_id: str,
    handles: list[MemoryHandle],
    seconds: float,
    exportable: bool,
) -> LoadedWeights:
    # The plan checked every value, so thousands of records skip pydantic's validation.
    tensors: dict[str, LoadedTensor] = {}
    for tensor in plan.tensors:
        values = {
            "handle": None if tensor.allocation is None else handles[tensor.allocation],
            "offset_bytes": tensor.offset,
            "size_bytes": tensor.size_bytes,
            "dtype": tensor.dtype,
            "shape": tensor.shape,
            "file": tensor.file,
            "file_offset": tensor.file_offset,
        }
        tensors[tensor.name] = trusted(LoadedTensor, values)
    return LoadedWeights(
        device_id=device_id,
        tensors=tensors,
        handles=tuple(handles),
        total_bytes=plan.total_bytes,
        allocated_bytes=plan.allocated_bytes,
        seconds=seconds,
        files=plan.files,
        pack=plan.pack,
        layers=plan.layers,
        exportable=exportable,
    )
