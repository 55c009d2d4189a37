"""What exo's node profile needs from a GPU node, read through any backend.

exo's `SystemPerformanceProfile` carries `gpu_usage`, `temp` and `sys_power`, and placement needs
each device's total and free memory. `read_gpu_profiles` takes those readings now, one
`GpuProfile` per device; a figure with no source is `None`, and exo decides what to show for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.machine import device_state

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
    """Readings of every device of an open backend (`machine.device_state` of each)."""
    profiles = []
    for device in backend.list_devices():
        state = await device_state(backend, device.device_id)
        profiles.append(
            GpuProfile(
                device_id=device.device_id,
                name=device.name,
                memory_total_bytes=state.memory.total_bytes,
                memory_available_bytes=state.memory.available_bytes,
                gpu_usage=state.telemetry.utilization_percent,
                temp=state.telemetry.temperature_c,
                sys_power=state.telemetry.power_w,
            )
        )
    return profiles
