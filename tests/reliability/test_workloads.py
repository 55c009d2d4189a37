"""Load, soak, memory pressure, isolation and cancellation, at CI size (EXO_GPU_RELIABILITY_SCALE
multiplies them; benchmarks/reliability.py runs the full sizes and prints the figures)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import InvalidHandleError
from exo_gpu_plugins.testing import stress
from tests.reliability.conftest import SCALE

MiB = 1 << 20


def device_of(backend: GPUBackend[Any]) -> str:
    return backend.list_devices()[0].device_id


def test_load_threads_and_tasks(backend: GPUBackend[Any]) -> None:
    figures = stress.load(
        backend, device_of(backend), threads=4, tasks=8, operations_per_task=60 * SCALE, timeout=240
    )
    assert figures.operations == 4 * 8 * 60 * SCALE
    assert figures.bytes_verified > 0


async def test_soak_leaks_nothing(backend: GPUBackend[Any]) -> None:
    stats = getattr(backend, "engine_stats", None)
    device = device_of(backend)
    figures = await stress.soak(
        backend,
        device,
        cycles=20_000 * SCALE,
        max_size=256 << 10,
        stats=(lambda: stats(device)) if stats else None,
    )
    assert figures.rss_growth_bytes < 2 * MiB, figures
    assert figures.used_after == figures.used_before, figures
    if figures.stats_before:
        assert figures.stats_after["live_allocations"] == figures.stats_before["live_allocations"]
        assert figures.stats_after["live_bytes"] == figures.stats_before["live_bytes"]
        assert figures.stats_after["block_count"] <= figures.stats_before["block_count"] + 1, figures


async def test_memory_pressure(backend: GPUBackend[Any]) -> None:
    device = device_of(backend)
    caps = backend.capabilities(device)
    total = backend.list_devices()[0].memory_bytes
    if caps.unified_memory and caps.transfer_strategy == "memcpy" and total > 8 << 30:
        pytest.skip("exhausting the host's own RAM would endanger the machine running the test")
    figures = await stress.memory_pressure(backend, device, chunk=64 * MiB)
    assert figures.huge_request_refused
    assert figures.allocations_before_oom > 0
    slack = caps.allocation_granularity_bytes + figures.chunk_bytes
    assert abs(figures.available_after_free - figures.baseline_available) <= slack, figures


async def test_freed_memory_never_reaches_a_new_owner(backend: GPUBackend[Any]) -> None:
    figures = await stress.isolation(backend, device_of(backend), cycles=20 * SCALE)
    assert figures.handle_id_bits >= 128
    assert figures.distinct_handle_ids == 20 * SCALE * 3


async def test_handles_do_not_cross_instances(factory: Callable[[], GPUBackend[Any]]) -> None:
    a, b = factory(), factory()
    await a.initialize()
    await b.initialize()
    device = device_of(a)
    secret = await a.allocate(device, 4096)
    await a.copy_to_device(b"secret" * 100, secret)
    with pytest.raises(InvalidHandleError):
        await b.copy_from_device(secret, 0, 6)
    with pytest.raises(InvalidHandleError):
        await b.copy_device_to_device(secret, await b.allocate(device, 4096), 6)
    await a.shutdown()
    await b.shutdown()


async def test_cancelled_large_copy(backend: GPUBackend[Any]) -> None:
    figures = await stress.cancel_large_copy(backend, device_of(backend), size=128 * MiB)
    assert figures.live_after == 0
    assert figures.destination_state in {"old bytes", "new bytes", "mixed"}
