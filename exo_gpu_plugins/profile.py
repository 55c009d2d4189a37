"""What exo's node profile needs from a GPU node, read through any backend.

exo's `SystemPerformanceProfile` carries `gpu_usage`, `temp` and `sys_power`, and placement needs
each device's total and free memory. `read_gpu_profiles` takes those readings now, one
`GpuProfile` per device; a figure with no source is `None`, and exo decides what to show for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exo_gpu_plugins.backend import GPUBackend

__all__ = ["GpuProfile", "read_gpu_profiles"]


@dataclass(frozen=True)
class GpuProfile:
    """One device's readings, taken together."""

    device_id: str
    name: str
    memory_total_bytes: int
    memory_available_bytes: int
    gpu_usage: float | None  # percent busy, 0-100
    temp: float | None  # degrees Celsius
    sys_power: float | None  # watts


async def read_gpu_profiles(backend: GPUBackend[Any]) -> list[GpuProfile]:
    """Readings of every device of an open backend (a memory report and three telemetry reads)."""
    profiles = []
    for device in backend.list_devices():
        report = await backend.get_device_memory_info(device.device_id)
        profiles.append(
            GpuProfile(
                device_id=device.device_id,
                name=device.name,
                memory_total_bytes=report.total_bytes,
                memory_available_bytes=report.available_bytes,
                gpu_usage=await backend.get_device_utilization(device.device_id),
                temp=await backend.get_device_temperature(device.device_id),
                sys_power=await backend.get_device_power_usage(device.device_id),
            )
        )
    return profiles
