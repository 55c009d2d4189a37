"""Reliability workloads any backend can be put through: load, soak, memory pressure, isolation,
cancellation. Each returns the figures it measured, so the same code serves the test suite (small
sizes, assertions) and `benchmarks/reliability.py` (full sizes, a table for docs/reliability.md).

Every workload verifies every byte it reads back; a mismatch raises `AssertionError` at once.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import OutOfMemoryError
from exo_gpu_plugins.models import MemoryHandle

__all__ = [
    "CancelFigures",
    "IsolationFigures",
    "LoadFigures",
    "PressureFigures",
    "SoakFigures",
    "cancel_large_copy",
    "isolation",
    "load",
    "memory_pressure",
    "resident_bytes",
    "soak",
]

BackendFactory = Callable[[], GPUBackend[Any]]


def resident_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _pattern(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# --------------------------------------------------------------------------------------------------


@dataclass
class LoadFigures:
    threads: int
    tasks_per_thread: int
    operations: int
    bytes_verified: int
    seconds: float


def load(  # noqa: PLR0915 (one workload, read top to bottom)
    backend: GPUBackend[Any],
    device_id: str,
    *,
    threads: int = 4,
    tasks: int = 8,
    operations_per_task: int = 100,
    max_size: int = 64 << 10,
    timeout: float = 300.0,
) -> LoadFigures:
    """Several OS threads, each with its own event loop, each running many tasks of mixed
    allocate / write / read / read-into / device-to-device / free on one device; every byte read is
    checked against what that task wrote. Raises on a mismatch or if it does not end in `timeout`."""
    verified = [0] * threads
    operations = [0] * threads
    errors: list[BaseException] = []

    async def task(worker: int, number: int) -> None:
        rng = random.Random(worker * 1000 + number)
        mine: list[tuple[MemoryHandle, bytearray]] = []
        for _ in range(operations_per_task):
            operations[worker] += 1
            choice = rng.random()
            if not mine or choice < 0.2:
                size = rng.randint(1, max_size)
                mine.append((await backend.allocate(device_id, size), bytearray(size)))
                continue
            handle, model = mine[rng.randrange(len(mine))]
            size = handle.size_bytes
            offset = rng.randrange(size)
            length = rng.randint(0, size - offset)
            if choice < 0.45:
                data = rng.randbytes(length)
                await backend.copy_to_device(data, handle, offset)
                model[offset : offset + length] = data
            elif choice < 0.65:
                got = await backend.copy_from_device(handle, offset, length)
                if got != model[offset : offset + length]:
                    raise AssertionError(f"load: thread {worker} task {number} read wrong bytes")
                verified[worker] += length
            elif choice < 0.8:
                into = bytearray(length)
                await backend.copy_from_device_into(handle, offset, into)
                if into != model[offset : offset + length]:
                    raise AssertionError(f"load: thread {worker} task {number} read_into wrong bytes")
                verified[worker] += length
            elif choice < 0.9:
                other, other_model = mine[rng.randrange(len(mine))]
                length = rng.randint(0, min(size - offset, other.size_bytes))
                dst_offset = rng.randint(0, other.size_bytes - length)
                await backend.copy_device_to_device(handle, other, length, offset, dst_offset)
                other_model[dst_offset : dst_offset + length] = model[offset : offset + length]
            else:
                mine.remove((handle, model))
                got = await backend.copy_from_device(handle, 0, size)
                if got != model:
                    raise AssertionError(f"load: thread {worker} task {number} lost bytes")
                verified[worker] += size
                await backend.deallocate(handle)
        for handle, model in mine:
            if await backend.copy_from_device(handle, 0, handle.size_bytes) != model:
                raise AssertionError(f"load: thread {worker} task {number} lost bytes at the end")
            verified[worker] += handle.size_bytes
            await backend.deallocate(handle)

    def thread_main(worker: int) -> None:
        async def run_all() -> None:
            await asyncio.gather(*(task(worker, n) for n in range(tasks)))

        try:
            asyncio.run(run_all())
        except BaseException as exc:
            errors.append(exc)

    start = time.perf_counter()
    workers = [threading.Thread(target=thread_main, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    deadline = start + timeout
    for worker in workers:
        worker.join(max(0.0, deadline - time.perf_counter()))
    if any(worker.is_alive() for worker in workers):
        raise AssertionError(f"load: threads still running after {timeout} s (deadlock?)")
    if errors:
        raise errors[0]
    return LoadFigures(threads, tasks, sum(operations), sum(verified), time.perf_counter() - start)


# --------------------------------------------------------------------------------------------------


@dataclass
class SoakFigures:
    cycles: int
    rss_growth_bytes: int
    used_before: int
    used_after: int
    stats_before: dict[str, Any]
    stats_after: dict[str, Any]
    seconds: float


async def soak(
    backend: GPUBackend[Any],
    device_id: str,
    *,
    cycles: int = 100_000,
    max_size: int = 1 << 20,
    stats: Callable[[], dict[str, Any]] | None = None,
) -> SoakFigures:
    """`cycles` allocate/free pairs of random sizes (a few held at once); returns resident-memory
    growth and the used bytes (and the engine's own counters, via `stats`) before and after."""
    rng = random.Random(7)
    warm = [await backend.allocate(device_id, rng.randint(1, max_size)) for _ in range(64)]
    for handle in warm:
        await backend.deallocate(handle)
    used_before = (await backend.get_device_memory_info(device_id)).used_bytes
    stats_before = stats() if stats else {}
    rss_before = resident_bytes()
    start = time.perf_counter()
    held: list[MemoryHandle] = []
    for _ in range(cycles):
        held.append(await backend.allocate(device_id, rng.randint(1, max_size)))
        if len(held) > 8 or rng.random() < 0.5:
            await backend.deallocate(held.pop(rng.randrange(len(held))))
    for handle in held:
        await backend.deallocate(handle)
    seconds = time.perf_counter() - start
    return SoakFigures(
        cycles,
        resident_bytes() - rss_before,
        used_before,
        (await backend.get_device_memory_info(device_id)).used_bytes,
        stats_before,
        stats() if stats else {},
        seconds,
    )


# --------------------------------------------------------------------------------------------------


@dataclass
class PressureFigures:
    chunk_bytes: int
    allocations_before_oom: int
    bytes_before_oom: int
    baseline_available: int
    available_after_free: int
    huge_request_refused: bool


async def memory_pressure(
    backend: GPUBackend[Any], device_id: str, *, chunk: int = 64 << 20, limit_bytes: int | None = None
) -> PressureFigures:
    """A request larger than the device is refused; then allocate `chunk`s until the device says no
    (or `limit_bytes`), check a canary's bytes, free everything, and report the way back."""
    report = await backend.get_device_memory_info(device_id)
    canary = await backend.allocate(device_id, 4096)
    await backend.copy_to_device(b"\xa5" * 4096, canary)
    refused = False
    try:
        await backend.allocate(device_id, report.total_bytes * 2 + chunk)
    except OutOfMemoryError:
        refused = True
    baseline = (await backend.get_device_memory_info(device_id)).available_bytes
    held: list[MemoryHandle] = []
    cap = limit_bytes if limit_bytes is not None else report.total_bytes * 2
    try:
        while len(held) * chunk < cap:
            held.append(await backend.allocate(device_id, chunk))
    except OutOfMemoryError:
        pass
    if await backend.copy_from_device(canary, 0, 4096) != b"\xa5" * 4096:
        raise AssertionError("memory pressure: the canary lost its bytes")
    count = len(held)
    for handle in held:
        await backend.deallocate(handle)
    after = (await backend.get_device_memory_info(device_id)).available_bytes
    await backend.deallocate(canary)
    return PressureFigures(chunk, count, count * chunk, baseline, after, refused)


# --------------------------------------------------------------------------------------------------


@dataclass
class IsolationFigures:
    cycles: int
    bytes_checked: int
    distinct_handle_ids: int
    handle_id_bits: int


async def isolation(
    backend: GPUBackend[Any],
    device_id: str,
    *,
    cycles: int = 50,
    sizes: tuple[int, ...] = (4096, 65536 + 3, 1 << 20),
) -> IsolationFigures:
    """Fill, free and reallocate the same sizes again and again: a fresh allocation must read as
    zeros every time (no earlier owner's bytes). Also checks the handle ids' randomness."""
    checked = 0
    ids: set[str] = set()
    for cycle in range(cycles):
        for size in sizes:
            handle = await backend.allocate(device_id, size)
            ids.add(handle.handle_id)
            if await backend.copy_from_device(handle, 0, size) != bytes(size):
                raise AssertionError(
                    f"isolation: cycle {cycle}: fresh {size}-byte allocation holds "
                    "an earlier owner's bytes"
                )
            checked += size
            await backend.copy_to_device(_pattern(cycle, size), handle)
            await backend.deallocate(handle)
    bits = min(len(i) for i in ids) * 4 if all(_is_hex(i) for i in ids) else 0
    return IsolationFigures(cycles, checked, len(ids), bits)


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------------


@dataclass
class CancelFigures:
    size: int
    cancelled: bool
    live_after: int
    destination_state: str


async def cancel_large_copy(
    backend: GPUBackend[Any], device_id: str, *, size: int = 256 << 20
) -> CancelFigures:
    """Cancel an awaited large upload mid-flight; the backend must stay usable and leak nothing.
    Returns what the destination then holds: all old bytes, all new bytes, or a mix (a cancelled
    copy is not rolled back; see docs/reliability.md)."""
    handle = await backend.allocate(device_id, size)
    live_before = len(backend.live_handles())
    payload = b"\x77" * size
    task = asyncio.ensure_future(backend.copy_to_device(payload, handle))
    await asyncio.sleep(0)
    task.cancel()
    cancelled = False
    try:
        await task
    except asyncio.CancelledError:
        cancelled = True
    await backend.synchronize(device_id)
    # The engine may still be finishing the copy in its worker thread: wait until it has.
    deadline = time.monotonic() + 60
    head = tail = b""
    while time.monotonic() < deadline:
        head = await backend.copy_from_device(handle, 0, 1)
        tail = await backend.copy_from_device(handle, size - 1, 1)
        if head == tail:
            break
        await asyncio.sleep(0.01)
    state = {(b"\x00", b"\x00"): "old bytes", (b"\x77", b"\x77"): "new bytes"}.get((head, tail), "mixed")
    probe = await backend.allocate(device_id, 4096)
    await backend.copy_to_device(b"ok" * 2048, probe)
    if await backend.copy_from_device(probe, 0, 4096) != b"ok" * 2048:
        raise AssertionError("cancel: the backend is not usable after a cancelled copy")
    await backend.deallocate(probe)
    live_after = len(backend.live_handles())
    await backend.deallocate(handle)
    if live_after != live_before:
        raise AssertionError("cancel: live handles changed")
    return CancelFigures(size, cancelled, live_after - live_before, state)
