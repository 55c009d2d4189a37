"""Clauses "lifecycle" and "closed backend": initialize/shutdown idempotent, a closed backend refuses
every call."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import BackendClosedError
from exo_gpu_plugins.models import MemoryHandle
from exo_gpu_plugins.testing.contract._base import KitBase, clause
from exo_gpu_plugins.testing.contract._helpers import KiB, described


class LifecycleContract(KitBase):
    """initialize/shutdown are idempotent; a closed backend refuses every call."""

    @clause("lifecycle")
    def test_initialize_twice(self) -> None:
        backend = self.new_backend()
        self.run(backend.initialize())
        assert backend.is_open, "is_open is False after initialize()"
        devices = [described(device) for device in backend.list_devices()]
        self.run(backend.initialize())
        assert backend.is_open, "is_open is False after a second initialize()"
        again = [described(device) for device in backend.list_devices()]
        assert again == devices, "a second initialize() changed the devices"

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
        host = self.run(backend.allocate_host_buffer(device, 16))
        self.run(backend.shutdown())
        cases = _every_call(backend, device, handle)
        cases.append(("release_host_buffer()", lambda: backend.release_host_buffer(host)))
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
        ("get_device_utilization()", lambda: b.get_device_utilization(device)),
        ("allocate()", lambda: b.allocate(device, 16)),
        ("deallocate()", lambda: b.deallocate(handle)),
        ("copy_to_device()", lambda: b.copy_to_device(b"x", handle, 0)),
        ("copy_from_device()", lambda: b.copy_from_device(handle, 0, 1)),
        ("copy_from_device_into()", lambda: b.copy_from_device_into(handle, 0, bytearray(1))),
        ("copy_device_to_device()", lambda: b.copy_device_to_device(handle, handle, 1)),
        ("copy_file_to_device()", lambda: b.copy_file_to_device(__file__, handle, size_bytes=1)),
        ("allocate_host_buffer()", lambda: b.allocate_host_buffer(device, 16)),
        ("register_host_buffer()", lambda: b.register_host_buffer(device, bytearray(16))),
        ("synchronize()", lambda: b.synchronize(device)),
    ]
