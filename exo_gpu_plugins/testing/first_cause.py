"""Naming the first cause of a state-machine failure, not the last symptom.

Hypothesis reports what went wrong last. When a backend misbehaves differently on each replay of a
program (typically because its state outlives an instance, so a replay meets the leftovers of earlier
runs), that is `FlakyStrategyDefinition` or `FlakyFailure`, which point at the kit; the real error
was raised earlier and showed only with `-v`. `History` keeps, per bound machine, the first error
any example raised and the contents of freed allocations, so that stray bytes in new memory can be
traced to where they were written (this instance, an earlier instance, another live allocation).

`invalid_model` does the same for every clause: a model the backend built that refused its own
figures (a `MemoryReport` that does not add up) is reported by its validator's message, not by
pydantic's wrapper. The module imports no Hypothesis (it is loaded only to tell Hypothesis' own
exceptions apart, when one is raised), so every clause can use it.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

if TYPE_CHECKING:
    from hypothesis.errors import Flaky

__all__ = ["OUTLIVES", "History", "flaky_report", "invalid_model", "recording"]

F = TypeVar("F", bound=Callable[..., Any])

# A run of this many bytes found elsewhere names where stray bytes came from. The kit writes
# pseudo-random patterns, so 8 matching bytes are no coincidence; fewer could be.
_MIN_WINDOW = 8
_WINDOW = 32
# Freed contents kept for tracing, at most (the oldest are dropped first).
_KEPT_BYTES = 16 << 20

OUTLIVES = "backend state outlives its instance"


@dataclass
class History:
    """What the examples of one bound state machine saw so far."""

    instances: int = 0
    first_error: BaseException | None = None
    first_error_instance: int = 0
    outlives: str | None = None
    _freed: deque[tuple[int, bytes]] = field(default_factory=deque)
    _failed: set[int] = field(default_factory=set)
    _freed_bytes: int = 0

    def new_instance(self) -> int:
        """Number a new backend instance (1, 2, ...): one per example or replay."""
        self.instances += 1
        return self.instances

    def record(self, error: BaseException, instance: int) -> None:
        """Keep the first error; later ones are usually its consequences or replays."""
        self._failed.add(instance)
        if self.first_error is None:
            self.first_error = error
            self.first_error_instance = instance

    def failed(self, instance: int) -> bool:
        """Whether `instance` raised an error already (its teardown then checks no more)."""
        return instance in self._failed

    def freed(self, instance: int, content: bytes) -> None:
        """An allocation with these contents was freed (or left to shutdown) by `instance`."""
        if not any(content):
            return
        self._freed.append((instance, content))
        self._freed_bytes += len(content)
        while self._freed_bytes > _KEPT_BYTES:
            _, dropped = self._freed.popleft()
            self._freed_bytes -= len(dropped)

    def origin(
        self, instance: int, stray: bytes, live: Mapping[str, bytes], whole: bytes | None
    ) -> str | None:
        """Where `stray` (bytes read where the model expects zeros) were written, when known.

        `whole` is the allocation's full contents when the read covered it: a shrunk program's
        allocations are a few bytes, too short to search for, but equal what came before them."""
        window = stray[:_WINDOW]
        if not any(window):
            return None

        def holds(content: bytes) -> bool:
            return (len(window) >= _MIN_WINDOW and window in content) or content == whole

        if any(holds(content) for content in live.values()):
            return "these bytes belong to another live allocation: two allocations share memory"
        for source, content in reversed(self._freed):
            if not holds(content):
                continue
            if source == instance:
                return (
                    "these bytes were written to memory this instance freed earlier: freed memory "
                    "was handed out again without being cleared"
                )
            found = (
                f"{OUTLIVES}: instance {instance} read bytes written through instance {source}, "
                "which had been shut down (a pool, cache or arena kept at module or class level?)"
            )
            self.outlives = self.outlives or found
            return found
        return None


def recording(method: F) -> F:
    """Wrap a rule, invariant or teardown of a machine with a `history`: record its first error."""

    @functools.wraps(method)
    def recorded(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            from hypothesis.errors import HypothesisException

            if not isinstance(exc, HypothesisException):  # not Hypothesis' own control flow
                type(self).history.record(exc, getattr(self, "instance", 0))
            raise

    return recorded  # type: ignore[return-value]


def flaky_report(history: History, flaky: Flaky) -> str | None:
    """The message to raise instead of Hypothesis' flakiness report: the first error, then why a
    replay may not have repeated it. None when no example raised anything of the backend's."""
    error = history.first_error
    if error is None:
        return None
    first = str(error) if isinstance(error, AssertionError) else f"{type(error).__name__}: {error}"
    lines = [first]
    if history.outlives is not None:
        if history.outlives not in first:
            lines.append(history.outlives)
    else:
        lines.append(
            "the failure did not repeat when Hypothesis replayed the same calls on a new instance: "
            "the backend's behaviour depends on more than the calls made on that instance (state "
            "kept across instances, timing, or other threads)"
        )
    lines.append(
        f"(Hypothesis then stopped with {type(flaky).__name__}, which describes the replay, not "
        f"the cause; the error above is the first one the state machine saw, on instance "
        f"{history.first_error_instance} of {history.instances})"
    )
    return "\n".join(lines)


def invalid_model(error: ValidationError) -> str:
    """The message of a model a backend built and its validators refused, without pydantic's
    wrapper: `MemoryReport refused the backend's values: impossible memory report: used +
    available + reserved = 285212672 != total = 268435456`."""
    problems = []
    for detail in error.errors(include_url=False, include_input=False):
        cause = detail.get("ctx", {}).get("error")
        text = str(cause) if cause is not None else str(detail.get("msg", ""))
        where = ".".join(str(part) for part in detail.get("loc", ()))
        problems.append(f"{where}: {text}" if where else text)
    return f"{error.title} refused the backend's values: " + "; ".join(problems)
