"""The Vulkan backend fills device fields from the vendor's source where Vulkan does not know them,
and says which source each came from (a fake source stands in for NVML here)."""

from __future__ import annotations

from typing import Any

import pytest

from exo_gpu_plugins.telemetry import DeviceFacts

pytest.importorskip("exo_gpu_vulkan")

from exo_gpu_vulkan.backend import VulkanBackend


class FakeSource:
    has_temperature = has_power = has_clock = False
    has_utilization = True

    def temperature_c(self) -> None:
        return None

    def power_w(self) -> None:
        return None

    def clock_mhz(self) -> None:
        return None

    def utilization_percent(self) -> float:
        return 37.0

    def device_facts(self, compute_units: int | None = None) -> DeviceFacts:
        return DeviceFacts(
            source="nvml",
            compute_capability="9.0",
            max_graphics_clock_mhz=1980,
            max_memory_clock_mhz=3201,
            memory_bus_width_bits=6016,
            bandwidth_gbps=4814.3,
        )


async def test_vendor_facts_and_their_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(info: dict[str, Any]) -> FakeSource:
        return FakeSource()

    monkeypatch.setattr(VulkanBackend, "_find_telemetry", staticmethod(fake))
    backend = VulkanBackend()
    await backend.initialize()
    try:
        device = backend.list_devices()[0]
        assert (device.compute_capability, device.clock_rate_mhz) == ("9.0", 1980)
        assert (device.memory_clock_mhz, device.memory_bus_width_bits) == (3201, 6016)
        assert device.bandwidth_gbps == 4814.3 and device.tensor_core_count is None
        sources = dict(device.field_sources)
        assert sources["compute_capability"] == sources["bandwidth_gbps"] == "nvml"
        assert sources["name"] == sources["memory_bytes"] == "vulkan"
        assert "tensor_core_count" not in sources
        assert backend.capabilities(device.device_id).utilization
        assert await backend.get_device_utilization(device.device_id) == 37.0
    finally:
        await backend.shutdown()
