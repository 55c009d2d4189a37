"""Live device readings (temperature, power, graphics clock, utilization) and fixed device facts
(compute capability, maximum clocks, bus width, peak bandwidth) for any backend that knows a
device's identity: NVML for NVIDIA cards, matched by UUID (the optional `nvidia-ml-py` package), and
sysfs for amdgpu, i915 and xe, matched by PCI address. No source means `None`, never a guess.
"""

from __future__ import annotations

from pathlib import Path

from exo_gpu_plugins.telemetry.nvml import NvmlSource, nvidia_tensor_core_count, peak_bandwidth_gbps
from exo_gpu_plugins.telemetry.source import DeviceFacts, TelemetrySource
from exo_gpu_plugins.telemetry.sysfs import HwmonSource

__all__ = [
    "DeviceFacts",
    "HwmonSource",
    "NvmlSource",
    "TelemetrySource",
    "find_source",
    "nvidia_tensor_core_count",
    "peak_bandwidth_gbps",
]


def find_source(
    uuid: str | None,
    pci_bus_id: str | None,
    vendor: str,
    sysfs_root: Path = Path("/sys"),
) -> NvmlSource | HwmonSource | None:
    """The best telemetry source for a device: NVML by UUID for NVIDIA, else sysfs by PCI address."""
    if vendor == "nvidia" and uuid:
        source = NvmlSource.for_uuid(uuid)
        if source is not None:
            return source
    if pci_bus_id:
        return HwmonSource.for_pci(pci_bus_id, sysfs_root)
    return None
