"""Clauses "devices", "properties", "capabilities" and "telemetry"."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from exo_gpu_plugins.errors import DeviceNotFoundError
from exo_gpu_plugins.models import Capabilities, GPUDevice
from exo_gpu_plugins.testing.contract._base import KitBase, clause
from exo_gpu_plugins.testing.contract._helpers import deferred, described, unknown_device_ids
from exo_gpu_plugins.testing.support import plain_int

_TELEMETRY = {
    # capability: (method, plausible range, unit)
    "temperature": ("get_device_temperature", (0.0, 150.0), "degrees C"),
    "power": ("get_device_power_usage", (0.0, 2000.0), "W"),
    "clock_rate": ("get_device_clock_rate", (1.0, 10000.0), "MHz"),
    "utilization": ("get_device_utilization", (0.0, 100.0), "%"),
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
            found = self.backend.get_device(device.device_id)
            assert isinstance(found, GPUDevice) and described(found) == described(device), (
                f"get_device({device.device_id!r}) differs from list_devices()"
            )

    @clause("devices")
    def test_get_device_unknown_is_none(self) -> None:
        for unknown in unknown_device_ids(self.backend):
            found = self.backend.get_device(unknown)
            assert found is None, f"get_device({unknown!r}) returned {found!r}, expected None"

    @clause("devices")
    def test_get_device_wrong_type(self) -> None:
        self.expect_errors(
            TypeError,
            [
                (f"get_device({bad!r})", deferred(self.backend.get_device, bad))
                for bad in (0, None, b"x:0", 1.5)
            ],
        )

    @clause("properties")
    def test_memory_bytes_matches_report(self) -> None:
        for device in self.backend.list_devices():
            assert plain_int(device.memory_bytes) and device.memory_bytes > 0, (
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
        for unknown in unknown_device_ids(b)[:4]:
            cases += [
                (f"get_device_properties({unknown!r})", deferred(b.get_device_properties, unknown)),
                (f"get_device_memory_info({unknown!r})", deferred(b.get_device_memory_info, unknown)),
                (f"capabilities({unknown!r})", deferred(b.capabilities, unknown)),
                (f"get_device_temperature({unknown!r})", deferred(b.get_device_temperature, unknown)),
                (f"get_device_power_usage({unknown!r})", deferred(b.get_device_power_usage, unknown)),
                (f"get_device_clock_rate({unknown!r})", deferred(b.get_device_clock_rate, unknown)),
                (f"get_device_utilization({unknown!r})", deferred(b.get_device_utilization, unknown)),
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
            assert plain_int(caps.allocation_granularity_bytes), (
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
