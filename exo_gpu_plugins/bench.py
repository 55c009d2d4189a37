"""Copy-speed benchmark: this project's backend beside every peer present, measured in one run.

Peers, each only when importable: the machine's own memcpy (numpy), wgpu-py (Vulkan, the nearest
Python peer) and CUDA through torch (pageable and pinned host memory). When the backend lists two
or more devices, a copy from the measured device to another one is timed as well, beside CUDA's
copy between the first two CUDA devices (`b.copy_(a)`, a on cuda:0, b on cuda:1). Every figure is
the median of several repetitions; bandwidths are bytes moved per second (1 GB = 1e9 bytes), one
direction (exo_gpu_plugins/timing.py).

`run_benchmark` returns a `BenchReport`; `exo-gpu bench` draws it as a table or prints its JSON.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.models import GPUDevice
from exo_gpu_plugins.registry import open_backend
from exo_gpu_plugins.sizes import exact_label, exact_tag
from exo_gpu_plugins.timing import gbps, median_seconds, median_seconds_async

__all__ = ["BenchReport", "Figure", "run_benchmark"]

log = logging.getLogger(__name__)

MiB = 1 << 20


@dataclass
class Figure:
    """One row of the table: a measurement of this project and of each peer."""

    key: str
    label: str
    unit: str  # "GB/s" (higher is better) or "us" (lower is better)
    ours: float | None = None
    peers: dict[str, float | None] = field(default_factory=dict)

    def ratio(self, peer: str) -> float | None:
        """How many times faster this project is than `peer` (> 1: faster; higher GB/s or lower
        us); None where either figure is missing or zero."""
        theirs = self.peers.get(peer)
        if self.ours is None or theirs is None or theirs == 0 or self.ours == 0:
            return None
        return self.ours / theirs if self.unit == "GB/s" else theirs / self.ours


@dataclass
class BenchReport:
    """What one benchmark run measured: the device, this project's figures and every peer's."""

    date: str
    machine: str
    cpus: int | None
    device: GPUDevice
    backend: str  # the backend's name
    label: str  # "vulkan (vulkan:0, staging)": backend, device and transfer strategy
    peers: list[str]  # the peers measured, in the table's order
    peer_versions: dict[str, str]
    peers_measured: bool  # False with peers=False: the table says so
    figures: list[Figure]

    def as_json(self) -> dict[str, Any]:
        """The `exo-gpu bench --json` record."""
        return {
            "date": self.date,
            "machine": f"{self.machine}, {self.cpus} CPUs",
            "device": self.device.model_dump(mode="json"),
            "backend": self.label,
            "peers": self.peers,
            "peer_versions": self.peer_versions,
            "figures": [asdict(f) for f in self.figures],
        }


class Progress:
    """Counts the benchmark's steps and hands each step's name to `report` (the CLI draws a bar)."""

    def __init__(self, report: Callable[[str], None] | None = None) -> None:
        self.done = 0
        self.report = report

    def step(self, text: str) -> None:
        self.done += 1
        log.info("bench step %d: %s", self.done, text)
        if self.report is not None:
            self.report(text)


def step_count(sizes: Sequence[int], peers: bool, cross: bool) -> int:
    """How many times `run_benchmark` calls its step callback (for a progress bar's total)."""
    return len(sizes) * 3 + 4 + (len(sizes) * 3 + 2 if peers else 0) + (2 if cross else 0)


def _source_buffer(size: int) -> Any:
    """Random bytes as a numpy array when numpy is present (what callers hold), else a bytearray."""
    try:
        import numpy as np
    except ImportError:
        return bytearray(os.urandom(size))
    return np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)


# --------------------------------------------------------------------------------------------------
# This project


async def _measure_ours(
    backend: GPUBackend[Any],
    device_id: str,
    sizes: Sequence[int],
    d2d_size: int,
    repeats: int,
    progress: Progress,
) -> dict[str, float]:
    out: dict[str, float] = {}
    for size in sizes:
        tag = exact_tag(size)
        src = _source_buffer(size)
        handle = await backend.allocate(device_id, size)
        progress.step(f"{backend.name}: host -> device {tag}")
        out[f"h2d_{tag}"] = gbps(
            size, await median_seconds_async(partial(backend.copy_to_device, src, handle), repeats)
        )
        dst = bytearray(size)
        progress.step(f"{backend.name}: device -> host {tag} (into buffer)")
        out[f"d2h_into_{tag}"] = gbps(
            size,
            await median_seconds_async(partial(backend.copy_from_device_into, handle, 0, dst), repeats),
        )
        progress.step(f"{backend.name}: device -> host {tag} (new bytes)")
        out[f"d2h_bytes_{tag}"] = gbps(
            size, await median_seconds_async(partial(backend.copy_from_device, handle, 0, size), repeats)
        )
        if bytes(dst[:4096]) != bytes(memoryview(src)[:4096]):
            raise AssertionError("benchmark read back different bytes")
        await backend.deallocate(handle)
        gc.collect()

    progress.step(f"{backend.name}: 4 KiB write + read back")
    small = await backend.allocate(device_id, 4096)
    payload, back = os.urandom(4096), bytearray(4096)

    async def round_trip() -> None:
        await backend.copy_to_device(payload, small)
        await backend.copy_from_device_into(small, 0, back)

    out["rt_4k_us"] = await median_seconds_async(round_trip, 2000, warmup=50) * 1e6
    if bytes(back) != payload:
        raise AssertionError("4 KiB round trip returned different bytes")
    await backend.deallocate(small)

    progress.step(f"{backend.name}: allocate + free 4 KiB")

    async def alloc_free() -> None:
        await backend.deallocate(await backend.allocate(device_id, 4096))

    out["alloc_4k_us"] = await median_seconds_async(alloc_free, 2000, warmup=50) * 1e6

    progress.step(f"{backend.name}: device -> device {exact_label(d2d_size)}")
    a = await backend.allocate(device_id, d2d_size)
    b = await backend.allocate(device_id, d2d_size)
    await backend.copy_device_to_device(a, b, d2d_size)
    out["d2d"] = gbps(
        d2d_size,
        await median_seconds_async(lambda: backend.copy_device_to_device(a, b, d2d_size), repeats),
    )
    await backend.deallocate(a)
    await backend.deallocate(b)

    progress.step(f"{backend.name}: 64 concurrent 64 KiB copies")
    chunk, count = 64 << 10, 64
    target = await backend.allocate(device_id, chunk * count)
    pieces = [os.urandom(chunk) for _ in range(count)]

    async def concurrent() -> None:
        await asyncio.gather(
            *(backend.copy_to_device(pieces[i], target, i * chunk) for i in range(count))
        )

    await concurrent()
    out["concurrent_64k"] = gbps(chunk * count, await median_seconds_async(concurrent, 20))
    if await backend.copy_from_device(target, 5 * chunk, chunk) != pieces[5]:
        raise AssertionError("concurrent copies lost bytes")
    await backend.deallocate(target)
    return out


async def _measure_cross(
    backend: GPUBackend[Any], first: str, second: str, size: int, repeats: int, progress: Progress
) -> dict[str, float]:
    """`copy_device_to_device` of `size` bytes from `first` to `second` (another device)."""
    progress.step(f"{backend.name}: {first} -> {second} {exact_label(size)}")
    a = await backend.allocate(first, size)
    b = await backend.allocate(second, size)
    try:
        head = os.urandom(4096)
        await backend.copy_to_device(head, a)
        await backend.copy_device_to_device(a, b, size)
        seconds = await median_seconds_async(lambda: backend.copy_device_to_device(a, b, size), repeats)
        if await backend.copy_from_device(b, 0, 4096) != head:
            raise AssertionError("cross-device copy moved different bytes")
    finally:
        await backend.deallocate(a)
        await backend.deallocate(b)
    return {"x2d": gbps(size, seconds)}


def _cross_path(backend: GPUBackend[Any], device: str) -> str | None:
    """How the backend copied between devices, when it says (the Vulkan backend's
    `engine_stats()["cross_device_path"]`: "p2p", "host-import" or "host-staging")."""
    stats = getattr(backend, "engine_stats", None)
    if stats is None:
        return None
    try:
        value = stats(device).get("cross_device_path")
    except Exception:  # a backend's own diagnostics must never fail the benchmark
        return None
    return str(value) if value else None


# --------------------------------------------------------------------------------------------------
# Peers


def _measure_memcpy(sizes: Sequence[int], repeats: int, progress: Progress) -> dict[str, float]:
    try:
        import numpy as np
    except ImportError:
        return {}
    out: dict[str, float] = {}
    for size in sizes:
        progress.step(f"numpy memcpy {exact_label(size)}")
        src = _source_buffer(size)
        dst = np.empty(size, dtype=np.uint8)
        np.copyto(dst, src)
        seconds = median_seconds(partial(np.copyto, dst, src), repeats)
        tag = exact_tag(size)
        for key in (f"h2d_{tag}", f"d2h_into_{tag}", f"d2h_bytes_{tag}"):
            out[key] = gbps(size, seconds)
    return out


def _measure_wgpu(sizes: Sequence[int], repeats: int, progress: Progress) -> dict[str, float]:
    try:
        import wgpu
    except ImportError:
        return {}
    try:
        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
        device = adapter.request_device_sync()
    except Exception as exc:
        log.info("wgpu peer unavailable: %s", exc)
        return {}
    usage = wgpu.BufferUsage.COPY_DST | wgpu.BufferUsage.COPY_SRC
    out: dict[str, float] = {}
    for size in sizes:
        tag = exact_tag(size)
        src = _source_buffer(size)
        buffer = device.create_buffer(size=size, usage=usage)
        progress.step(f"wgpu-py {tag}")

        out[f"h2d_{tag}"] = gbps(
            size, median_seconds(partial(_wgpu_upload, device, buffer, src), repeats)
        )
        seconds = median_seconds(partial(device.queue.read_buffer, buffer, 0, size), repeats)
        out[f"d2h_bytes_{tag}"] = gbps(size, seconds)
        out[f"d2h_into_{tag}"] = gbps(size, seconds)
        buffer.destroy()
    small = device.create_buffer(size=4096, usage=usage)
    payload = os.urandom(4096)
    progress.step("wgpu-py 4 KiB round trip and allocate + free")

    def round_trip() -> None:
        device.queue.write_buffer(small, 0, payload)
        device.queue.read_buffer(small, 0, 4096)

    out["rt_4k_us"] = median_seconds(round_trip, 300) * 1e6
    out["alloc_4k_us"] = (
        median_seconds(lambda: device.create_buffer(size=4096, usage=usage).destroy(), 2000) * 1e6
    )
    return out


def _wgpu_upload(device: Any, buffer: Any, data: Any) -> None:
    device.queue.write_buffer(buffer, 0, data)
    device.queue.read_buffer(buffer, 0, 4)  # returns once the upload has landed


def _torch_copy(dst: Any, src: Any) -> None:
    import torch

    dst.copy_(src)
    torch.cuda.synchronize()


def _to_bytes(gpu: Any) -> bytes:
    data: bytes = gpu.cpu().numpy().tobytes()
    return data


def _measure_torch(
    sizes: Sequence[int], d2d_size: int, repeats: int, progress: Progress, cross: bool = False
) -> dict[str, dict[str, float]]:
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    sync = torch.cuda.synchronize
    pageable: dict[str, float] = {}
    pinned: dict[str, float] = {}
    for size in sizes:
        tag = exact_tag(size)
        progress.step(f"torch CUDA {tag}")
        gpu = torch.empty(size, dtype=torch.uint8, device="cuda")
        host = torch.randint(0, 255, (size,), dtype=torch.uint8)
        pin = host.pin_memory()
        for table, cpu in ((pageable, host), (pinned, pin)):
            _torch_copy(gpu, cpu)
            table[f"h2d_{tag}"] = gbps(size, median_seconds(partial(_torch_copy, gpu, cpu), repeats))
            table[f"d2h_into_{tag}"] = gbps(
                size, median_seconds(partial(_torch_copy, cpu, gpu), repeats)
            )
        pageable[f"d2h_bytes_{tag}"] = gbps(size, median_seconds(partial(_to_bytes, gpu), repeats))
    progress.step("torch CUDA small operations and device -> device")
    small = torch.empty(4096, dtype=torch.uint8, device="cuda")
    payload = torch.randint(0, 255, (4096,), dtype=torch.uint8)
    back = torch.empty(4096, dtype=torch.uint8)

    def round_trip(src: Any, dst: Any) -> None:
        small.copy_(src)
        dst.copy_(small)
        sync()

    pageable["rt_4k_us"] = median_seconds(lambda: round_trip(payload, back), 2000) * 1e6
    pinned["rt_4k_us"] = (
        median_seconds(lambda: round_trip(payload.pin_memory(), back.pin_memory()), 200) * 1e6
    )

    def alloc_free() -> None:
        block = torch.empty(4096, dtype=torch.uint8, device="cuda")
        del block

    pageable["alloc_4k_us"] = median_seconds(alloc_free, 2000) * 1e6
    a = torch.empty(d2d_size, dtype=torch.uint8, device="cuda")
    b = torch.empty(d2d_size, dtype=torch.uint8, device="cuda")

    def d2d() -> None:
        b.copy_(a)
        sync()

    d2d()
    pageable["d2d"] = gbps(d2d_size, median_seconds(d2d, repeats))
    if cross and torch.cuda.device_count() >= 2:
        progress.step("torch CUDA cuda:0 -> cuda:1")
        x = torch.empty(d2d_size, dtype=torch.uint8, device="cuda:0")
        y = torch.empty(d2d_size, dtype=torch.uint8, device="cuda:1")

        def x2d() -> None:
            y.copy_(x)
            torch.cuda.synchronize(0)
            torch.cuda.synchronize(1)

        x2d()
        pageable["x2d"] = gbps(d2d_size, median_seconds(x2d, repeats))
    return {"CUDA pageable (torch)": pageable, "CUDA pinned (torch)": pinned}


# --------------------------------------------------------------------------------------------------
# Table


def _figures(sizes: Sequence[int], d2d_size: int, cross: str | None = None) -> list[Figure]:
    rows: list[Figure] = []
    for size in sizes:
        tag = exact_tag(size)
        mib = exact_label(size)
        rows += [
            Figure(f"h2d_{tag}", f"host -> device, {mib}", "GB/s"),
            Figure(f"d2h_into_{tag}", f"device -> host, {mib}, into buffer", "GB/s"),
            Figure(f"d2h_bytes_{tag}", f"device -> host, {mib}, new bytes", "GB/s"),
        ]
    rows += [
        Figure("rt_4k_us", "4 KiB write + read back", "us"),
        Figure("alloc_4k_us", "allocate + free 4 KiB", "us"),
        Figure("d2d", f"device -> device, {exact_label(d2d_size)}", "GB/s"),
        Figure("concurrent_64k", "64 concurrent 64 KiB copies", "GB/s"),
    ]
    if cross:
        rows.append(Figure("x2d", f"device -> other device, {exact_label(d2d_size)} ({cross})", "GB/s"))
    return rows


async def run_benchmark(
    backend_name: str | GPUBackend[Any] | None = None,
    device_id: str | None = None,
    sizes: Sequence[int] = (64 * MiB, 256 * MiB),
    d2d_size: int = 1024 * MiB,
    repeats: int = 5,
    peers: bool = True,
    step: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure this project and every peer present. `backend_name` may also be a backend already
    initialized (it is shut down here); `step` hears the name of each step as it starts. A size
    given twice is measured once."""
    sizes = list(dict.fromkeys(sizes))
    backend = backend_name if isinstance(backend_name, GPUBackend) else await open_backend(backend_name)
    progress = Progress(step)
    try:
        listed = [d.device_id for d in backend.list_devices()]
        device = device_id or listed[0]
        other = next((d for d in listed if d != device), None)
        description = await backend.get_device_properties(device)
        ours = await _measure_ours(backend, device, sizes, d2d_size, repeats, progress)
        cross = None
        if other is not None:
            ours.update(await _measure_cross(backend, device, other, d2d_size, repeats, progress))
            path = _cross_path(backend, device)
            cross = f"{device} -> {other}" + (f", {path}" if path else "")
        strategy = backend.capabilities(device).transfer_strategy
    finally:
        await backend.shutdown()
    peer_values: dict[str, dict[str, float]] = {}
    if peers:
        peer_values["memcpy (numpy)"] = _measure_memcpy(sizes, repeats, progress)
        peer_values["wgpu-py"] = _measure_wgpu(sizes, repeats, progress)
        peer_values.update(_measure_torch(sizes, d2d_size, repeats, progress, cross=other is not None))
    present = [name for name, values in peer_values.items() if values]
    figures = _figures(sizes, d2d_size, cross)
    for fig in figures:
        fig.ours = ours.get(fig.key)
        fig.peers = {name: peer_values[name].get(fig.key) for name in present}
    return BenchReport(
        date=time.strftime("%Y-%m-%d"),
        machine=f"{platform.node()} {platform.machine()}",
        cpus=os.cpu_count(),
        device=description,
        backend=backend.name,
        label=f"{backend.name} ({device}, {strategy})",
        peers=present,
        peer_versions=_peer_versions(),
        peers_measured=peers,
        figures=figures,
    )


def _peer_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for module in ("numpy", "wgpu", "torch"):
        loaded = sys.modules.get(module)
        if loaded is not None:
            versions[module] = str(getattr(loaded, "__version__", "?"))
    return versions
