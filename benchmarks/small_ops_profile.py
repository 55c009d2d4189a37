"""Where the time of small operations goes: the engine alone versus the same work through the
async API, and asyncio's own cost for 64 gathered coroutines. Backs the gap analysis of the
small-operation targets in RESULTS.md.

    python benchmarks/small_ops_profile.py [--backend vulkan]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import exo_gpu_plugins


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


async def timed(repeats: int, body: Callable[[], Awaitable[Any]]) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        await body()
        samples.append(time.perf_counter() - start)
    return median_us(samples)


async def main(backend_name: str) -> None:
    backend = await exo_gpu_plugins.open_backend(backend_name)
    device = backend.list_devices()[0].device_id
    engine = getattr(backend, "_engine", None)
    chunk, count = 64 << 10, 64
    target = await backend.allocate(device, chunk * count)
    pieces = [os.urandom(chunk) for _ in range(count)]

    async def noop() -> None:
        return None

    async def gather_noop() -> None:
        await asyncio.gather(*(noop() for _ in range(count)))

    async def gather_copies() -> None:
        await asyncio.gather(
            *(backend.copy_to_device(pieces[i], target, i * chunk) for i in range(count))
        )

    async def one_by_one() -> None:
        for i in range(count):
            await backend.copy_to_device(pieces[i], target, i * chunk)

    async def alloc_free() -> None:
        await backend.deallocate(await backend.allocate(device, 4096))

    print(f"{backend.name} on {device}; medians")
    print(f"  64 gathered no-op coroutines           {await timed(50, gather_noop):9.1f} us")
    print(f"  64 gathered 64 KiB copies              {await timed(50, gather_copies):9.1f} us")
    print(f"  the same 64 copies awaited in turn     {await timed(50, one_by_one):9.1f} us")
    print(f"  allocate + free 4 KiB, async API       {await timed(2000, alloc_free):9.2f} us")
    if engine is not None:
        native = backend._live[target.handle_id].native[0]

        async def engine_writes() -> None:
            for i in range(count):
                engine.write(native, i * chunk, pieces[i])

        async def engine_alloc_free() -> None:
            engine.free(engine.allocate(0, 4096))

        print(f"  the 64 copies, engine calls alone      {await timed(50, engine_writes):9.1f} us")
        print(f"  allocate + free 4 KiB, engine alone    {await timed(2000, engine_alloc_free):9.2f} us")
    await backend.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None)
    asyncio.run(main(parser.parse_args().backend))
    sys.exit(0)
