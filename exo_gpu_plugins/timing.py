"""How the project times things, written once: the median of repeated runs (sync or async), bytes
per second, and a heartbeat thread whose gaps show how long Python threads wait while work runs.

`exo-gpu bench` and every script under benchmarks/ use these, so a figure means the same wherever
it was measured: bandwidths are bytes moved per second with 1 GB = 1e9 bytes, one direction.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exo_gpu_plugins.backend import GPUBackend

__all__ = ["Heartbeat", "gbps", "heartbeat_beside_copies", "median_seconds", "median_seconds_async"]


def median_seconds(run: Callable[[], object], repeats: int, *, warmup: int = 0) -> float:
    """The median wall time of `repeats` calls of `run`, after `warmup` untimed ones (the median:
    one slow run, a page fault or a scheduler hiccup, does not move it)."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def median_seconds_async(
    run: Callable[[], Awaitable[object]], repeats: int, *, warmup: int = 0
) -> float:
    """`median_seconds` of a coroutine function, each run awaited in turn."""
    for _ in range(warmup):
        await run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        await run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gbps(nbytes: int, seconds: float) -> float:
    """GB/s (1e9 bytes per second)."""
    return nbytes / seconds / 1e9


class Heartbeat:
    """A thread that wakes every `period` seconds while the `with` block runs and records the gap
    between wakes: a long gap means it waited (for the GIL, or for a CPU) while other work ran.

        with Heartbeat() as beat:
            ...  # copies
        beat.p99_ms()
    """

    def __init__(self, period: float = 0.0005) -> None:
        self.period = period
        self.gaps: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def _beat(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(self.period)
            now = time.perf_counter()
            self.gaps.append(now - last)
            last = now

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def p99_ms(self) -> float | None:
        """The 99th percentile gap in milliseconds; None with too few beats to tell."""
        if len(self.gaps) <= 100:
            return None
        return statistics.quantiles(self.gaps, n=100)[98] * 1e3


async def heartbeat_beside_copies(
    backend: GPUBackend[Any],
    device_id: str,
    sizes: Sequence[int],
    *,
    large: int = 64 << 20,
    seconds: float = 2.0,
) -> Heartbeat:
    """A heartbeat run for `seconds` while one task copies `large` bytes to the device over and
    over and another writes and reads back each of `sizes` in turn: how long other Python threads
    wait while the backend copies (a backend that holds the GIL in small calls shows it here)."""
    big = await backend.allocate(device_id, large)
    small = await backend.allocate(device_id, max(sizes))
    payload = os.urandom(large)
    buffers = {size: bytearray(os.urandom(size)) for size in sizes}
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            await backend.copy_to_device(payload, big)

    async def small_copies() -> None:
        while not stop.is_set():
            for size in sizes:
                await backend.copy_to_device(buffers[size], small)
                await backend.copy_from_device_into(small, 0, buffers[size])
            await asyncio.sleep(0)

    try:
        with Heartbeat() as beat:
            tasks = [asyncio.ensure_future(writer()), asyncio.ensure_future(small_copies())]
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.gather(*tasks)
    finally:
        await backend.deallocate(big)
        await backend.deallocate(small)
    return beat
