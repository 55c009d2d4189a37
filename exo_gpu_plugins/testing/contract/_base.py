"""What every clause shares: the clause tags, KitBase (fixtures, backends, memory helpers) and
byte-exact assertions."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from pydantic import ValidationError

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.models import Capabilities, MemoryHandle, MemoryReport
from exo_gpu_plugins.testing import expected_failures
from exo_gpu_plugins.testing.contract._helpers import SIZE, BackendFactory, KiB, MiB
from exo_gpu_plugins.testing.first_cause import invalid_model
from exo_gpu_plugins.testing.pytest_plugin import DEVICE_KEY, xfail_applied_at_collection
from exo_gpu_plugins.testing.support import (
    WRONG_READ,
    check_reads,
    check_report,
    close_loop,
    pattern,
)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

CLAUSES: tuple[str, ...] = (
    "lifecycle",
    "closed backend",
    "devices",
    "properties",
    "capabilities",
    "telemetry",
    "allocation",
    "allocation zero-fill",
    "allocation arguments",
    "out of memory",
    "copy to device",
    "copy from device",
    "copy from device into",
    "copy bounds",
    "copy arguments",
    "synchronize",
    "host buffers",
    "host buffer release",
    "file copy",
    "file copy errors",
    "device-to-device",
    "device-to-device overlap",
    "cross-device copy",
    "handles: use after free",
    "handles: double free",
    "handles: forged",
    "handles: foreign",
    "shutdown frees memory",
    "memory report",
    "memory accounting",
    "live free memory",
    "exports",
    "export lifetime",
    "shared memory",
    "concurrency",
    "state machine",
)

_CLAUSE_ATTR = "__exo_gpu_clause__"


def clause(name: str) -> Callable[[F], F]:
    """Tag a test with the contract clause it checks (the `exo-gpu check` table groups by it).

    The tagged test reports first causes wherever it fails: a model the backend built and pydantic
    refused (a `MemoryReport` that does not add up) by the validator's message, not pydantic's
    wrapper; and a failed assertion, after the backend's reads are checked on their own on a new
    instance (`KitBase.wrong_read`), as the wrong read when they are wrong, since every comparison
    of the kit reads through them."""
    if name not in CLAUSES:
        raise ValueError(f"unknown clause {name!r}")

    def tag(function: F) -> F:
        @functools.wraps(function)
        def test(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except ValidationError as exc:
                raise AssertionError(invalid_model(exc)) from exc
            except AssertionError as exc:
                kit = args[0] if args else None
                if not isinstance(kit, KitBase) or str(exc).startswith(WRONG_READ):
                    raise
                wrong = kit.wrong_read()
                if wrong is None:
                    raise
                raise AssertionError(f"{wrong}\n(found when this test failed with: {exc})") from exc

        setattr(test, _CLAUSE_ATTR, name)
        return test  # type: ignore[return-value]

    return tag


def clause_of(item: pytest.Item) -> str:
    """The clause of a collected kit test ("other" for tests an author added to a subclass)."""
    function = getattr(item, "function", None)
    return str(getattr(function, _CLAUSE_ATTR, "other"))


def is_kit_item(item: pytest.Item) -> bool:
    """True for tests collected from a subclass of the kit's classes."""
    cls = getattr(item, "cls", None)
    return isinstance(cls, type) and issubclass(cls, KitBase)


def assert_bytes_equal(actual: bytes, expected: bytes, what: str) -> None:
    """Assert equality; the message names the first differing byte, not a 64 KiB repr."""
    if actual == expected:
        return
    if len(actual) != len(expected):
        raise AssertionError(f"{what}: got {len(actual)} bytes, expected {len(expected)}")
    step = 4096
    chunks = range(0, len(actual), step)
    start = next(i for i in chunks if actual[i : i + step] != expected[i : i + step])
    first = next(i for i in range(start, len(actual)) if actual[i] != expected[i])
    zeros = " (reads as zeros)" if not any(actual[first : first + 64]) else ""
    raise AssertionError(
        f"{what}: first difference at byte {first} of {len(actual)}: got {actual[first]:#04x}, "
        f"expected {expected[first]:#04x}{zeros}"
    )


def assert_zero_filled(data: bytes, what: str) -> None:
    """New memory reads as zeros. Checked before a test relies on it, so that a later comparison
    does not blame a copy or a neighbouring range for what the allocator left behind."""
    if not any(data):
        return
    first = next(i for i, byte in enumerate(data) if byte)
    raise AssertionError(
        f"{what}: fresh memory is not zero-filled: byte {first} of the {len(data)}-byte allocation "
        f"reads {data[first]:#04x} (new allocations must read as zeros, reused memory too; the "
        "'allocation zero-fill' clause checks this alone)"
    )


class KitBase:
    """Fixtures and helpers shared by every group of contract tests.

    Provide the backend with ONE of: `backend_class = MyBackend`, an override of `make_backend()`,
    or a `backend_factory` fixture returning a zero-argument callable. Optional class attributes:
    `device_id` (default: the first listed device), `expected_failures_file`, `memory_probe_bytes`,
    `operation_timeout_s`.
    """

    backend_class: ClassVar[type[GPUBackend[Any]] | None] = None
    device_id: ClassVar[str | None] = None
    expected_failures_file: ClassVar[str | Path | None] = None
    memory_probe_bytes: ClassVar[int] = 64 * MiB
    operation_timeout_s: ClassVar[float] = 120.0

    _loop: asyncio.AbstractEventLoop
    _factory: BackendFactory
    _request: pytest.FixtureRequest
    _made: list[GPUBackend[Any]]
    _main: GPUBackend[Any] | None

    def make_backend(self) -> GPUBackend[Any]:
        """A new, uninitialized backend; the default instantiates `backend_class`."""
        if self.backend_class is None:
            raise TypeError(
                f"{type(self).__name__} does not say which backend to test: set backend_class, "
                "override make_backend(), or provide a backend_factory fixture"
            )
        return self.backend_class()

    @pytest.fixture
    def backend_factory(self) -> BackendFactory:
        """The one way the kit makes backends; override it as a fixture if that suits you better."""
        return self.make_backend

    @pytest.fixture(autouse=True)
    def _exo_gpu_kit(
        self, request: pytest.FixtureRequest, backend_factory: BackendFactory
    ) -> Iterator[None]:
        """A private event loop per test, and every backend the test made shut down after it.

        A loop of its own keeps tests independent and the kit free of pytest-asyncio; shutting
        every backend down (even after a failure) keeps one test's allocations out of the next
        test's memory figures. A failing shutdown fails the test, after the others were closed.
        """
        self._apply_expected_failure(request)
        self._loop = asyncio.new_event_loop()
        self._factory = backend_factory
        self._request = request
        self._made = []
        self._main = None
        try:
            yield
        finally:
            errors: list[BaseException] = []
            for backend in reversed(self._made):
                try:
                    self.run(backend.shutdown())
                except Exception as exc:
                    errors.append(exc)
            self._made.clear()
            self._main = None
            close_loop(self._loop)
            if errors:
                raise AssertionError(
                    f"shutdown() failed: {type(errors[0]).__name__}: {errors[0]}"
                ) from errors[0]

    def _apply_expected_failure(self, request: pytest.FixtureRequest) -> None:
        """Without the plugin's collection hook (autoload off, no -p), mark xfail here instead."""
        path = type(self).expected_failures_file
        if not path or xfail_applied_at_collection(request.config):
            return
        node = request.node
        ids = expected_failures.candidate_ids(
            node.nodeid, node.name, getattr(node, "originalname", node.name)
        )
        for entry in expected_failures.load_expected_failures(path):
            if entry.matches(ids):
                node.add_marker(pytest.mark.xfail(strict=True, reason=entry.reason))
                return

    # ----------------------------------------------------------------------------------------------
    # Running coroutines and making backends

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run a coroutine on this test's event loop; a hang becomes a failure, not a stuck CI."""
        return self._loop.run_until_complete(asyncio.wait_for(awaitable, self.operation_timeout_s))

    def new_backend(self) -> GPUBackend[Any]:
        """A backend from the factory, not yet initialized; shut down after the test."""
        backend = self._factory()
        if not isinstance(backend, GPUBackend):
            raise AssertionError(
                f"the backend factory returned {type(backend).__name__}, not a GPUBackend"
            )
        if backend.is_open:
            raise AssertionError(
                "the backend factory must return a NEW, uninitialized backend; this one is open"
            )
        self._made.append(backend)
        return backend

    def open_backend(self) -> GPUBackend[Any]:
        """A new backend, initialized."""
        backend = self.new_backend()
        self.run(backend.initialize())
        return backend

    @property
    def backend(self) -> GPUBackend[Any]:
        """The test's main backend, opened on first use."""
        if self._main is None:
            self._main = self.open_backend()
        return self._main

    def chosen_device_id(self) -> str | None:
        """The device asked for by `device_id` or `--exo-gpu-device`; `None` means the first."""
        return type(self).device_id or self._request.config.stash.get(DEVICE_KEY, None)

    def wrong_read(self) -> str | None:
        """After a test failed: the message of `check_reads` on a new instance when it finds a
        wrong read, else None (the reads are right, or the check could not run)."""
        try:
            backend = self.open_backend()
            self.run(check_reads(backend, self.device_of(backend)))
        except AssertionError as exc:
            return str(exc) if str(exc).startswith(WRONG_READ) else None
        except Exception:
            return None
        return None

    def device_of(self, backend: GPUBackend[Any]) -> str:
        """The id of the device the kit tests on this backend."""
        chosen = self.chosen_device_id()
        if chosen is not None:
            return chosen
        devices = backend.list_devices()
        if not devices:
            pytest.fail("the backend lists no device; it should raise BackendUnavailableError")
        return devices[0].device_id

    @property
    def device(self) -> str:
        """The device id the tests use on the main backend."""
        return self.device_of(self.backend)

    @property
    def caps(self) -> Capabilities:
        """The capabilities of the tested device."""
        return self.backend.capabilities(self.device)

    # ----------------------------------------------------------------------------------------------
    # Memory helpers

    def alloc(
        self,
        size: int,
        data: bytes | None = None,
        *,
        backend: GPUBackend[Any] | None = None,
        device: str | None = None,
    ) -> MemoryHandle:
        """Allocate and, with `data`, fill from offset 0."""
        backend = backend or self.backend
        handle = self.run(backend.allocate(device or self.device_of(backend), size))
        if data is not None:
            self.run(backend.copy_to_device(data, handle, 0))
        return handle

    def read_all(self, handle: MemoryHandle, backend: GPUBackend[Any] | None = None) -> bytes:
        """The whole allocation."""
        return self.run((backend or self.backend).copy_from_device(handle, 0, handle.size_bytes))

    def filled(self, size: int = SIZE, seed: int = 1) -> tuple[MemoryHandle, bytearray]:
        """An allocation holding a pattern, and its model."""
        data = pattern(seed, size)
        return self.alloc(size, data), bytearray(data)

    def assert_content(
        self,
        handle: MemoryHandle,
        expected: bytes | bytearray,
        what: str,
        backend: GPUBackend[Any] | None = None,
    ) -> None:
        """The whole allocation equals `expected`."""
        assert_bytes_equal(self.read_all(handle, backend), bytes(expected), what)

    def expect_error(
        self,
        expected: type[BaseException] | tuple[type[BaseException], ...],
        call: Callable[[], object],
        what: str,
    ) -> BaseException:
        """Call (and await, for coroutines) `call`; it must raise `expected`."""
        names = (
            expected.__name__
            if isinstance(expected, type)
            else " or ".join(e.__name__ for e in expected)
        )
        try:
            result = call()
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                result = self.run(result)
        except expected as exc:
            return exc
        except Exception as exc:
            raise AssertionError(f"{what}: expected {names}, got {type(exc).__name__}: {exc}") from exc
        raise AssertionError(f"{what}: expected {names}, but the call succeeded ({result!r:.60})")

    def expect_errors(
        self,
        expected: type[BaseException] | tuple[type[BaseException], ...],
        cases: Sequence[tuple[str, Callable[[], object]]],
    ) -> None:
        """`expect_error` for each case; one failure lists every case that went wrong."""
        problems: list[str] = []
        for what, call in cases:
            try:
                self.expect_error(expected, call, what)
            except AssertionError as exc:
                problems.append(str(exc))
        if problems:
            raise AssertionError(f"{len(problems)} of {len(cases)} calls wrong: " + "; ".join(problems))

    @contextmanager
    def canary_kept(self, what: str) -> Iterator[None]:
        """A bystander allocation whose bytes must survive whatever the block does."""
        data = pattern(0xCA, 4 * KiB)
        handle = self.alloc(len(data), data)
        yield
        assert_bytes_equal(self.read_all(handle), data, f"canary allocation after {what}")
        self.run(self.backend.deallocate(handle))

    def handle_calls(
        self, handle: MemoryHandle, good: MemoryHandle, backend: GPUBackend[Any] | None = None
    ) -> list[tuple[str, Callable[[], object]]]:
        """Every call that takes a handle, with `handle` in each handle position (`good` in the other
        position of device-to-device copies)."""
        b = backend or self.backend
        return [
            ("copy_to_device", lambda: b.copy_to_device(b"\x01\x02", handle, 0)),
            ("copy_from_device", lambda: b.copy_from_device(handle, 0, 1)),
            ("copy_from_device_into", lambda: b.copy_from_device_into(handle, 0, bytearray(2))),
            ("copy_file_to_device", lambda: b.copy_file_to_device(__file__, handle, 0, size_bytes=1)),
            ("copy_device_to_device src", lambda: b.copy_device_to_device(handle, good, 1)),
            ("copy_device_to_device dst", lambda: b.copy_device_to_device(good, handle, 1)),
            ("copy_device_to_device src=dst", lambda: b.copy_device_to_device(handle, handle, 1)),
            ("deallocate", lambda: b.deallocate(handle)),
        ]

    def checked_report(
        self, backend: GPUBackend[Any] | None = None, device: str | None = None
    ) -> MemoryReport:
        """The memory report, checked field by field (a backend can bypass pydantic's validators)."""
        backend = backend or self.backend
        device = device or self.device_of(backend)
        report = self.run(backend.get_device_memory_info(device))
        assert isinstance(report, MemoryReport), (
            f"get_device_memory_info returned {type(report).__name__}, not MemoryReport"
        )
        assert report.device_id == device, f"report.device_id {report.device_id!r} != {device!r}"
        check_report(report, f"memory report of {device}")
        assert isinstance(report.source, str) and report.source, "report.source must be non-empty"
        return report
