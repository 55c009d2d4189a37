"""Ctrl-C for the CLI: a command ends within a second, whatever it is waiting on.

`run(coroutine)` is `asyncio.run` with its own SIGINT handling. The first Ctrl-C cancels the
command, so its clean-up runs as usual (allocations freed, the backend shut down) and `main`
exits with status 130. A clean-up can take longer than a person should wait: the weights loader
lets a running copy of up to 1 GiB finish before freeing its memory, a worker thread may sit in
a read from a slow disk, and `asyncio.run` joins its worker threads before it returns. So if the
command has not ended `GRACE_SECONDS` after the Ctrl-C (or at a second Ctrl-C), the process exits
at once with status 130; the operating system then frees everything it held, device memory
included.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Coroutine
from types import FrameType
from typing import Any, TypeVar

from exo_gpu_plugins.cli.options import EXIT_INTERRUPTED

__all__ = ["GRACE_SECONDS", "run"]

T = TypeVar("T")

GRACE_SECONDS = 0.25


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run the command's coroutine to the end; raises `KeyboardInterrupt` if Ctrl-C cancelled it."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        # Only the main thread receives signals, and a caller with its own SIGINT handling
        # (or SIGINT ignored, as in a background job) keeps it.
        return asyncio.run(coroutine)
    state = _Interrupt()

    async def main() -> T:
        state.started(asyncio.get_running_loop(), asyncio.current_task())
        return await coroutine

    previous = signal.signal(signal.SIGINT, state.on_sigint)
    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if state.interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
        state.disarm()
        coroutine.close()  # never started if the loop failed to start: no "never awaited" warning


class _Interrupt:
    def __init__(self) -> None:
        self.interrupted = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._timer: threading.Timer | None = None

    def started(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any] | None) -> None:
        self._loop, self._task = loop, task

    def on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self._loop is None or self._task is None or self._task.done():
            raise KeyboardInterrupt
        if self.interrupted:  # a second Ctrl-C: stop now
            _exit_now()
        self.interrupted = True
        self._loop.call_soon_threadsafe(self._task.cancel)
        self._timer = threading.Timer(GRACE_SECONDS, _exit_now)
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _exit_now() -> None:
    """End the process with status 130 without waiting for anything: threads, clean-up, nor a
    flush of output a stopped reader may never take."""
    os._exit(EXIT_INTERRUPTED)
