"""What every telemetry source offers: live readings (`TelemetrySource`) and fixed facts about the
device (`DeviceFacts`), each `None` where the source does not know it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["DeviceFacts", "TelemetrySource"]


@dataclass(frozen=True, kw_only=True)
class DeviceFacts:
    """A device's fixed figures as one source knows them; `source` names it ("nvml", "sysfs").

    `max_graphics_clock_mhz` is the highest graphics (SM) clock the hardware allows,
    `max_memory_clock_mhz` the memory clock as the driver states it, and `bandwidth_gbps` the peak
    memory bandwidth in GB/s (10^9 bytes per second) where the bus width is known too.
    `tensor_core_count` is filled only where a published per-architecture figure and the number of
    compute units both exist (see `nvml.nvidia_tensor_core_count`).
    """

    source: str
    compute_capability: str | None = None
    max_graphics_clock_mhz: int | None = None
    max_memory_clock_mhz: int | None = None
    memory_bus_width_bits: int | None = None
    bandwidth_gbps: float | None = None
    tensor_core_count: int | None = None


class TelemetrySource(Protocol):
    """Which readings a device has, how to take them now, and what the source knows of the device."""

    has_temperature: bool
    has_power: bool
    has_clock: bool
    has_utilization: bool

    def temperature_c(self) -> float | None: ...

    def power_w(self) -> float | None: ...

    def clock_mhz(self) -> int | None: ...

    def utilization_percent(self) -> float | None: ...

    def device_facts(self, compute_units: int | None = None) -> DeviceFacts: ...
