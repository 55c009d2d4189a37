"""The transfer pipeline against its peers, measured in one run: host <-> device bandwidth from
ordinary buffers and from pinned host memory, an upload and a download at once, many small copies
at once, device copies, small-operation latency, memory-report cost against the number of live
allocations, and how long a heartbeat thread waits for the GIL while copies run.

    python benchmarks/transfer_pipeline.py [--backend vulkan] [--quick] [--json OUT]

Peers, where importable: numpy memcpy (the host's own copy bandwidth) and torch CUDA from pinned and
pageable tensors (skipped without a CUDA device). --quick scales sizes down for lavapipe. Every
figure is a median of several runs; a reading not taken is printed as "-" (null in the JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import exo_gpu_plugins
from exo_gpu_plugins._handles import new_handle
from exo_gpu_plugins.timing import gbps, heartbeat_beside_copies, median_seconds, median_seconds_async

MiB = 1 << 20
GiB = 1 << 30


@dataclass
class Figure:
    """One row of the table."""

    name: str
    ours: float | None
    unit: str
    peer: float | None = None
    peer_name: str = ""


async def nothing() -> None:
    """A coroutine that does no work: what the interpreter alone charges for one."""


# --------------------------------------------------------------------------------------------------
# Peers


def numpy_memcpy(size: int) -> Callable[[], Any] | None:
    """One numpy memcpy of `size` bytes between two arrays touched beforehand (None without
    numpy): the host's own copy bandwidth, the peer of copies on a CPU device."""
    try:
        import numpy as np
    except ImportError:
        return None
    a = np.ones(size, dtype=np.uint8)
    b = np.ones_like(a)
    return lambda: np.copyto(b, a)


async def interleaved(
    repeats: int, ours: Callable[[], Awaitable[Any]], peer: Callable[[], Any] | None
) -> tuple[float, list[float]]:
    """Median seconds of `ours`, and the samples of `peer` timed in turn with it (ours, peer,
    ours, ...): on a shared VM the memory bandwidth drifts within a run, and a peer timed
    minutes apart from our figure would compare two different machines."""
    ours_samples: list[float] = []
    peer_samples: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        await ours()
        ours_samples.append(time.perf_counter() - start)
        if peer is not None:
            start = time.perf_counter()
            peer()
            peer_samples.append(time.perf_counter() - start)
    return statistics.median(ours_samples), peer_samples


def torch_cuda() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def torch_h2d_d2h(size: int, repeats: int, pinned: bool) -> tuple[float, float] | None:
    torch = torch_cuda()
    if torch is None:
        return None
    host = torch.empty(size, dtype=torch.uint8, pin_memory=pinned)
    dev = torch.empty(size, dtype=torch.uint8, device="cuda")

    def up() -> None:
        dev.copy_(host, non_blocking=pinned)
        torch.cuda.synchronize()

    def down() -> None:
        host.copy_(dev, non_blocking=pinned)
        torch.cuda.synchronize()

    up()
    down()
    return gbps(size, median_seconds(up, repeats)), gbps(size, median_seconds(down, repeats))


def torch_both_ways(size: int, repeats: int) -> float | None:
    torch = torch_cuda()
    if torch is None:
        return None
    h1 = torch.empty(size, dtype=torch.uint8, pin_memory=True)
    h2 = torch.empty(size, dtype=torch.uint8, pin_memory=True)
    d1 = torch.empty(size, dtype=torch.uint8, device="cuda")
    d2 = torch.empty(size, dtype=torch.uint8, device="cuda")
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()

    def both() -> None:
        with torch.cuda.stream(s1):
            d1.copy_(h1, non_blocking=True)
        with torch.cuda.stream(s2):
            h2.copy_(d2, non_blocking=True)
        torch.cuda.synchronize()

    both()
    return gbps(2 * size, median_seconds(both, repeats))


def torch_device_copy(size: int, repeats: int) -> float | None:
    torch = torch_cuda()
    if torch is None:
        return None
    a = torch.empty(size, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)

    def run() -> None:
        b.copy_(a)
        torch.cuda.synchronize()

    run()
    return gbps(size, median_seconds(run, repeats))


def torch_alloc_free_us(repeats: int) -> float | None:
    torch = torch_cuda()
    if torch is None:
        return None

    def run() -> None:
        for _ in range(1000):
            t = torch.empty(4096, dtype=torch.uint8, device="cuda")
            del t

    run()
    return median_seconds(run, repeats) * 1e3  # us per allocate+free


def torch_small_round_trip_us(repeats: int) -> float | None:
    torch = torch_cuda()
    if torch is None:
        return None
    host = torch.empty(4096, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(4096, dtype=torch.uint8, device="cuda")

    def run() -> None:
        dev.copy_(host)
        host.copy_(dev)
        torch.cuda.synchronize()

    run()
    return median_seconds(run, repeats) * 1e6


# --------------------------------------------------------------------------------------------------
# Ours


async def pinned_buffer(
    backend: Any, device: str, size: int
) -> tuple[memoryview, Callable[[], Any]] | None:
    """Pinned host memory: the public API where the core has it, else the Vulkan engine's own;
    None where neither exists (the pinned rows then stay empty)."""
    allocate_host = getattr(backend, "allocate_host_buffer", None)
    if allocate_host is not None:
        hb = await allocate_host(device, size)
        return hb.view, lambda: backend.release_host_buffer(hb)
    engine = getattr(backend, "_engine", None)
    if engine is None or not hasattr(engine, "host_alloc"):
        return None
    mem = engine.host_alloc(backend._device_index(device), size)

    async def release() -> None:
        mem.release()

    return mem.view(), release


async def bandwidth(
    backend: Any, device: str, sizes: list[int], repeats: int, rows: list[Figure]
) -> None:
    for size in sizes:
        await bandwidth_at(backend, device, size, repeats, rows)


async def bandwidth_at(backend: Any, device: str, size: int, repeats: int, rows: list[Figure]) -> None:
    try:
        import numpy as np
    except ImportError:
        np = None
    label = f"{size // MiB} MiB"
    handle = await backend.allocate(device, size)
    src: Any = np.ones(size, dtype=np.uint8) if np is not None else os.urandom(size)
    out = bytearray(size)
    await backend.copy_to_device(src, handle)
    memcpy = numpy_memcpy(size)
    up_s, memcpy_up = await interleaved(repeats, lambda: backend.copy_to_device(src, handle), memcpy)
    down_s, memcpy_down = await interleaved(
        repeats, lambda: backend.copy_from_device_into(handle, 0, out), memcpy
    )
    up, down = gbps(size, up_s), gbps(size, down_s)
    memcpy_samples = memcpy_up + memcpy_down
    rows.append(
        Figure(
            f"host memcpy {label} (numpy, timed in turn with ours)",
            gbps(size, statistics.median(memcpy_samples)) if memcpy_samples else None,
            "GB/s",
        )
    )
    del memcpy
    pageable = torch_h2d_d2h(size, repeats, pinned=False)
    pinned_peer = torch_h2d_d2h(size, repeats, pinned=True)
    rows.append(
        Figure(
            f"host->device {label} (numpy)",
            up,
            "GB/s",
            pinned_peer and pinned_peer[0],
            "torch pinned",
        )
    )
    rows.append(
        Figure(
            f"device->host {label} into buffer",
            down,
            "GB/s",
            pinned_peer and pinned_peer[1],
            "torch pinned",
        )
    )
    # CUDA from ordinary (pageable) memory, for reference: the row's own figure is not ours.
    rows.append(
        Figure(f"torch pageable {label}: host->device", None, "GB/s", pageable and pageable[0], "torch")
    )
    rows.append(
        Figure(f"torch pageable {label}: device->host", None, "GB/s", pageable and pageable[1], "torch")
    )
    pinned = await pinned_buffer(backend, device, size)
    up_p = down_p = None
    if pinned is not None:
        pview, release = pinned
        pview[:] = memoryview(src).cast("B") if np is not None else src
        up_p = gbps(
            size, await median_seconds_async(lambda: backend.copy_to_device(pview, handle), repeats)
        )
        down_p = gbps(
            size,
            await median_seconds_async(lambda: backend.copy_from_device_into(handle, 0, pview), repeats),
        )
        await release()
    rows.append(
        Figure(
            f"host->device {label} (pinned)",
            up_p,
            "GB/s",
            pinned_peer and pinned_peer[0],
            "torch pinned",
        )
    )
    rows.append(
        Figure(
            f"device->host {label} (pinned)",
            down_p,
            "GB/s",
            pinned_peer and pinned_peer[1],
            "torch pinned",
        )
    )
    await backend.deallocate(handle)


async def both_ways(backend: Any, device: str, size: int, repeats: int, rows: list[Figure]) -> None:
    a = await backend.allocate(device, size)
    b = await backend.allocate(device, size)
    for kind in ("ordinary", "pinned"):
        await both_ways_as(backend, device, size, repeats, rows, (a, b), kind)
    await backend.deallocate(a)
    await backend.deallocate(b)


async def both_ways_as(
    backend: Any,
    device: str,
    size: int,
    repeats: int,
    rows: list[Figure],
    ab: tuple[Any, Any],
    kind: str,
) -> None:
    a, b = ab
    if kind == "pinned":
        first = await pinned_buffer(backend, device, size)
        second = await pinned_buffer(backend, device, size)
        if first is None or second is None:
            rows.append(Figure(f"upload alone {size // MiB} MiB ({kind})", None, "GB/s"))
            rows.append(Figure(f"upload+download at once ({kind}), total", None, "GB/s"))
            return
        (src, release_src), (out, release_out) = first, second
    else:
        src, out = memoryview(bytearray(os.urandom(size))), memoryview(bytearray(size))

    async def one() -> None:
        await backend.copy_to_device(src, a)

    async def both() -> None:
        await asyncio.gather(backend.copy_to_device(src, a), backend.copy_from_device_into(b, 0, out))

    alone = gbps(size, await median_seconds_async(one, repeats))
    together = gbps(2 * size, await median_seconds_async(both, repeats))
    rows.append(Figure(f"upload alone {size // MiB} MiB ({kind})", alone, "GB/s"))
    rows.append(
        Figure(
            f"upload+download at once ({kind}), total",
            together,
            "GB/s",
            torch_both_ways(size, repeats) if kind == "pinned" else None,
            "torch 2 streams",
        )
    )
    if kind == "pinned":
        await release_src()
        await release_out()


async def small_copies(backend: Any, device: str, repeats: int, rows: list[Figure]) -> None:
    chunk, count = 64 << 10, 64
    target = await backend.allocate(device, chunk * count)
    pieces = [os.urandom(chunk) for _ in range(count)]

    async def gathered() -> None:
        await asyncio.gather(
            *(backend.copy_to_device(pieces[i], target, i * chunk) for i in range(count))
        )

    async def gathered_nothing() -> None:
        await asyncio.gather(*(nothing() for _ in range(count)))

    async def in_turn() -> None:
        for i in range(count):
            await backend.copy_to_device(pieces[i], target, i * chunk)

    # asyncio's own cost of 64 gathered coroutines, as the rate its time would allow: the ceiling
    # of any backend's 64 gathered copies in this interpreter.
    ceiling = gbps(chunk * count, await median_seconds_async(gathered_nothing, repeats))
    rows.append(
        Figure(
            "64 concurrent 64 KiB copies",
            gbps(chunk * count, await median_seconds_async(gathered, repeats)),
            "GB/s",
            ceiling,
            "64 no-op coroutines gathered",
        )
    )
    # Where their time goes: the same copies without gather, and the engine's calls alone.
    rows.append(
        Figure(
            "  the 64 copies awaited in turn",
            gbps(chunk * count, await median_seconds_async(in_turn, repeats)),
            "GB/s",
        )
    )
    engine = getattr(backend, "_engine", None)
    if engine is not None:
        native = backend._live[target.handle_id].native[0]

        async def engine_writes() -> None:
            for i in range(count):
                engine.write(native, i * chunk, pieces[i])

        engine_rate = gbps(chunk * count, await median_seconds_async(engine_writes, repeats))
        rows.append(Figure("  the 64 copies, engine calls alone", engine_rate, "GB/s"))
    await backend.deallocate(target)


async def device_copy(backend: Any, device: str, size: int, repeats: int, rows: list[Figure]) -> None:
    a = await backend.allocate(device, size)
    b = await backend.allocate(device, size)
    ours = gbps(
        size, await median_seconds_async(lambda: backend.copy_device_to_device(a, b, size), repeats)
    )
    rows.append(
        Figure(f"device copy {size // MiB} MiB", ours, "GB/s", torch_device_copy(size, repeats), "torch")
    )
    await backend.deallocate(a)
    await backend.deallocate(b)


async def small_ops(backend: Any, device: str, rows: list[Figure]) -> None:
    loops = 1000  # per sample, as torch's peer is timed

    async def alloc_free() -> None:
        for _ in range(loops):
            await backend.deallocate(await backend.allocate(device, 4096))

    rows.append(
        Figure(
            "allocate+free 4 KiB",
            await median_seconds_async(alloc_free, 7) * 1e6 / loops,
            "us",
            torch_alloc_free_us(7),
            "torch caching allocator",
        )
    )
    # Where its time goes: the engine's part, and what the interpreter alone charges for the
    # shape of the API (two awaited coroutines and one MemoryHandle), whatever the backend.
    engine = getattr(backend, "_engine", None)
    if engine is not None:
        index = backend._device_index(device)

        async def engine_alloc_free() -> None:
            for _ in range(loops):
                engine.free(engine.allocate(index, 4096))

        engine_us = await median_seconds_async(engine_alloc_free, 7) * 1e6 / loops
        rows.append(Figure("  allocate+free 4 KiB, engine calls alone", engine_us, "us"))

    async def interpreter_floor() -> None:
        for _ in range(loops):
            await nothing()
            await nothing()
            new_handle(device, 4096)

    floor_us = await median_seconds_async(interpreter_floor, 7) * 1e6 / loops
    rows.append(Figure("  two empty awaits + one MemoryHandle", floor_us, "us"))
    handle = await backend.allocate(device, 4096)
    buf = bytearray(os.urandom(4096))
    out = bytearray(4096)

    async def round_trip() -> None:
        await backend.copy_to_device(buf, handle)
        await backend.copy_from_device_into(handle, 0, out)

    rows.append(
        Figure(
            "4 KiB write + read back",
            await median_seconds_async(round_trip, 2000) * 1e6,
            "us",
            torch_small_round_trip_us(200),
            "torch pinned",
        )
    )
    await backend.deallocate(handle)


async def memory_report(backend: Any, device: str, counts: list[int], rows: list[Figure]) -> None:
    live: list[Any] = []
    for count in counts:
        while len(live) < count:
            live.append(await backend.allocate(device, 4096))
        seconds = await median_seconds_async(lambda: backend.get_device_memory_info(device), 200)
        rows.append(Figure(f"memory report, {count:,} live allocations", seconds * 1e6, "us"))
    for handle in live:
        await backend.deallocate(handle)


async def heartbeat(backend: Any, device: str, big: int, seconds: float, rows: list[Figure]) -> None:
    """A thread that wakes every 0.5 ms, while one task copies `big` bytes back and forth and
    another does small reads/writes (4-64 KiB) or 2 MiB reads: its p99 gap shows how long it
    waited for the GIL."""
    for label, sizes in (
        ("4-64 KiB reads/writes", [4 << 10, 16 << 10, 32 << 10, 64 << 10]),
        ("2 MiB reads/writes", [2 * MiB]),
    ):
        beat = await heartbeat_beside_copies(backend, device, sizes, large=big, seconds=seconds)
        rows.append(Figure(f"heartbeat p99 gap, {big // MiB} MiB copies + {label}", beat.p99_ms(), "ms"))


def render(rows: list[Figure]) -> str:
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:,.2f}"

    width = max(len(r.name) for r in rows)
    lines = [f"{'measurement':<{width}}  {'ours':>12}  {'unit':<5}  {'peer':>12}  peer"]
    for r in rows:
        lines.append(
            f"{r.name:<{width}}  {num(r.ours):>12}  {r.unit:<5}  {num(r.peer):>12}  {r.peer_name}"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> list[Figure]:
    backend = await exo_gpu_plugins.open_backend(args.backend)
    device = backend.list_devices()[0].device_id
    rows: list[Figure] = []
    quick = args.quick
    repeats = 3 if quick else 7
    sizes = [32 * MiB, 64 * MiB] if quick else [256 * MiB, GiB]
    try:
        await bandwidth(backend, device, sizes, repeats, rows)
        await both_ways(backend, device, sizes[0], repeats, rows)
        await small_copies(backend, device, repeats * 3, rows)
        await device_copy(backend, device, 64 * MiB if quick else GiB, repeats, rows)
        await small_ops(backend, device, rows)
        await memory_report(backend, device, [100, 100_000], rows)
        await heartbeat(backend, device, 64 * MiB, 2.0 if quick else 4.0, rows)
    finally:
        await backend.shutdown()
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None, help="backend name (default: automatic selection)")
    parser.add_argument("--quick", action="store_true", help="small sizes (lavapipe, CI)")
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    arguments = parser.parse_args()
    figures = asyncio.run(main(arguments))
    sys.stdout.write(render(figures) + "\n")
    if arguments.json:
        with open(arguments.json, "w") as f:
            json.dump([asdict(r) for r in figures], f, indent=2)
    sys.exit(0)
