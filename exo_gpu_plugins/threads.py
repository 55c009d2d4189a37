"""Blocking work in a worker thread that a cancellation cannot cut short.

`asyncio.to_thread` returns a task that anyone may cancel (`asyncio.run`'s teardown cancels every
task): the awaiting code then leaves while the thread still runs. Work that reads the caller's
file or writes device memory must not outlive what it uses (the descriptor closed, the memory
freed), so `to_the_end` waits for the thread itself, through a future only it completes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

__all__ = ["to_the_end"]

T = TypeVar("T")


async def to_the_end(call: Callable[..., T], *args: object) -> T:
    """`call(*args)` in the loop's executor; returns its result or raises its exception. A
    cancellation meanwhile is held until the call has ended, then raised."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:  # once, by the thread
        if error is not None:
            ended.set_exception(error)
        else:
            ended.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = call(*args)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    loop.run_in_executor(None, run)
    cancelled = False
    while not ended.done():
        try:
            await asyncio.shield(ended)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        ended.exception()  # seen: the cancellation is what leaves
        raise asyncio.CancelledError
    return ended.result()
