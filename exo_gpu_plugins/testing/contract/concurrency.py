"""Clause "concurrency": many tasks and threads at once."""

from __future__ import annotations

import asyncio
import threading
from typing import ClassVar

from exo_gpu_plugins.models import MemoryHandle
from exo_gpu_plugins.testing.contract._base import (
    KitBase,
    assert_bytes_equal,
    assert_zero_filled,
    clause,
)
from exo_gpu_plugins.testing.contract._helpers import KiB
from exo_gpu_plugins.testing.support import pattern


class ConcurrencyContract(KitBase):
    """Many tasks and several threads at once; every byte lands where it was sent."""

    tasks: ClassVar[int] = 64
    threads: ClassVar[int] = 4

    @clause("concurrency")
    def test_tasks_on_distinct_allocations(self) -> None:
        b, device, n = self.backend, self.device, self.tasks

        async def one(i: int) -> tuple[MemoryHandle, bytes]:
            size = 4 * KiB + i
            handle = await b.allocate(device, size)
            data = pattern(1000 + i, size)
            await b.copy_to_device(data, handle, 0)
            return handle, data

        async def all_of_them() -> list[tuple[MemoryHandle, bytes, bytes]]:
            written = await asyncio.gather(*(one(i) for i in range(n)))
            reads = await asyncio.gather(*(b.copy_from_device(h, 0, h.size_bytes) for h, _ in written))
            await asyncio.gather(*(b.deallocate(h) for h, _ in written))
            return [(h, d, r) for (h, d), r in zip(written, reads, strict=True)]

        results = self.run(all_of_them())
        assert len({h.handle_id for h, _, _ in results}) == n, "concurrent allocations share ids"
        for i, (_, data, got) in enumerate(results):
            assert_bytes_equal(got, data, f"allocation of task {i} of {n}")

    @clause("concurrency")
    def test_tasks_on_ranges_of_one_allocation(self) -> None:
        b, n, chunk = self.backend, self.tasks, 1 * KiB + 7
        handle = self.alloc(n * chunk)
        parts = [pattern(2000 + i, chunk) for i in range(n)]

        async def write_all() -> None:
            await asyncio.gather(
                *(b.copy_to_device(part, handle, i * chunk) for i, part in enumerate(parts))
            )

        self.run(write_all())
        self.assert_content(handle, b"".join(parts), f"{n} concurrent writes to disjoint ranges")

        async def read_all() -> list[bytes]:
            return await asyncio.gather(
                *(b.copy_from_device(handle, i * chunk, chunk) for i in range(n))
            )

        for i, got in enumerate(self.run(read_all())):
            assert_bytes_equal(got, parts[i], f"concurrent read of range {i}")

    @clause("concurrency")
    def test_mixed_tasks(self) -> None:
        """Writes, reads, copies and frees interleaved on distinct allocations.

        Each destination is read once before use: if the allocator hands out memory that is not
        zero-filled, that is the failure reported, not "bytes before the copied range changed"."""
        b, device = self.backend, self.device

        async def chain(i: int) -> None:
            data = pattern(3000 + i, 2 * KiB)
            src = await b.allocate(device, 2 * KiB)
            dst = await b.allocate(device, 4 * KiB)
            # The range before the copy must still read as zeros below: check that it did at first.
            assert_zero_filled(await b.copy_from_device(dst, 0, 4 * KiB), f"chain {i}")
            await b.copy_to_device(data, src)
            await b.copy_device_to_device(src, dst, 2 * KiB, 0, 1 * KiB + i)
            out = bytearray(2 * KiB)
            await b.copy_from_device_into(dst, 1 * KiB + i, out)
            assert_bytes_equal(bytes(out), data, f"chain {i}")
            assert await b.copy_from_device(dst, 0, 1 * KiB + i) == bytes(1 * KiB + i), (
                f"chain {i}: bytes before the copied range changed"
            )
            await b.deallocate(src)
            await b.deallocate(dst)

        async def run_all() -> None:
            await asyncio.gather(*(chain(i) for i in range(self.tasks // 2)))

        self.run(run_all())

    @clause("concurrency")
    def test_threads_with_their_own_event_loops(self) -> None:
        b, device = self.backend, self.device
        errors: list[BaseException] = []

        async def worker(t: int) -> None:
            for round_ in range(3):
                data = pattern(4000 + t * 10 + round_, 16 * KiB)
                src = await b.allocate(device, len(data))
                dst = await b.allocate(device, len(data))
                await b.copy_to_device(data, src)
                await b.copy_device_to_device(src, dst, len(data))
                assert_bytes_equal(
                    await b.copy_from_device(dst, 0, len(data)), data, f"thread {t} round {round_}"
                )
                await b.deallocate(src)
                await b.deallocate(dst)

        def thread_main(t: int) -> None:
            try:
                asyncio.run(asyncio.wait_for(worker(t), self.operation_timeout_s))
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=thread_main, args=(t,), daemon=True) for t in range(self.threads)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.operation_timeout_s + 10)
        assert not any(thread.is_alive() for thread in threads), "a worker thread hangs"
        if errors:
            raise AssertionError(
                f"{len(errors)} of {self.threads} threads failed: "
                f"{type(errors[0]).__name__}: {errors[0]}"
            ) from errors[0]
