"""The in-flight gate: a backend's state (new, open, closed) and the count of its operations
running, so that `shutdown()` can wait for running copies before it frees their memory."""

from __future__ import annotations

import collections
import enum
import time
from collections.abc import Callable

__all__ = ["Gate", "State"]


class State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class Gate:
    """Counts the operations in flight, refusing new ones once the backend is not open.

    The count is the length of a deque: `append` and `pop` are atomic, so no lock is taken per
    operation. An operation counts itself *before* it looks at the state, and shutdown marks the
    state closed *before* it waits for the count to reach zero, so no operation can slip past."""

    __slots__ = ("_inflight", "closed_error", "state")

    def __init__(self, closed_error: Callable[[], Exception]) -> None:
        self.state = State.NEW
        self.closed_error = closed_error  # what a refused operation raises
        self._inflight: collections.deque[None] = collections.deque()

    def __enter__(self) -> None:
        self._inflight.append(None)
        if self.state is not State.OPEN:
            self._inflight.pop()
            raise self.closed_error()

    def __exit__(self, *exc_info: object) -> None:
        self._inflight.pop()

    def drain(self) -> None:
        """Wait until no operation is in flight (the backend is already marked closed, so the
        count only falls). Shutdown is rare; polling keeps the per-operation path lock-free."""
        while self._inflight:
            time.sleep(0.001)
