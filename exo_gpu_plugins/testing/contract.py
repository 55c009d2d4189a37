"""The conformance kit: pytest test classes that check a backend against the contract.

A plugin author subclasses `BackendContract` in a test module and says how to make the backend:

    from exo_gpu_plugins.testing import BackendContract

    class TestMyBackend(BackendContract):
        backend_class = MyBackend          # or override make_backend(), or a backend_factory fixture

Every test makes its backends through that one factory (each call must return a NEW, uninitialized
instance), runs them on an event loop of its own, and shuts them down afterwards, so the kit needs no
pytest-asyncio and no test depends on another. Tests are grouped into the contract's clauses
(`CLAUSES`); the smaller mixins (`AllocationContract`, ...) can be used alone. Tests skip only by
what the backend declares (`Capabilities`, the number of devices), never by its name.

Sizes are small (kilobytes, one 64 MiB probe of the memory figures) so that the kit runs in seconds
on a software Vulkan driver.
"""

from __future__ import annotations

import array
import asyncio
import os
import pickle
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import (
    BackendClosedError,
    DeviceNotFoundError,
    InvalidHandleError,
    OutOfBoundsError,
    OutOfMemoryError,
)
from exo_gpu_plugins.models import Capabilities, GPUDevice, MemoryHandle, MemoryReport
from exo_gpu_plugins.testing import expected_failures
from exo_gpu_plugins.testing.pytest_plugin import (
    DEVICE_KEY,
    NO_DATABASE_KEY,
    xfail_applied_at_collection,
)
from exo_gpu_plugins.testing.state_machine import (
    close_loop,
    kit_settings,
    pattern,
    run_state_machine,
)

__all__ = [
    "CLAUSES",
    "AllocationContract",
    "BackendContract",
    "ConcurrencyContract",
    "CopyContract",
    "DeviceContract",
    "DeviceToDeviceContract",
    "HandleContract",
    "KitBase",
    "LifecycleContract",
    "MemoryReportContract",
    "StateMachineContract",
    "assert_bytes_equal",
    "clause",
    "clause_of",
    "is_kit_item",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
BackendFactory = Callable[[], GPUBackend[Any]]

KiB = 1024
MiB = 1024 * KiB
SIZE = 8 * KiB + 3  # odd on purpose: no backend may assume sizes are multiples of anything

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
    "concurrency",
    "state machine",
)

_CLAUSE_ATTR = "__exo_gpu_clause__"


def clause(name: str) -> Callable[[F], F]:
    """Tag a test with the contract clause it checks (the `exo-gpu check` table groups by it)."""
    if name not in CLAUSES:
        raise ValueError(f"unknown clause {name!r}")

    def tag(function: F) -> F:
        setattr(function, _CLAUSE_ATTR, name)
        return function

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


def _call(function: Callable[..., object], *args: object) -> Callable[[], object]:
    """A deferred call. Lambdas built in a loop would all see the loop variable's last value."""
    return lambda: function(*args)


def _plain_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
        _check_figures(
            f"memory report of {device}",
            report.total_bytes,
            report.used_bytes,
            report.available_bytes,
            report.reserved_bytes,
        )
        assert isinstance(report.source, str) and report.source, "report.source must be non-empty"
        for heap in report.heaps:
            _check_figures(
                f"heap {heap.index} of {device}",
                heap.total_bytes,
                heap.used_bytes,
                heap.available_bytes,
                heap.reserved_bytes,
            )
        return report


def _check_figures(what: str, total: object, used: object, available: object, reserved: object) -> None:
    figures = {"total": total, "used": used, "available": available, "reserved": reserved}
    for name, value in figures.items():
        assert _plain_int(value), f"{what}: {name}_bytes is {value!r}, not an int"
        assert value >= 0, f"{what}: {name}_bytes is negative ({value})"  # type: ignore[operator]
    t, u, a, r = (int(v) for v in figures.values())  # type: ignore[call-overload]
    assert u <= t, f"{what}: used_bytes {u} > total_bytes {t}"
    assert a <= t, f"{what}: available_bytes {a} > total_bytes {t}"
    assert u + a + r == t, f"{what}: used {u} + available {a} + reserved {r} != total {t}"


# ==================================================================================================
# Lifecycle


class LifecycleContract(KitBase):
    """initialize/shutdown are idempotent; a closed backend refuses every call."""

    @clause("lifecycle")
    def test_initialize_twice(self) -> None:
        backend = self.new_backend()
        self.run(backend.initialize())
        assert backend.is_open, "is_open is False after initialize()"
        devices = backend.list_devices()
        self.run(backend.initialize())
        assert backend.is_open, "is_open is False after a second initialize()"
        assert backend.list_devices() == devices, "a second initialize() changed the devices"

    @clause("lifecycle")
    def test_shutdown_twice(self) -> None:
        backend = self.open_backend()
        self.alloc(4 * KiB, backend=backend)
        self.run(backend.shutdown())
        assert not backend.is_open, "is_open is True after shutdown()"
        self.run(backend.shutdown())
        assert not backend.is_open, "is_open is True after a second shutdown()"

    @clause("lifecycle")
    def test_shutdown_without_initialize(self) -> None:
        backend = self.new_backend()
        self.run(backend.shutdown())
        assert not backend.is_open, "is_open is True after shutdown() of a never-opened backend"

    @clause("lifecycle")
    def test_async_context_manager(self) -> None:
        backend = self.new_backend()

        async def use() -> bytes:
            async with backend as opened:
                assert opened is backend and backend.is_open, (
                    "`async with` must open and return the backend"
                )
                handle = await backend.allocate(self.device_of(backend), 16)
                await backend.copy_to_device(b"x" * 16, handle)
                return await backend.copy_from_device(handle, 0, 16)

        assert self.run(use()) == b"x" * 16, "round trip inside `async with` failed"
        assert not backend.is_open, "leaving `async with` did not shut the backend down"

    @clause("closed backend")
    def test_calls_before_initialize_are_refused(self) -> None:
        backend = self.new_backend()
        fake = MemoryHandle(
            handle_id=os.urandom(16).hex(),
            device_id=self.device,
            size_bytes=16,
            allocated_at=datetime.now(timezone.utc),
        )
        self.expect_errors(BackendClosedError, _every_call(backend, self.device, fake))

    @clause("closed backend")
    def test_calls_after_shutdown_are_refused(self) -> None:
        backend = self.open_backend()
        device = self.device_of(backend)
        handle = self.alloc(64, b"\x07" * 64, backend=backend)
        self.run(backend.shutdown())
        cases = _every_call(backend, device, handle)
        cases.append(("initialize() after shutdown", backend.initialize))
        self.expect_errors(BackendClosedError, cases)
        assert backend.live_handles() == [], "live_handles() not empty after shutdown"


def _every_call(
    b: GPUBackend[Any], device: str, handle: MemoryHandle
) -> list[tuple[str, Callable[[], object]]]:
    return [
        ("list_devices()", b.list_devices),
        ("get_device()", lambda: b.get_device(device)),
        ("capabilities()", lambda: b.capabilities(device)),
        ("get_device_properties()", lambda: b.get_device_properties(device)),
        ("get_device_memory_info()", lambda: b.get_device_memory_info(device)),
        ("get_device_temperature()", lambda: b.get_device_temperature(device)),
        ("get_device_power_usage()", lambda: b.get_device_power_usage(device)),
        ("get_device_clock_rate()", lambda: b.get_device_clock_rate(device)),
        ("allocate()", lambda: b.allocate(device, 16)),
        ("deallocate()", lambda: b.deallocate(handle)),
        ("copy_to_device()", lambda: b.copy_to_device(b"x", handle, 0)),
        ("copy_from_device()", lambda: b.copy_from_device(handle, 0, 1)),
        ("copy_from_device_into()", lambda: b.copy_from_device_into(handle, 0, bytearray(1))),
        ("copy_device_to_device()", lambda: b.copy_device_to_device(handle, handle, 1)),
        ("synchronize()", lambda: b.synchronize(device)),
    ]


# ==================================================================================================
# Devices, properties, capabilities, telemetry


def _unknown_device_ids(backend: GPUBackend[Any]) -> list[str]:
    listed = {device.device_id for device in backend.list_devices()}
    name = backend.name
    candidates = [
        f"{name}:{len(listed) + 7}",
        f"{name}:-1",
        f"{name}:",
        name,
        "",
        f"{name}:00",
        f" {name}:0",
        f"{name}:0 ",
        f"{name.upper()}:0",
        f"{name}:0:0",
        "no-such-backend:0",
    ]
    return [candidate for candidate in candidates if candidate not in listed]


_TELEMETRY = {
    # capability: (method, plausible range, unit)
    "temperature": ("get_device_temperature", (0.0, 150.0), "degrees C"),
    "power": ("get_device_power_usage", (0.0, 2000.0), "W"),
    "clock_rate": ("get_device_clock_rate", (1.0, 10000.0), "MHz"),
}


class DeviceContract(KitBase):
    """Device listing, ids, properties, capabilities and telemetry."""

    @clause("devices")
    def test_devices_listed_with_unique_ids(self) -> None:
        devices = self.backend.list_devices()
        assert devices, "list_devices() is empty; an unusable backend must fail initialize()"
        ids = [device.device_id for device in devices]
        assert len(set(ids)) == len(ids), f"duplicate device ids: {ids}"
        for device in devices:
            assert isinstance(device, GPUDevice), f"{device!r} is not a GPUDevice"
            prefix, _, index = device.device_id.partition(":")
            assert prefix == self.backend.name and index.isdigit() and str(int(index)) == index, (
                f"device id {device.device_id!r} is not '{self.backend.name}:<index>'"
            )
            assert device.backend == self.backend.name, (
                f"{device.device_id}: backend field {device.backend!r} != {self.backend.name!r}"
            )

    @clause("devices")
    def test_get_device_finds_listed_devices(self) -> None:
        for device in self.backend.list_devices():
            assert self.backend.get_device(device.device_id) == device, (
                f"get_device({device.device_id!r}) differs from list_devices()"
            )

    @clause("devices")
    def test_get_device_unknown_is_none(self) -> None:
        for unknown in _unknown_device_ids(self.backend):
            found = self.backend.get_device(unknown)
            assert found is None, f"get_device({unknown!r}) returned {found!r}, expected None"

    @clause("devices")
    def test_get_device_wrong_type(self) -> None:
        self.expect_errors(
            TypeError,
            [
                (f"get_device({bad!r})", _call(self.backend.get_device, bad))
                for bad in (0, None, b"x:0", 1.5)
            ],
        )

    @clause("properties")
    def test_memory_bytes_matches_report(self) -> None:
        for device in self.backend.list_devices():
            assert _plain_int(device.memory_bytes) and device.memory_bytes > 0, (
                f"{device.device_id}: memory_bytes is {device.memory_bytes!r}"
            )
            report = self.checked_report(device=device.device_id)
            assert device.memory_bytes == report.total_bytes, (
                f"{device.device_id}: memory_bytes {device.memory_bytes} != report total "
                f"{report.total_bytes}"
            )

    @clause("properties")
    def test_get_device_properties(self) -> None:
        for listed in self.backend.list_devices():
            fresh = self.run(self.backend.get_device_properties(listed.device_id))
            assert isinstance(fresh, GPUDevice), f"got {type(fresh).__name__}, not GPUDevice"
            assert fresh.device_id == listed.device_id, (
                f"get_device_properties({listed.device_id!r}) describes {fresh.device_id!r}"
            )
            assert fresh.memory_bytes == listed.memory_bytes, "memory_bytes changed"
            assert fresh.name, "device name is empty"

    @clause("properties")
    def test_device_calls_refuse_unknown_devices(self) -> None:
        b = self.backend
        cases: list[tuple[str, Callable[[], object]]] = []
        for unknown in _unknown_device_ids(b)[:4]:
            cases += [
                (f"get_device_properties({unknown!r})", _call(b.get_device_properties, unknown)),
                (f"get_device_memory_info({unknown!r})", _call(b.get_device_memory_info, unknown)),
                (f"capabilities({unknown!r})", _call(b.capabilities, unknown)),
                (f"get_device_temperature({unknown!r})", _call(b.get_device_temperature, unknown)),
                (f"get_device_power_usage({unknown!r})", _call(b.get_device_power_usage, unknown)),
                (f"get_device_clock_rate({unknown!r})", _call(b.get_device_clock_rate, unknown)),
            ]
        self.expect_errors(DeviceNotFoundError, cases)
        self.expect_errors(
            TypeError,
            [
                ("get_device_properties(0)", lambda: b.get_device_properties(0)),  # type: ignore[arg-type]
                ("get_device_memory_info(None)", lambda: b.get_device_memory_info(None)),  # type: ignore[arg-type]
                ("capabilities(1.0)", lambda: b.capabilities(1.0)),  # type: ignore[arg-type]
            ],
        )

    @clause("capabilities")
    def test_capabilities(self) -> None:
        for device in self.backend.list_devices():
            caps = self.backend.capabilities(device.device_id)
            assert isinstance(caps, Capabilities), f"got {type(caps).__name__}, not Capabilities"
            assert caps.device_id == device.device_id, (
                f"capabilities({device.device_id!r}).device_id is {caps.device_id!r}"
            )
            assert _plain_int(caps.allocation_granularity_bytes), (
                "allocation_granularity_bytes must be an int"
            )
            assert caps.allocation_granularity_bytes > 0, "allocation_granularity_bytes must be > 0"

    @clause("telemetry")
    @pytest.mark.parametrize("capability", sorted(_TELEMETRY))
    def test_telemetry(self, capability: str) -> None:
        method, (low, high), unit = _TELEMETRY[capability]
        for device in self.backend.list_devices():
            supported = bool(getattr(self.backend.capabilities(device.device_id), capability))
            value = self.run(getattr(self.backend, method)(device.device_id))
            call = f"{method}({device.device_id!r})"
            if not supported:
                assert value is None, (
                    f"{call} returned {value!r} but capabilities().{capability} is False: "
                    "return None, never an invented number"
                )
                continue
            assert value is not None, f"{call} returned None but capabilities().{capability} is True"
            assert isinstance(value, int | float) and not isinstance(value, bool), (
                f"{call} returned {type(value).__name__}"
            )
            if capability == "clock_rate":
                assert isinstance(value, int), f"{call} returned {value!r}, not an int"
            assert low <= value <= high, f"{call} = {value} {unit}, outside [{low}, {high}]"


# ==================================================================================================
# Allocation


class AllocationContract(KitBase):
    """allocate/deallocate: handles, zero-filled memory, argument checks, out-of-memory."""

    @clause("allocation")
    def test_allocate_returns_handle(self) -> None:
        handles = [self.alloc(size) for size in (1, 3, 4096, SIZE)]
        for handle, size in zip(handles, (1, 3, 4096, SIZE), strict=True):
            assert isinstance(handle, MemoryHandle), f"got {type(handle).__name__}"
            assert handle.size_bytes == size, f"size_bytes {handle.size_bytes} != {size}"
            assert handle.device_id == self.device, (
                f"handle.device_id {handle.device_id!r} != {self.device!r}"
            )
        ids = {handle.handle_id for handle in handles}
        assert len(ids) == len(handles), "two live allocations share a handle id"
        live = {handle.handle_id for handle in self.backend.live_handles()}
        assert ids <= live, "live_handles() misses allocations"

    @clause("allocation")
    @pytest.mark.parametrize("size", [1, 3, 4096, SIZE, 256 * KiB + 1])
    def test_whole_allocation_is_usable(self, size: int) -> None:
        data = pattern(size, size)
        handle = self.alloc(size, data)
        self.assert_content(handle, data, f"{size}-byte allocation written in full")
        self.run(self.backend.deallocate(handle))

    @clause("allocation")
    def test_deallocate_forgets_handle(self) -> None:
        keep, drop = self.alloc(64, b"k" * 64), self.alloc(64, b"d" * 64)
        self.run(self.backend.deallocate(drop))
        live = {handle.handle_id for handle in self.backend.live_handles()}
        assert drop.handle_id not in live and keep.handle_id in live, "live_handles() wrong after a free"
        self.assert_content(keep, b"k" * 64, "the other allocation after a free")

    @clause("allocation")
    def test_equal_copy_of_handle_is_accepted(self) -> None:
        handle = self.alloc(64, b"h" * 64)
        copy = pickle.loads(pickle.dumps(handle))
        assert copy == handle and copy is not handle, "a pickled handle must compare equal"
        assert self.run(self.backend.copy_from_device(copy, 0, 64)) == b"h" * 64
        self.run(self.backend.deallocate(copy))

    @clause("allocation")
    def test_keyword_arguments(self) -> None:
        b = self.backend
        src = self.run(b.allocate(device_id=self.device, size_bytes=32))
        dst = self.run(b.allocate(device_id=self.device, size_bytes=32))
        self.run(b.copy_to_device(src=b"a" * 8, dst_handle=src, offset_bytes=4))
        self.run(
            b.copy_device_to_device(
                src_handle=src, dst_handle=dst, size_bytes=8, src_offset_bytes=4, dst_offset_bytes=20
            )
        )
        assert self.run(b.copy_from_device(src_handle=dst, offset_bytes=20, size_bytes=8)) == b"a" * 8
        out = bytearray(8)
        assert self.run(b.copy_from_device_into(src_handle=src, offset_bytes=4, dst=out)) == 8
        assert out == b"a" * 8, "copy_from_device_into with keyword arguments read wrong bytes"
        self.run(b.synchronize(device_id=self.device))
        self.run(b.deallocate(handle=src))

    @clause("allocation zero-fill")
    @pytest.mark.parametrize("size", [1, 255, 4096, SIZE, 1 * MiB])
    def test_fresh_allocation_reads_zeros(self, size: int) -> None:
        handle = self.alloc(size)
        assert_bytes_equal(self.read_all(handle), bytes(size), f"fresh {size}-byte allocation")
        out = bytearray(b"\xff") * size
        self.run(self.backend.copy_from_device_into(handle, 0, out))
        assert_bytes_equal(bytes(out), bytes(size), f"fresh {size}-byte allocation (read into)")

    @clause("allocation zero-fill")
    @pytest.mark.parametrize("size", [256, 4096, 1 * MiB])
    def test_reused_memory_reads_zeros(self, size: int) -> None:
        """Memory freed by an earlier owner must not leak its bytes into a new allocation."""
        for round_ in range(3):
            dirty = [self.alloc(size, pattern(round_ * 8 + i, size)) for i in range(4)]
            for handle in dirty:
                self.run(self.backend.deallocate(handle))
            fresh = [self.alloc(size) for _ in range(4)]
            for handle in fresh:
                assert_bytes_equal(
                    self.read_all(handle),
                    bytes(size),
                    f"{size}-byte allocation after freeing written ones (round {round_ + 1})",
                )
                self.run(self.backend.deallocate(handle))

    @clause("allocation arguments")
    def test_allocate_wrong_types(self) -> None:
        b, device = self.backend, self.device
        with self.canary_kept("allocate() calls with wrong types"):
            self.expect_errors(
                TypeError,
                [
                    (f"allocate(device, {bad!r})", _call(b.allocate, device, bad))
                    for bad in (True, False, 16.0, None, "16", b"16", [16])
                ]
                + [
                    (f"allocate({bad!r}, 16)", _call(b.allocate, bad, 16))
                    for bad in (0, None, b"x:0", 1.5)
                ],
            )

    @clause("allocation arguments")
    def test_allocate_non_positive_sizes(self) -> None:
        b, device = self.backend, self.device
        with self.canary_kept("allocate() calls with sizes <= 0"):
            self.expect_errors(
                ValueError,
                [
                    (f"allocate(device, {bad})", _call(b.allocate, device, bad))
                    for bad in (0, -1, -(1 << 40))
                ],
            )

    @clause("allocation arguments")
    def test_allocate_unknown_devices(self) -> None:
        b = self.backend
        with self.canary_kept("allocate() calls on unknown devices"):
            self.expect_errors(
                DeviceNotFoundError,
                [
                    (f"allocate({bad!r}, 16)", _call(b.allocate, bad, 16))
                    for bad in _unknown_device_ids(b)
                ],
            )

    @clause("out of memory")
    def test_allocation_larger_than_device(self) -> None:
        total = self.checked_report().total_bytes
        with self.canary_kept("refused huge allocations"):
            live = len(self.backend.live_handles())
            self.expect_errors(
                OutOfMemoryError,
                [
                    (
                        f"allocate(device, {size})",
                        _call(self.backend.allocate, self.device, size),
                    )
                    for size in (total + 1, 4 * total + 4096, 1 << 62)
                    if size > total
                ],
            )
            assert len(self.backend.live_handles()) == live, "a refused allocation left a handle"
            data = pattern(7, 64 * KiB)
            handle = self.alloc(len(data), data)
            self.assert_content(handle, data, "allocation made after an out-of-memory error")
            self.run(self.backend.deallocate(handle))


# ==================================================================================================
# Copies between host and device


def _sources(data: bytes) -> dict[str, Callable[[], object]]:
    """Ways to hand the same bytes to copy_to_device."""

    def numpy_float32() -> object:
        numpy = pytest.importorskip("numpy")
        return numpy.frombuffer(data, dtype=numpy.float32).copy()

    def two_dimensional() -> object:
        return memoryview(data).cast("B", (16, len(data) // 16))

    def array_of_ints() -> object:
        return array.array("I", data)

    def memoryview_slice() -> object:
        padded = bytearray(b"\xee" * 5) + data + bytearray(b"\xee" * 5)
        return memoryview(padded)[5 : 5 + len(data)]

    return {
        "bytes": lambda: data,
        "bytearray": lambda: bytearray(data),
        "memoryview-slice": memoryview_slice,
        "array.array": array_of_ints,
        "2-d-memoryview": two_dimensional,
        "numpy-float32": numpy_float32,
    }


_WRITE_RANGES = [
    (0, 1),
    (1, 7),
    (7, SIZE - 7),
    (4095, 8),
    (SIZE - 1, 1),
    (SIZE - 16, 16),
    (0, SIZE),
    (2048, 0),
]


class CopyContract(KitBase):
    """copy_to_device / copy_from_device / copy_from_device_into, their bounds and arguments."""

    def filled(self, size: int = SIZE, seed: int = 1) -> tuple[MemoryHandle, bytearray]:
        """An allocation holding a pattern, and its model."""
        data = pattern(seed, size)
        return self.alloc(size, data), bytearray(data)

    @clause("copy to device")
    @pytest.mark.parametrize(("offset", "length"), _WRITE_RANGES)
    def test_write_at_offset(self, offset: int, length: int) -> None:
        handle, model = self.filled()
        data = pattern(offset * 31 + length, length)
        self.run(self.backend.copy_to_device(data, handle, offset))
        model[offset : offset + length] = data
        self.assert_content(handle, model, f"after writing {length} bytes at offset {offset}")

    @clause("copy to device")
    @pytest.mark.parametrize("kind", list(_sources(b"")))
    def test_source_types(self, kind: str) -> None:
        data = pattern(sum(kind.encode()), 256)
        source = _sources(data)[kind]()
        handle, model = self.filled(seed=3)
        self.run(self.backend.copy_to_device(source, handle, 100))
        model[100:356] = data
        self.assert_content(handle, model, f"after writing a {kind} at offset 100")

    @clause("copy to device")
    def test_write_default_offset_is_zero(self) -> None:
        handle, model = self.filled()
        self.run(self.backend.copy_to_device(b"\x09" * 10, handle))
        model[:10] = b"\x09" * 10
        self.assert_content(handle, model, "after copy_to_device without offset")

    @clause("copy to device")
    def test_unusable_sources_refused(self) -> None:
        handle, model = self.filled()
        strided = memoryview(bytearray(64))[::2]
        with self.canary_kept("refused sources"):
            self.expect_errors(
                TypeError,
                [
                    (
                        f"copy_to_device({label})",
                        _call(self.backend.copy_to_device, src, handle, 0),
                    )
                    for label, src in (
                        ("str", "abc"),
                        ("int", 7),
                        ("None", None),
                        ("list", [1, 2]),
                        ("non-contiguous memoryview", strided),
                    )
                ],
            )
        self.assert_content(handle, model, "allocation after refused writes")

    @clause("copy from device")
    @pytest.mark.parametrize(("offset", "length"), _WRITE_RANGES)
    def test_read_at_offset(self, offset: int, length: int) -> None:
        handle, model = self.filled()
        got = self.run(self.backend.copy_from_device(handle, offset, length))
        assert type(got) is bytes, f"copy_from_device returned {type(got).__name__}, not bytes"
        assert_bytes_equal(
            got,
            bytes(model[offset : offset + length]),
            f"copy_from_device(offset={offset}, size={length})",
        )

    @clause("copy from device")
    def test_read_sees_latest_write(self) -> None:
        """Reads return what was last written, never a cached earlier state."""
        handle, model = self.filled()
        for step in range(4):
            offset = 100 * step
            assert_bytes_equal(
                self.run(self.backend.copy_from_device(handle, offset, 512)),
                bytes(model[offset : offset + 512]),
                f"read before write {step}",
            )
            data = pattern(50 + step, 300)
            self.run(self.backend.copy_to_device(data, handle, offset + 50))
            model[offset + 50 : offset + 350] = data
            assert_bytes_equal(
                self.run(self.backend.copy_from_device(handle, offset, 512)),
                bytes(model[offset : offset + 512]),
                f"read after write {step}",
            )
        other = self.alloc(SIZE, pattern(99, SIZE))
        self.run(self.backend.copy_device_to_device(other, handle, 1000, 0, 2000))
        model[2000:3000] = pattern(99, SIZE)[:1000]
        self.assert_content(handle, model, "read after a device-to-device copy into it")

    @clause("copy from device into")
    def test_read_into_bytearray(self) -> None:
        handle, model = self.filled()
        out = bytearray(1000)
        count = self.run(self.backend.copy_from_device_into(handle, 333, out))
        assert count == 1000, f"copy_from_device_into returned {count!r}, not 1000"
        assert_bytes_equal(bytes(out), bytes(model[333:1333]), "read into bytearray")

    @clause("copy from device into")
    def test_read_into_memoryview_slice(self) -> None:
        handle, model = self.filled()
        buffer = bytearray(b"\xee") * 3000
        count = self.run(self.backend.copy_from_device_into(handle, 17, memoryview(buffer)[1000:2000]))
        assert count == 1000, f"copy_from_device_into returned {count!r}, not 1000"
        assert_bytes_equal(bytes(buffer[1000:2000]), bytes(model[17:1017]), "read into a slice")
        assert buffer[:1000] == b"\xee" * 1000 and buffer[2000:] == b"\xee" * 1000, (
            "copy_from_device_into wrote outside the memoryview slice"
        )

    @clause("copy from device into")
    @pytest.mark.parametrize("dtype", ["uint8", "float32", "int64"])
    def test_read_into_numpy(self, dtype: str) -> None:
        numpy = pytest.importorskip("numpy")
        handle, model = self.filled()
        out = numpy.zeros(4096 // numpy.dtype(dtype).itemsize, dtype=dtype)
        count = self.run(self.backend.copy_from_device_into(handle, 8, out))
        assert count == 4096, f"returned {count!r}, not the array's nbytes 4096"
        assert_bytes_equal(out.tobytes(), bytes(model[8:4104]), f"read into numpy {dtype} array")

    @clause("copy from device into")
    def test_read_into_read_only_refused(self) -> None:
        handle, model = self.filled()
        cases: list[tuple[str, Callable[[], object]]] = [
            ("bytes", lambda: self.backend.copy_from_device_into(handle, 0, bytes(16))),
            (
                "memoryview of bytes",
                lambda: self.backend.copy_from_device_into(handle, 0, memoryview(bytes(16))),
            ),
            (
                "read-only memoryview",
                lambda: self.backend.copy_from_device_into(
                    handle, 0, memoryview(bytearray(16)).toreadonly()
                ),
            ),
            ("str", lambda: self.backend.copy_from_device_into(handle, 0, "abcd")),
            ("None", lambda: self.backend.copy_from_device_into(handle, 0, None)),
        ]
        try:
            import numpy
        except ImportError:
            pass
        else:
            frozen = numpy.zeros(16, dtype=numpy.uint8)
            frozen.flags.writeable = False
            cases.append(
                ("read-only numpy array", lambda: self.backend.copy_from_device_into(handle, 0, frozen))
            )
        with self.canary_kept("refused destinations"):
            self.expect_errors(TypeError, cases)
        self.assert_content(handle, model, "allocation after refused reads")

    @clause("copy bounds")
    @pytest.mark.parametrize(
        ("offset", "length"), [(SIZE - 3, 4), (SIZE, 1), (SIZE + 10, 0), (0, SIZE + 1), (1 << 40, 1)]
    )
    def test_write_out_of_bounds(self, offset: int, length: int) -> None:
        handle, model = self.filled()
        with self.canary_kept("an out-of-bounds write"):
            exc = self.expect_error(
                OutOfBoundsError,
                lambda: self.backend.copy_to_device(b"\x55" * length, handle, offset),
                f"copy_to_device of {length} bytes at offset {offset} into {SIZE} bytes",
            )
            assert isinstance(exc, ValueError), "OutOfBoundsError must also be a ValueError"
        self.assert_content(
            handle, model, "allocation after a refused out-of-bounds write (nothing may be written)"
        )

    @clause("copy bounds")
    @pytest.mark.parametrize(
        ("offset", "length"), [(SIZE - 3, 4), (SIZE, 1), (SIZE + 10, 0), (0, SIZE + 1), (1 << 40, 1)]
    )
    def test_read_out_of_bounds(self, offset: int, length: int) -> None:
        handle, model = self.filled()
        with self.canary_kept("out-of-bounds reads"):
            self.expect_errors(
                OutOfBoundsError,
                [
                    (
                        f"copy_from_device(offset={offset}, size={length})",
                        lambda: self.backend.copy_from_device(handle, offset, length),
                    ),
                    (
                        f"copy_from_device_into(offset={offset}, {length}-byte dst)",
                        lambda: self.backend.copy_from_device_into(handle, offset, bytearray(length)),
                    ),
                ],
            )
        self.assert_content(handle, model, "allocation after refused reads")

    @clause("copy bounds")
    def test_zero_length_at_end(self) -> None:
        handle, model = self.filled()
        self.run(self.backend.copy_to_device(b"", handle, SIZE))
        assert self.run(self.backend.copy_from_device(handle, SIZE, 0)) == b""
        assert self.run(self.backend.copy_from_device_into(handle, SIZE, bytearray())) == 0
        self.assert_content(handle, model, "allocation after zero-length copies at its end")

    @clause("copy arguments")
    def test_copy_to_device_arguments(self) -> None:
        b = self.backend
        handle, model = self.filled()
        with self.canary_kept("copy_to_device with bad arguments"):
            self.expect_errors(
                TypeError,
                [
                    (f"offset {bad!r}", _call(b.copy_to_device, b"x", handle, bad))
                    for bad in (True, 1.0, None, "0")
                ]
                + [
                    (f"handle {bad!r}", _call(b.copy_to_device, b"x", bad, 0))
                    for bad in ("handle", None, 0, {"handle_id": handle.handle_id})
                ],
            )
            self.expect_errors(
                ValueError,
                [
                    ("offset -1", lambda: b.copy_to_device(b"x", handle, -1)),
                ],
            )
        self.assert_content(handle, model, "allocation after refused writes")

    @clause("copy arguments")
    def test_copy_from_device_arguments(self) -> None:
        b = self.backend
        handle, model = self.filled()
        with self.canary_kept("copy_from_device(_into) with bad arguments"):
            self.expect_errors(
                TypeError,
                [
                    (f"offset {bad!r}", _call(b.copy_from_device, handle, bad, 1))
                    for bad in (True, 1.0, None, "0")
                ]
                + [
                    (f"size {bad!r}", _call(b.copy_from_device, handle, 0, bad))
                    for bad in (True, 1.0, None, "1")
                ]
                + [
                    (
                        f"into offset {bad!r}",
                        _call(b.copy_from_device_into, handle, bad, bytearray(1)),
                    )
                    for bad in (True, 1.0, None, "0")
                ]
                + [
                    (f"handle {bad!r}", _call(b.copy_from_device, bad, 0, 1))
                    for bad in ("handle", None, 0)
                ]
                + [
                    (
                        f"into handle {bad!r}",
                        _call(b.copy_from_device_into, bad, 0, bytearray(1)),
                    )
                    for bad in ("handle", None, 0)
                ],
            )
            self.expect_errors(
                ValueError,
                [
                    ("offset -1", lambda: b.copy_from_device(handle, -1, 1)),
                    ("size -1", lambda: b.copy_from_device(handle, 0, -1)),
                    ("into offset -1", lambda: b.copy_from_device_into(handle, -1, bytearray(1))),
                ],
            )
        self.assert_content(handle, model, "allocation after refused reads")

    @clause("copy arguments")
    def test_copy_device_to_device_arguments(self) -> None:
        b = self.backend
        src, src_model = self.filled(seed=5)
        dst, dst_model = self.filled(seed=6)
        with self.canary_kept("copy_device_to_device with bad arguments"):
            self.expect_errors(
                TypeError,
                [
                    (f"size {bad!r}", _call(b.copy_device_to_device, src, dst, bad))
                    for bad in (True, 1.0, None, "1")
                ]
                + [
                    (f"src_offset {bad!r}", _call(b.copy_device_to_device, src, dst, 1, bad, 0))
                    for bad in (True, 1.0, None)
                ]
                + [
                    (f"dst_offset {bad!r}", _call(b.copy_device_to_device, src, dst, 1, 0, bad))
                    for bad in (True, 1.0, None)
                ]
                + [
                    (f"src handle {bad!r}", _call(b.copy_device_to_device, bad, dst, 1))
                    for bad in ("handle", None)
                ]
                + [
                    (f"dst handle {bad!r}", _call(b.copy_device_to_device, src, bad, 1))
                    for bad in ("handle", None)
                ],
            )
            self.expect_errors(
                ValueError,
                [
                    ("size -1", lambda: b.copy_device_to_device(src, dst, -1)),
                    ("src_offset -1", lambda: b.copy_device_to_device(src, dst, 1, -1, 0)),
                    ("dst_offset -1", lambda: b.copy_device_to_device(src, dst, 1, 0, -1)),
                ],
            )
            self.expect_errors(
                OutOfBoundsError,
                [
                    (f"size {SIZE + 1}", lambda: b.copy_device_to_device(src, dst, SIZE + 1)),
                    (
                        "src range past the end",
                        lambda: b.copy_device_to_device(src, dst, 10, SIZE - 5, 0),
                    ),
                    (
                        "dst range past the end",
                        lambda: b.copy_device_to_device(src, dst, 10, 0, SIZE - 5),
                    ),
                    (
                        "same allocation past the end",
                        lambda: b.copy_device_to_device(src, src, 10, 0, SIZE - 9),
                    ),
                ],
            )
        self.assert_content(src, src_model, "source after refused copies")
        self.assert_content(dst, dst_model, "destination after refused copies (nothing written)")

    @clause("synchronize")
    def test_synchronize_idle(self) -> None:
        for device in self.backend.list_devices():
            self.run(self.backend.synchronize(device.device_id))

    @clause("synchronize")
    def test_synchronize_after_work(self) -> None:
        b = self.backend
        src, dst = self.alloc(64 * KiB), self.alloc(64 * KiB)
        chunks = [pattern(200 + i, 4 * KiB) for i in range(16)]

        async def work() -> bytes:
            await asyncio.gather(
                *(b.copy_to_device(chunk, src, i * 4 * KiB) for i, chunk in enumerate(chunks))
            )
            await asyncio.gather(b.copy_device_to_device(src, dst, 64 * KiB), b.synchronize(self.device))
            await b.synchronize(self.device)
            return await b.copy_from_device(dst, 0, 64 * KiB)

        assert_bytes_equal(self.run(work()), b"".join(chunks), "data after synchronize")

    @clause("synchronize")
    def test_synchronize_bad_device(self) -> None:
        b = self.backend
        self.expect_errors(
            DeviceNotFoundError,
            [(f"synchronize({bad!r})", _call(b.synchronize, bad)) for bad in _unknown_device_ids(b)[:4]],
        )
        self.expect_errors(
            TypeError,
            [(f"synchronize({bad!r})", _call(b.synchronize, bad)) for bad in (0, None)],
        )


# ==================================================================================================
# Device to device


_D2D_CASES = [
    (SIZE, 0, 0),
    (1, 0, SIZE - 1),
    (1, SIZE - 1, 0),
    (4096, 1, 4095),
    (777, 13, 7000),
    (0, 5, 5),
]
_OVERLAP_CASES = [
    (4096, 0, 1),
    (4096, 1, 0),
    (4096, 0, 2048),
    (4096, 2048, 0),
    (SIZE - 1, 0, 1),
    (SIZE - 1, 1, 0),
    (4096, 100, 100),
    (3, 5, 6),
    (1000, 4000, 3999),
]


class DeviceToDeviceContract(KitBase):
    """copy_device_to_device: offsets, overlap within one allocation, and across devices."""

    @clause("device-to-device")
    @pytest.mark.parametrize(("size", "src_offset", "dst_offset"), _D2D_CASES)
    def test_copy_between_allocations(self, size: int, src_offset: int, dst_offset: int) -> None:
        src_data, dst_data = pattern(11, SIZE), pattern(12, SIZE)
        src, dst = self.alloc(SIZE, src_data), self.alloc(SIZE, dst_data)
        self.run(self.backend.copy_device_to_device(src, dst, size, src_offset, dst_offset))
        model = bytearray(dst_data)
        model[dst_offset : dst_offset + size] = src_data[src_offset : src_offset + size]
        what = f"copy of {size} bytes from offset {src_offset} to offset {dst_offset}"
        self.assert_content(dst, model, f"destination after {what}")
        self.assert_content(src, src_data, f"source after {what}")

    @clause("device-to-device")
    def test_copy_defaults_offsets_to_zero(self) -> None:
        src, dst = self.alloc(64, b"s" * 64), self.alloc(128, b"d" * 128)
        self.run(self.backend.copy_device_to_device(src, dst, 64))
        self.assert_content(dst, b"s" * 64 + b"d" * 64, "destination of a copy without offsets")

    @clause("device-to-device overlap")
    @pytest.mark.parametrize(("size", "src_offset", "dst_offset"), _OVERLAP_CASES)
    def test_overlapping_copy_is_memmove(self, size: int, src_offset: int, dst_offset: int) -> None:
        data = pattern(13, SIZE)
        handle = self.alloc(SIZE, data)
        self.run(self.backend.copy_device_to_device(handle, handle, size, src_offset, dst_offset))
        model = bytearray(data)
        model[dst_offset : dst_offset + size] = data[src_offset : src_offset + size]
        self.assert_content(
            handle,
            model,
            f"memmove of {size} bytes from {src_offset} to {dst_offset} within one allocation",
        )

    @clause("cross-device copy")
    def test_copy_across_devices(self) -> None:
        devices = [device.device_id for device in self.backend.list_devices()]
        if len(devices) < 2:
            pytest.skip("needs two devices; the backend lists one")
        first, second = devices[0], devices[1]
        for device in (first, second):
            if not self.backend.capabilities(device).cross_device_copy:
                pytest.skip(f"capabilities({device!r}).cross_device_copy is False")
        a_data, b_data = pattern(21, SIZE), pattern(22, SIZE)
        a = self.alloc(SIZE, a_data, device=first)
        b = self.alloc(SIZE, b_data, device=second)
        self.run(self.backend.copy_device_to_device(a, b, 3000, 7, 1001))
        b_model = bytearray(b_data)
        b_model[1001:4001] = a_data[7:3007]
        self.assert_content(b, b_model, f"{second} after a copy from {first}")
        self.run(self.backend.copy_device_to_device(b, a, SIZE - 1, 1, 0))
        a_model = bytearray(a_data)
        a_model[0 : SIZE - 1] = b_model[1:]
        self.assert_content(a, a_model, f"{first} after a copy from {second}")


# ==================================================================================================
# Handles


class HandleContract(KitBase):
    """Freed, double-freed, forged and foreign handles are refused with InvalidHandleError."""

    @clause("handles: use after free")
    def test_use_after_free(self) -> None:
        good = self.alloc(64, b"g" * 64)
        dead = self.alloc(64, b"x" * 64)
        self.run(self.backend.deallocate(dead))
        with self.canary_kept("calls with a freed handle"):
            self.expect_errors(InvalidHandleError, self.handle_calls(dead, good))
        self.assert_content(good, b"g" * 64, "live allocation after calls with a freed handle")

    @clause("handles: double free")
    def test_double_free(self) -> None:
        handle = self.alloc(64)
        self.run(self.backend.deallocate(handle))
        with self.canary_kept("a double free"):
            self.expect_error(
                InvalidHandleError,
                lambda: self.backend.deallocate(handle),
                "second deallocate() of one handle",
            )
            other = self.alloc(64, b"o" * 64)  # the freed memory may be reused here
            self.expect_error(
                InvalidHandleError,
                lambda: self.backend.deallocate(handle),
                "third deallocate() after the memory was reused",
            )
            self.assert_content(other, b"o" * 64, "allocation made after the double free")

    @clause("handles: forged")
    def test_forged_handles(self) -> None:
        real = self.alloc(4096, pattern(31, 4096))
        good = self.alloc(64, b"g" * 64)
        forged = {
            "a random id": MemoryHandle(
                handle_id=os.urandom(16).hex(),
                device_id=self.device,
                size_bytes=4096,
                allocated_at=real.allocated_at,
            ),
            "the real id with a larger size": real.model_copy(update={"size_bytes": 8192}),
            "the real id with a smaller size": real.model_copy(update={"size_bytes": 16}),
            "the real id on another device": real.model_copy(
                update={"device_id": f"{self.backend.name}:4096"}
            ),
        }
        with self.canary_kept("calls with forged handles"):
            for label, fake in forged.items():
                cases = [(f"{call} with {label}", fn) for call, fn in self.handle_calls(fake, good)]
                self.expect_errors(InvalidHandleError, cases)
        self.assert_content(real, pattern(31, 4096), "the real allocation after forged calls")
        self.run(self.backend.deallocate(real))

    @clause("handles: foreign")
    def test_handles_of_another_instance(self) -> None:
        other = self.open_backend()
        theirs = self.alloc(64, b"t" * 64, backend=other)
        good = self.alloc(64, b"g" * 64)
        with self.canary_kept("calls with another instance's handle"):
            self.expect_errors(InvalidHandleError, self.handle_calls(theirs, good))
        self.assert_content(theirs, b"t" * 64, "the other instance's allocation", backend=other)
        self.run(other.deallocate(theirs))

    @clause("shutdown frees memory")
    def test_shutdown_frees_every_allocation(self) -> None:
        """used_bytes is per process, so a new instance sees what a closed one left behind."""
        probe = self.open_backend()
        device = self.device_of(probe)
        granularity = probe.capabilities(device).allocation_granularity_bytes
        total = self.checked_report(probe, device).total_bytes
        size = min(max(4 * MiB, 2 * granularity + 1), max(total // 16, 1))
        before = self.checked_report(probe, device).used_bytes
        self.run(probe.shutdown())

        doomed = self.open_backend()
        handles = [self.alloc(size // 4 + 1, backend=doomed, device=device) for _ in range(4)]
        held = self.checked_report(doomed, device).used_bytes
        assert held - before >= size - granularity, (
            f"used_bytes rose by {held - before} after allocating {size + 4} bytes"
        )
        self.run(doomed.shutdown())
        assert doomed.live_handles() == [], "live_handles() not empty after shutdown"
        self.expect_errors(
            BackendClosedError,
            [
                (f"{call} on the closed instance", fn)
                for call, fn in self.handle_calls(handles[0], handles[1], backend=doomed)
            ],
        )

        fresh = self.open_backend()
        after = self.checked_report(fresh, device).used_bytes
        assert after - before <= granularity, (
            f"after shutdown, used_bytes is {after - before} bytes above its level before the "
            f"allocations (granularity {granularity}): shutdown did not free them"
        )


# ==================================================================================================
# Memory report


class MemoryReportContract(KitBase):
    """get_device_memory_info: consistent figures that follow this process's allocations."""

    @clause("memory report")
    def test_report_is_consistent(self) -> None:
        for device in self.backend.list_devices():
            report = self.checked_report(device=device.device_id)
            assert report["total_bytes"] == report.total_bytes, "report['total_bytes'] differs"
            assert set(report.keys()) >= {"total_bytes", "used_bytes", "available_bytes"}

    @clause("memory report")
    def test_report_refuses_unknown_device(self) -> None:
        b = self.backend
        self.expect_errors(
            DeviceNotFoundError,
            [
                (f"get_device_memory_info({bad!r})", _call(b.get_device_memory_info, bad))
                for bad in _unknown_device_ids(b)[:3]
            ],
        )

    def probe_size(self) -> tuple[int, int]:
        """(bytes to allocate, granularity): 64 MiB, or 1/16 of a small device."""
        granularity = self.caps.allocation_granularity_bytes
        total = self.checked_report().total_bytes
        return max(1 * MiB, min(self.memory_probe_bytes, total // 16)) // MiB * MiB, granularity

    @clause("memory accounting")
    def test_allocation_moves_used_bytes(self) -> None:
        """used_bytes counts this process's memory: up by N on allocation, back down on free."""
        size, granularity = self.probe_size()
        before = self.checked_report()
        handle = self.alloc(size)
        held = self.checked_report()
        self.run(self.backend.deallocate(handle))
        after = self.checked_report()
        grew = held.used_bytes - before.used_bytes
        assert grew >= size - (granularity - 1), (
            f"used_bytes rose by {grew} after allocating {size} bytes"
        )
        left = after.used_bytes - before.used_bytes
        assert left <= granularity, (
            f"used_bytes stays {left} bytes up after freeing (granularity {granularity})"
        )

    @clause("memory accounting")
    def test_allocation_lowers_available_bytes(self) -> None:
        """With live figures, available_bytes falls by about N when N bytes are allocated.

        The allocation is written in full before measuring, since some drivers commit memory on
        first touch. The figure is still noisy (other processes allocate too), so it gets a slack
        of max(granularity, 16 MiB) and three tries. Without `memory_budget` or
        `available_tracks_allocations` the figure is an OS estimate, which on virtual machines lags
        by seconds; only its consistency is checked then.
        """
        if not (self.caps.memory_budget or self.caps.available_tracks_allocations):
            pytest.skip(
                "capabilities(): neither memory_budget nor available_tracks_allocations; "
                "available_bytes is an OS estimate"
            )
        size, granularity = self.probe_size()
        slack = max(granularity, 16 * MiB)
        data = pattern(41, 1 * MiB) * (size // MiB)
        drops: list[str] = []
        for _attempt in range(3):
            before = self.checked_report()
            handle = self.alloc(len(data), data)
            held = self.checked_report()
            self.run(self.backend.deallocate(handle))
            dropped = before.available_bytes - held.available_bytes
            if dropped >= len(data) - slack:
                return
            drops.append(str(dropped))
        raise AssertionError(
            f"available_bytes fell by only {', '.join(drops)} bytes (three tries) while "
            f"{len(data)} bytes were allocated and written (slack {slack})"
        )


# ==================================================================================================
# Concurrency


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
        """Writes, reads, copies and frees interleaved on distinct allocations."""
        b, device = self.backend, self.device

        async def chain(i: int) -> None:
            data = pattern(3000 + i, 2 * KiB)
            src = await b.allocate(device, 2 * KiB)
            dst = await b.allocate(device, 4 * KiB)
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


# ==================================================================================================
# State machine


class StateMachineContract(KitBase):
    """Random call sequences checked byte for byte against a model (Hypothesis)."""

    @clause("state machine")
    def test_state_machine(self, backend_factory: BackendFactory) -> None:
        config = self._request.config
        run_state_machine(
            backend_factory,
            device_id=self.chosen_device_id(),
            settings=kit_settings(
                config.getoption("exo_gpu_examples", None),
                config.getoption("exo_gpu_steps", None),
                database=not config.stash.get(NO_DATABASE_KEY, False),
            ),
        )


class BackendContract(
    # pytest collects inherited tests in reverse MRO order: listed last-to-first here, they run
    # first-to-last (cheap lifecycle checks first, the state machine last).
    StateMachineContract,
    ConcurrencyContract,
    MemoryReportContract,
    HandleContract,
    DeviceToDeviceContract,
    CopyContract,
    AllocationContract,
    DeviceContract,
    LifecycleContract,
):
    """The whole contract. Subclass it as `Test...` and set `backend_class` (see `KitBase`)."""
