"""`load_across`: one checkpoint over several devices of a node, in one call.

    pairs = [(vulkan, "vulkan:0"), (vulkan, "vulkan:1"), (host, "host:0")]
    placed = await load_across(pairs, "model/", layers=LayerRange.from_shard(shard))
    placed.weights["vulkan:0"].to_torch(vulkan) ...
    await placed.deallocate(pairs)

The placement (`placement.py`) is made first, from each device's available memory, and refused
with `OutOfMemoryError` before the first allocation when a device is short. Then every file is
opened once and its descriptor shared by all devices: each device's own ranges go file to device
through `fill_plan` (the one-device loader, so the backend's own file path: parallel `pread`
straight into staging), all devices at once; each shared range (the tied embedding that the first
and last device both hold) is read once into host memory and copied from there to each holder.
So every byte of the files is read once (`PlacementPlan.read_bytes`).

Whatever ends the load early (an error on any device, a failing progress callback, the task
being cancelled) stops every device's part, waits until no copy can still write into the memory
or read a descriptor, frees every allocation on every device, closes the files, and only then
lets the exception out (the first error, with the device it happened on in its message).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import GPUError
from exo_gpu_plugins.file_copy import read_exact
from exo_gpu_plugins.models import MemoryHandle
from exo_gpu_plugins.weights.checkpoint import PathsArg
from exo_gpu_plugins.weights.loader import (
    OpenFile,
    fill_plan,
    free_handles,
    open_plan_files,
    open_unchanged,
    plan_result,
    settle,
    start_allocation,
)
from exo_gpu_plugins.weights.models import (
    LoadedWeights,
    LoadProgress,
    PlacedWeights,
    PlacementProgress,
)
from exo_gpu_plugins.weights.placement import (
    DevicePlacement,
    DeviceRoom,
    PlacementPlan,
    Split,
    place_checkpoint,
)
from exo_gpu_plugins.weights.plan import Pack
from exo_gpu_plugins.weights.selection import LayerRange

__all__ = ["DevicePair", "device_rooms", "load_across", "load_placement", "plan_across"]

log = logging.getLogger(__name__)

DevicePair = tuple[GPUBackend[Any], str]
PlacementCallback = Callable[[PlacementProgress], None]
T = TypeVar("T")


async def device_rooms(pairs: Sequence[DevicePair]) -> list[DeviceRoom]:
    """Each device's available memory and allocation cap, as its backend reports them now."""
    rooms = []
    for backend, device_id in pairs:
        if not isinstance(backend, GPUBackend):
            raise TypeError(f"{device_id}: expected a GPUBackend, not {type(backend).__name__}")
        cap = backend.capabilities(device_id).max_allocation_bytes  # DeviceNotFoundError if unknown
        report = await backend.get_device_memory_info(device_id)
        rooms.append(DeviceRoom(device_id, report.available_bytes, cap))
    return rooms


async def plan_across(
    pairs: Sequence[DevicePair],
    paths: PathsArg,
    *,
    split: Split = "memory",
    layers: LayerRange | None = None,
    select: Callable[[str], bool] | None = None,
    pack: Pack = "file",
) -> PlacementPlan:
    """`place_checkpoint` with each device's room read from its backend; the headers are read
    in a worker thread. Nothing is allocated."""
    rooms = await device_rooms(pairs)
    return await asyncio.to_thread(
        place_checkpoint, paths, rooms, split=split, layers=layers, select=select, pack=pack
    )


async def load_across(
    pairs: Sequence[DevicePair],
    paths: PathsArg,
    *,
    split: Split = "memory",
    layers: LayerRange | None = None,
    select: Callable[[str], bool] | None = None,
    pack: Pack = "file",
    progress: PlacementCallback | None = None,
    exportable: bool = False,
) -> PlacedWeights:
    """Load the checkpoint at `paths` over the devices of `pairs` (backend, device id), in
    pipeline order: `layers` (default: the whole model) split by `split` ("memory", one
    `LayerRange` or exo shard per device, or a callable; see `placement.py`). `exportable=True`
    makes every allocation exportable, so each device's `to_torch` can view its tensors on CUDA."""
    started = time.perf_counter()
    placement = await plan_across(pairs, paths, split=split, layers=layers, select=select, pack=pack)
    return await load_placement(
        pairs, placement, progress=progress, started=started, exportable=exportable
    )


async def load_placement(
    pairs: Sequence[DevicePair],
    placement: PlacementPlan,
    *,
    progress: PlacementCallback | None = None,
    started: float | None = None,
    exportable: bool = False,
) -> PlacedWeights:
    """Carry out a placement (refused with `OutOfMemoryError` if it does not fit); the files must
    not have changed since it was made."""
    begun = time.perf_counter() if started is None else started
    placement.check_fits()
    backends = _backends(pairs, placement)
    descriptors: dict[str, OpenFile] = {}
    try:
        for device in placement.devices:
            open_plan_files(device.own, descriptors)
        for read in placement.shared_reads:
            if read.file not in descriptors:
                descriptors[read.file] = open_unchanged(read.file, read.identity)
        tally = _Tally(progress, placement, begun)
        parts: list[Awaitable[Any]] = [
            _naming(
                device.device_id,
                fill_plan(backend, device.device_id, device.own, descriptors, report, exportable),
            )
            for device, backend, report in zip(placement.devices, backends, tally.devices, strict=True)
        ]
        parts.append(_deliver_shared(backends, placement, descriptors, tally, exportable))
        results = await _all_or_free(parts, backends)
    finally:
        for file in descriptors.values():
            os.close(file.fd)
    seconds = time.perf_counter() - begun
    shared: list[list[MemoryHandle]] = results[-1]
    weights: dict[str, LoadedWeights] = {}
    for number, device in enumerate(placement.devices):
        own: list[MemoryHandle] = results[number]
        handles = own + shared[number]
        weights[device.device_id] = plan_result(
            device.combined(), device.device_id, handles, seconds, exportable
        )
    return PlacedWeights(
        weights=weights,
        files=placement.files,
        read_bytes=placement.read_bytes,
        delivered_bytes=placement.delivered_bytes,
        seconds=seconds,
        split=placement.split,
    )


def _backends(pairs: Sequence[DevicePair], placement: PlacementPlan) -> list[GPUBackend[Any]]:
    by_device = {device_id: backend for backend, device_id in pairs}
    missing = [d.device_id for d in placement.devices if d.device_id not in by_device]
    if missing:
        raise ValueError(f"no backend given for {', '.join(missing)} (placed by the plan)")
    return [by_device[d.device_id] for d in placement.devices]


async def _naming(device_id: str, work: Awaitable[T]) -> T:
    """Run `work`; a GPUError that does not name the device is raised again naming it."""
    try:
        return await work
    except GPUError as exc:
        if device_id in str(exc):
            raise
        try:
            named = type(exc)(f"{device_id}: {exc}")
        except Exception:
            raise exc from None
        raise named from exc


# ------------------------------------------------------------------------------------------------
# All devices at once, or nothing left behind


async def _all_or_free(parts: list[Awaitable[Any]], backends: list[GPUBackend[Any]]) -> list[Any]:
    """Run every part at once. When one fails, or this task is cancelled, the others are
    cancelled and waited for (each frees its own memory once its copies are over), what finished
    is freed, and the first error (or the cancellation) is raised."""
    failures: list[asyncio.Future[Any]] = []

    def note(task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            failures.append(task)

    tasks = [asyncio.ensure_future(part) for part in parts]
    for task in tasks:
        task.add_done_callback(note)
    interrupted = False
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        interrupted = True
    if not interrupted and not failures:
        return [task.result() for task in tasks]
    for task in tasks:
        task.cancel()
    for task in tasks:
        interrupted = await settle(task) or interrupted
    for number, task in enumerate(tasks):
        if task.cancelled() or task.exception() is not None:
            continue
        interrupted = await _release(task.result(), number, backends) or interrupted
    if interrupted:
        raise asyncio.CancelledError
    error = failures[0].exception()
    assert error is not None
    raise error


async def _release(result: Any, number: int, backends: list[GPUBackend[Any]]) -> bool:
    """Free a part that finished before another failed: a device's own allocations (parts
    before the last), or the shared allocations of every device (the last part). Returns
    whether a cancellation arrived meanwhile."""
    owned: list[tuple[GPUBackend[Any], list[MemoryHandle]]]
    if number < len(backends):
        owned = [(backends[number], result)]
    else:
        owned = list(zip(backends, result, strict=True))
    interrupted = False
    for backend, handles in owned:
        try:
            await free_handles(backend, handles, False)
        except asyncio.CancelledError:
            interrupted = True
    return interrupted


# ------------------------------------------------------------------------------------------------
# Shared tensors: read into host memory once, copied to every device that holds them


async def _deliver_shared(
    backends: list[GPUBackend[Any]],
    placement: PlacementPlan,
    descriptors: dict[str, OpenFile],
    tally: _Tally,
    exportable: bool,
) -> list[list[MemoryHandle]]:
    """Make every device's shared allocations, then read each shared piece once and copy it to
    its holders (all at once). Returns each device's shared handles, in plan order."""
    handles: list[list[MemoryHandle]] = [[] for _ in placement.devices]
    running: list[asyncio.Future[Any]] = []  # may still touch memory or a descriptor
    preparing: list[asyncio.Future[None]] = []  # exportable memory imported into CUDA meanwhile
    making: tuple[int, asyncio.Future[MemoryHandle]] | None = None
    delivered = False
    interrupted = False
    try:
        for number, device in enumerate(placement.devices):
            for allocation in device.shared.allocations:
                # Filled from host buffers, not files: imported into CUDA beside the copies.
                future = start_allocation(backends[number], device.device_id, allocation, exportable)
                making = (number, future)
                handles[number].append(await asyncio.shield(future))
                making = None
                if exportable:
                    prepare = backends[number].prepare_export(handles[number][-1])
                    preparing.append(asyncio.ensure_future(prepare))
        for read in placement.shared_reads:
            buffer = memoryview(bytearray(read.size))
            fd = descriptors[read.file].fd
            reading = asyncio.ensure_future(asyncio.to_thread(read_exact, fd, buffer, read.file_offset))
            running.append(reading)
            await asyncio.shield(_naming(read.file, reading))
            copies = []
            sizes = [0] * len(placement.devices)
            for target in read.targets:
                device_id = placement.devices[target.device].device_id
                source = buffer[target.piece_offset : target.piece_offset + target.size]
                destination = handles[target.device][target.allocation]
                copy = backends[target.device].copy_to_device(source, destination, target.offset)
                copies.append(asyncio.ensure_future(_naming(device_id, copy)))
                sizes[target.device] += target.size
            running.extend(copies)
            await asyncio.shield(asyncio.gather(*copies))
            for number, size in enumerate(sizes):
                if size or read.completes[number]:
                    tally.devices[number].shared_step(size, read.completes[number])
            running = [future for future in running if not future.done()]
            await asyncio.sleep(0)  # a cancellation asked for by the progress callback lands here
        for preparation in preparing:
            await asyncio.shield(preparation)
        delivered = True
        return handles
    finally:
        if not delivered:
            for future in running + preparing:
                interrupted = await settle(future) or interrupted
            if making is not None:
                interrupted = await settle(making[1]) or interrupted
                if not making[1].cancelled() and making[1].exception() is None:
                    handles[making[0]].append(making[1].result())
            for backend, owned in zip(backends, handles, strict=True):
                try:
                    await free_handles(backend, owned, False)
                except asyncio.CancelledError:
                    interrupted = True
            if interrupted:
                raise asyncio.CancelledError


# ------------------------------------------------------------------------------------------------
# Progress


class _Tally:
    """Progress of the whole load and of each device; a callback is sent each time one advances."""

    def __init__(
        self, callback: PlacementCallback | None, placement: PlacementPlan, started: float
    ) -> None:
        self.callback = callback
        self.started = started
        self.total = placement.delivered_bytes
        self.done = 0
        self.devices = [_DeviceTally(self, device) for device in placement.devices]

    def advance(self, device: _DeviceTally, size: int) -> None:
        self.done += size
        if self.callback is None:
            return
        seconds = time.perf_counter() - self.started
        self.callback(
            PlacementProgress(
                device_id=device.device_id,
                device=device.progress(seconds),
                bytes_done=self.done,
                bytes_total=self.total,
                seconds=seconds,
            )
        )


class _DeviceTally:
    """One device: its own part reports through `step` (as `fill_plan` does), its shared part
    through `shared_step`."""

    def __init__(self, tally: _Tally, device: DevicePlacement) -> None:
        self.tally = tally
        self.device_id = device.device_id
        self.total = device.total_bytes
        tensors = device.own.tensors + device.shared.tensors
        self.tensors_total = len(tensors)
        self.empty = sum(1 for tensor in tensors if tensor.allocation is None)
        self.bytes_done = 0
        self.own_tensors = 0
        self.shared_tensors = 0

    def step(self, size: int, tensors_done: int) -> None:
        self.own_tensors = tensors_done
        self.bytes_done += size
        self.tally.advance(self, size)

    def shared_step(self, size: int, completed: int) -> None:
        self.shared_tensors += completed
        self.bytes_done += size
        self.tally.advance(self, size)

    def progress(self, seconds: float) -> LoadProgress:
        return LoadProgress(
            bytes_done=self.bytes_done,
            bytes_total=self.total,
            tensors_done=self.empty + self.own_tensors + self.shared_tensors,
            tensors_total=self.tensors_total,
            seconds=seconds,
        )
