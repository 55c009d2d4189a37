"""`threads.to_the_end`: blocking work that a cancellation cannot cut short (it may read the
caller's file or write device memory, so the awaiting code leaves only once it ended)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from exo_gpu_plugins.threads import to_the_end


async def test_the_result_and_the_exception_come_back() -> None:
    assert await to_the_end(lambda a, b: a + b, 3, 4) == 7

    def failing() -> None:
        raise LookupError("from the thread")

    with pytest.raises(LookupError, match="from the thread"):
        await to_the_end(failing)


async def test_a_cancellation_waits_for_the_call_to_end() -> None:
    started, release = threading.Event(), threading.Event()
    ended: list[bool] = []

    def work() -> int:
        started.set()
        release.wait(10)
        ended.append(True)
        return 7

    task = asyncio.ensure_future(to_the_end(work))
    await asyncio.to_thread(started.wait, 10)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done(), "the cancellation left while the call still ran"
    task.cancel()  # a second one is held too
    await asyncio.sleep(0.05)
    assert not task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ended == [True]
