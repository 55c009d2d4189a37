"""A Hypothesis state machine that drives a backend and checks every byte against a model.

The example-based tests of the kit check each call on hand-picked cases. Bugs that only show after a
particular sequence (a reused block that is not cleared, a copy that clobbers a neighbour, a stale
read cache, a handle table that loses an entry) need random sequences; Hypothesis generates them,
and when one diverges it shrinks the sequence to a short program that reproduces the bug.

The model is a `bytearray` per live allocation, and the memory figures of the instance when it
opened. Rules: allocate, free, write, read, read into a buffer, copy between allocations, copy
inside one allocation (overlapping, memmove), synchronize. Every rule compares the backend with the
model; after each free the memory report must add up and `used_bytes` (and `available_bytes`,
where it follows allocations) must be back at the opening level plus what the live allocations
hold, within the declared granularity; teardown compares every allocation in full, frees every
other one and checks the figures again. Before any of this, the first instance of a
run checks the backend's reads on their own (`support.check_reads`), so that a wrong read is
reported as a wrong read, not as a divergence of whatever it was reading.

    class TestMyBackendMachine(make_state_machine(MyBackend)): ...   # a unittest TestCase
    run_state_machine(MyBackend)                                       # or run it directly

Sizes: `max_examples` defaults to 200, steps per example to 25; `EXO_GPU_KIT_EXAMPLES` and
`EXO_GPU_KIT_STEPS` override them for long fuzzing runs (e.g. `EXO_GPU_KIT_STEPS=10000`).
Allocations are at most 64 KiB so that 200 examples run in seconds even on a software GPU.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import unittest
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar

from hypothesis import HealthCheck, Phase
from hypothesis import settings as HypothesisSettings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir, storage_directory
from hypothesis.errors import Flaky
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import InvalidHandleError
from exo_gpu_plugins.models import MemoryHandle, MemoryReport
from exo_gpu_plugins.testing.first_cause import OUTLIVES, History, flaky_report, recording
from exo_gpu_plugins.testing.support import (
    WRONG_READ,
    available_follows_allocations,
    check_reads,
    check_report,
    close_loop,
    pattern,
)

__all__ = [
    "DEFAULT_EXAMPLES",
    "DEFAULT_STEPS",
    "ENV_EXAMPLES",
    "ENV_STEPS",
    "MAX_ALLOCATION_BYTES",
    "BackendStateMachine",
    "kit_settings",
    "make_state_machine",
    "run_state_machine",
    "scratch_storage",
]

T = TypeVar("T")
BackendFactory = Callable[[], GPUBackend[Any]]

ENV_EXAMPLES = "EXO_GPU_KIT_EXAMPLES"
ENV_STEPS = "EXO_GPU_KIT_STEPS"
DEFAULT_EXAMPLES = 200
DEFAULT_STEPS = 25
MAX_ALLOCATION_BYTES = 64 * 1024
MAX_LIVE_ALLOCATIONS = 8
_OPERATION_TIMEOUT_S = 120.0
_GUARD = 0xEE
_STRAY_WINDOW = 32
# Every phase but `explain`: explaining a failing program re-runs it hundreds of times to mark which
# steps matter, which costs more than finding and shrinking the failure, on a software GPU minutes.
_PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)


def kit_settings(
    examples: int | None = None, steps: int | None = None, *, database: bool = True
) -> HypothesisSettings:
    """The state machine's Hypothesis settings: arguments > environment > defaults.

    `deadline=None` because a GPU call's latency varies with the driver, not with the input; the
    `explain` phase is left out (see `_PHASES`).
    `database=False` keeps a CLI check from writing `.hypothesis/` into the user's directory.
    """
    examples = examples if examples is not None else _env_int(ENV_EXAMPLES, DEFAULT_EXAMPLES)
    steps = steps if steps is not None else _env_int(ENV_STEPS, DEFAULT_STEPS)
    extra: dict[str, Any] = {} if database else {"database": None}
    return HypothesisSettings(
        max_examples=max(1, examples),
        stateful_step_count=max(1, steps),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        phases=_PHASES,
        **extra,
    )


@contextmanager
def scratch_storage() -> Iterator[None]:
    """Hypothesis' storage (its `.hypothesis/` directory: the example database, the constants it
    caches from source files) in a temporary directory while the block runs, then where it was.
    With `kit_settings(database=False)` this keeps a run from writing into the working directory."""
    previous = storage_directory(intent_to_write=False).home_directory
    with tempfile.TemporaryDirectory(prefix="exo-gpu-kit-hypothesis-") as scratch:
        set_hypothesis_home_dir(scratch)
        try:
            yield
        finally:
            set_hypothesis_home_dir(previous)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


class BackendStateMachine(RuleBasedStateMachine):
    """Random programs of memory calls, checked against a `bytearray` model per allocation.

    Bind it to a backend with `bind(factory)` (or subclass it and set `backend_factory`). Each example
    opens a new backend from the factory, with its own event loop, and shuts it down at teardown, so
    a failing program replays alone when Hypothesis shrinks it.
    """

    backend_factory: ClassVar[BackendFactory | None] = None
    device_id: ClassVar[str | None] = None
    # Rule steps checked so far by this (bound) class, over every example: fuzzing reports it.
    steps_checked: ClassVar[int] = 0
    # The first error and the freed contents seen by this class's examples (see first_cause.py).
    history: ClassVar[History] = History()
    # Whether this (bound) class checked the backend's reads on their own yet (first instance).
    reads_checked: ClassVar[bool] = False

    allocations = Bundle("allocations")

    def __init__(self) -> None:
        super().__init__()
        factory = type(self).backend_factory
        if factory is None:
            raise TypeError(
                "BackendStateMachine has no backend: use BackendStateMachine.bind(factory) "
                "or set backend_factory on a subclass"
            )
        self.instance = type(self).history.new_instance()
        self._loop = asyncio.new_event_loop()
        self._model: dict[str, bytearray] = {}
        self._written = False  # whether this instance was given any bytes to write yet
        try:
            self.backend = factory()
            self._run(self.backend.initialize())
            self.device = type(self).device_id or self.backend.list_devices()[0].device_id
            if not type(self).reads_checked:
                self._run(check_reads(self.backend, self.device))
                type(self).reads_checked = True
            caps = self.backend.capabilities(self.device)
            self._granularity = caps.allocation_granularity_bytes
            # A driver's live budget moves with other processes: there used_bytes alone is held.
            self._tracks_available = available_follows_allocations(caps) and not caps.memory_budget
            self._opened = self._report("when the instance opened")
        except BaseException as exc:
            if isinstance(exc, Exception):
                type(self).history.record(exc, self.instance)
            self._close_loop()
            raise

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.history = History()  # each bound class (each run) traces its own examples
        cls.reads_checked = False

    @classmethod
    def bind(cls, factory: BackendFactory, *, device_id: str | None = None) -> type[BackendStateMachine]:
        """A subclass driving backends made by `factory` (a backend class or a function)."""
        name = getattr(factory, "__name__", type(factory).__name__)
        namespace = {
            "backend_factory": staticmethod(factory),
            "device_id": device_id,
            "__module__": cls.__module__,
        }
        return type(f"{cls.__name__}[{name}]", (cls,), namespace)

    # ----------------------------------------------------------------------------------------------
    # Helpers

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(asyncio.wait_for(coro, _OPERATION_TIMEOUT_S))

    def _close_loop(self) -> None:
        close_loop(self._loop)

    def _report(self, when: str) -> MemoryReport:
        report = self._run(self.backend.get_device_memory_info(self.device))
        check_report(report, f"memory report of {self.device} {when}")
        return report

    def _check_accounting(self, after: str) -> None:
        """The figures add up, and used (and available) bytes are where the live allocations put
        them: at the opening level plus at most their sizes rounded up to the granularity, plus
        one granule (an allocator may keep a block). What is above that was freed and not given
        back."""
        report = self._report(f"after {after}")
        g = self._granularity
        held = sum(-(-len(content) // g) * g for content in self._model.values())
        live = f"{len(self._model)} live allocations hold at most {held} bytes (granularity {g})"
        figures = [("used_bytes", report.used_bytes - self._opened.used_bytes, "above")]
        if self._tracks_available:
            fell = self._opened.available_bytes - report.available_bytes
            figures.append(("available_bytes", fell, "below"))
        for name, moved, direction in figures:
            if moved > held + g:
                raise AssertionError(
                    f"{name} did not come back after {after}: it is {moved} bytes {direction} its "
                    f"level when this instance opened, while the {live}: {moved - held} bytes "
                    "freed were not given back (a free list that does not take freed memory back?)"
                )

    def _expect(self, got: bytes, handle: MemoryHandle, offset: int, what: str) -> None:
        want = bytes(self._model[handle.handle_id][offset : offset + len(got)])
        if got == want:
            return
        if offset or len(got) != handle.size_bytes:  # a ranged read: is the read itself wrong?
            entire = self._run(self.backend.copy_from_device(handle, 0, handle.size_bytes))
            if entire[offset : offset + len(got)] == want:
                raise AssertionError(
                    f"{WRONG_READ}copy_from_device(offset={offset}, size={len(got)}) of the "
                    f"{handle.size_bytes}-byte allocation differs from the model, while a read of "
                    f"the whole allocation agrees with it: the read is wrong, not {what}"
                )
        first = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
        message = (
            f"{what}: backend diverges from the model at byte {offset + first} of the "
            f"{handle.size_bytes}-byte allocation: read {got[first]:#04x}, expected "
            f"{want[first]:#04x} ({sum(a != b for a, b in zip(got, want, strict=True))} of "
            f"{len(got)} bytes differ)"
        )
        stray = got[first:]
        if not any(want[first : first + _STRAY_WINDOW]):  # bytes where the model has zeros
            others = {
                key: bytes(content) for key, content in self._model.items() if key != handle.handle_id
            }
            whole = got if offset == 0 and len(got) == handle.size_bytes else None
            origin = type(self).history.origin(self.instance, stray, others, whole)
            if origin is None and not self._written:
                origin = (
                    f"{OUTLIVES}: instance {self.instance} has written nothing yet, so these bytes "
                    "were written through an earlier instance (a pool, cache or arena kept at "
                    "module or class level, handed on uncleared?)"
                )
                type(self).history.outlives = type(self).history.outlives or origin
            if origin is not None:
                message += "\n" + origin
        raise AssertionError(message)

    @staticmethod
    def _range(data: st.DataObject, size: int) -> tuple[int, int]:
        offset = data.draw(st.integers(0, size), label="offset")
        length = data.draw(st.integers(0, size - offset), label="length")
        return offset, length

    # ----------------------------------------------------------------------------------------------
    # Rules

    @precondition(lambda self: len(self._model) < MAX_LIVE_ALLOCATIONS)
    @rule(
        target=allocations,
        size=st.one_of(st.integers(1, 64), st.integers(1, 4096), st.integers(1, MAX_ALLOCATION_BYTES)),
    )
    @recording
    def allocate(self, size: int) -> MemoryHandle:
        """New memory must read back as zeros, whatever this backend held there before."""
        handle = self._run(self.backend.allocate(self.device, size))
        assert handle.size_bytes == size, f"allocate({size}) returned size {handle.size_bytes}"
        assert handle.handle_id not in self._model, "allocate returned a live handle id twice"
        self._model[handle.handle_id] = bytearray(size)
        self._expect(
            self._run(self.backend.copy_from_device(handle, 0, size)), handle, 0, "fresh allocation"
        )
        return handle

    @rule(handle=consumes(allocations))
    @recording
    def free(self, handle: MemoryHandle) -> None:
        """Free, then check that the handle is dead."""
        self._run(self.backend.deallocate(handle))
        type(self).history.freed(self.instance, bytes(self._model.pop(handle.handle_id)))
        try:
            self._run(self.backend.copy_from_device(handle, 0, 1))
        except InvalidHandleError:
            pass
        else:
            raise AssertionError("a freed handle was still accepted by copy_from_device")
        self._check_accounting(f"freeing a {handle.size_bytes}-byte allocation")

    @rule(handle=allocations, data=st.data())
    @recording
    def write(self, handle: MemoryHandle, data: st.DataObject) -> None:
        """copy_to_device of a random range."""
        offset, length = self._range(data, handle.size_bytes)
        payload = pattern(data.draw(st.integers(0, 1 << 16), label="seed"), length)
        self._written = True
        self._run(self.backend.copy_to_device(payload, handle, offset))
        self._model[handle.handle_id][offset : offset + length] = payload

    @rule(handle=allocations, data=st.data())
    @recording
    def read(self, handle: MemoryHandle, data: st.DataObject) -> None:
        """copy_from_device of a random range."""
        offset, length = self._range(data, handle.size_bytes)
        got = self._run(self.backend.copy_from_device(handle, offset, length))
        assert type(got) is bytes, f"copy_from_device returned {type(got).__name__}, not bytes"
        assert len(got) == length, f"copy_from_device returned {len(got)} bytes, not {length}"
        self._expect(got, handle, offset, f"copy_from_device(offset={offset}, size={length})")

    @rule(handle=allocations, data=st.data())
    @recording
    def read_into(self, handle: MemoryHandle, data: st.DataObject) -> None:
        """copy_from_device_into a slice of a larger buffer: the bytes around it stay untouched."""
        offset, length = self._range(data, handle.size_bytes)
        buffer = bytearray([_GUARD]) * (length + 16)
        count = self._run(
            self.backend.copy_from_device_into(handle, offset, memoryview(buffer)[8 : 8 + length])
        )
        assert count == length, f"copy_from_device_into returned {count}, not {length}"
        guard = bytes([_GUARD]) * 8
        assert buffer[:8] == guard and buffer[8 + length :] == guard, (
            "copy_from_device_into wrote outside the destination slice"
        )
        self._expect(
            bytes(buffer[8 : 8 + length]),
            handle,
            offset,
            f"copy_from_device_into(offset={offset}, {length} bytes)",
        )

    @rule(src=allocations, dst=allocations, data=st.data())
    @recording
    def copy(self, src: MemoryHandle, dst: MemoryHandle, data: st.DataObject) -> None:
        """copy_device_to_device between two allocations (sometimes the same one)."""
        size = data.draw(st.integers(0, min(src.size_bytes, dst.size_bytes)), label="size")
        src_offset = data.draw(st.integers(0, src.size_bytes - size), label="src_offset")
        dst_offset = data.draw(st.integers(0, dst.size_bytes - size), label="dst_offset")
        self._copy(src, dst, size, src_offset, dst_offset)

    @rule(handle=allocations, data=st.data())
    @recording
    def copy_within(self, handle: MemoryHandle, data: st.DataObject) -> None:
        """Overlapping copy inside one allocation: must behave like memmove."""
        size = data.draw(st.integers(1, handle.size_bytes), label="size")
        room = handle.size_bytes - size
        src_offset = data.draw(st.integers(0, room), label="src_offset")
        shift = data.draw(
            st.integers(-min(size, src_offset), min(size, room - src_offset)), label="shift"
        )
        self._copy(handle, handle, size, src_offset, src_offset + shift)

    def _copy(
        self, src: MemoryHandle, dst: MemoryHandle, size: int, src_offset: int, dst_offset: int
    ) -> None:
        self._run(self.backend.copy_device_to_device(src, dst, size, src_offset, dst_offset))
        chunk = bytes(self._model[src.handle_id][src_offset : src_offset + size])
        self._model[dst.handle_id][dst_offset : dst_offset + size] = chunk
        got = self._run(self.backend.copy_from_device(dst, dst_offset, size))
        self._expect(
            got,
            dst,
            dst_offset,
            f"copy_device_to_device(size={size}, src_offset={src_offset}, "
            f"dst_offset={dst_offset}{', same allocation' if src.handle_id == dst.handle_id else ''})",
        )

    @rule()
    @recording
    def synchronize(self) -> None:
        """Synchronize between other calls: it must neither fail nor change memory."""
        self._run(self.backend.synchronize(self.device))

    @rule(handle=allocations)
    @recording
    def check_all(self, handle: MemoryHandle) -> None:
        """Read a whole allocation: catches writes that landed outside their range."""
        got = self._run(self.backend.copy_from_device(handle, 0, handle.size_bytes))
        self._expect(got, handle, 0, "full read")

    @invariant()
    @recording
    def handle_table_matches(self) -> None:
        """The backend's live handles are exactly the model's allocations."""
        type(self).steps_checked += 1
        live = {handle.handle_id for handle in self.backend.live_handles()}
        assert live == set(self._model), (
            f"live_handles() lists {len(live)} allocations, the model has {len(self._model)}"
        )

    @recording
    def teardown(self) -> None:
        """Compare every allocation in full, free every other one and check that the memory
        figures came back, then shut the backend down (which frees the rest: both ways of freeing
        are exercised). After an error only the shutdown is left."""
        try:
            if not type(self).history.failed(self.instance):
                for number, handle in enumerate(self.backend.live_handles()):
                    if handle.handle_id not in self._model:
                        continue
                    got = self._run(self.backend.copy_from_device(handle, 0, handle.size_bytes))
                    self._expect(got, handle, 0, "final full read")
                    if number % 2 == 0:
                        self._run(self.backend.deallocate(handle))
                        content = self._model.pop(handle.handle_id)
                        type(self).history.freed(self.instance, bytes(content))
                self._check_accounting("the final frees")
        finally:
            for content in self._model.values():  # shutdown frees these
                type(self).history.freed(self.instance, bytes(content))
            try:
                self._run(self.backend.shutdown())
            finally:
                self._close_loop()


def run_state_machine(
    factory: BackendFactory,
    *,
    device_id: str | None = None,
    settings: HypothesisSettings | None = None,
) -> int:
    """Run the state machine against backends made by `factory`; raises on a divergence.
    Returns how many steps were checked against the model."""
    machine = BackendStateMachine.bind(factory, device_id=device_id)
    run_reporting_first_cause(machine, settings or kit_settings())
    return machine.steps_checked


def run_reporting_first_cause(
    machine: type[BackendStateMachine], settings: HypothesisSettings | None
) -> None:
    """`run_state_machine_as_test`, but a flakiness report becomes the first error it hides."""
    try:
        run_state_machine_as_test(machine, settings=settings)
    except Flaky as exc:
        message = flaky_report(machine.history, exc)
        if message is None:
            raise
        raise AssertionError(message) from exc


def make_state_machine(
    factory: BackendFactory,
    *,
    device_id: str | None = None,
    settings: HypothesisSettings | None = None,
) -> type[unittest.TestCase]:
    """A `unittest.TestCase` class running the state machine (pytest collects it as it is)."""
    machine = BackendStateMachine.bind(factory, device_id=device_id)
    base = machine.TestCase

    def runTest(self: unittest.TestCase) -> None:
        run_reporting_first_cause(machine, getattr(self, "settings", None))

    runTest.is_hypothesis_test = True  # type: ignore[attr-defined]
    runTest._hypothesis_state_machine_class = machine  # type: ignore[attr-defined]
    case = type(base.__name__, (base,), {"runTest": runTest, "__qualname__": base.__qualname__})
    case.settings = settings or kit_settings()  # type: ignore[attr-defined]
    return case
