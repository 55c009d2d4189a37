"""The machine's GPU state, as records: for each device, this process's memory report, the whole
device's used memory and the processes using it (where the system can tell), and live telemetry.

One place gathers what `exo-gpu devices`, `info`, `monitor` and `ps` show and what exo's node
profile reads (`profile.read_gpu_profiles`); the CLI only renders these records.

The whole device's used memory comes from the first source that has it: NVML (NVIDIA, by UUID),
amdgpu's `mem_info_vram_used`, the DRM clients' fdinfo summed when every process could be read
(amdgpu, i915, xe, by PCI address), the driver's budget (VK_EXT_memory_budget: the heap's size less
what the budget leaves), or the OS for host memory. Processes come from NVML or DRM fdinfo. Where
no source exists the figure is `None` and a `*_note` says why, in words a person can act on.
`MemoryReport.used_bytes` stays what this process holds.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exo_gpu_plugins.errors import BackendUnavailableError
from exo_gpu_plugins.models import DeviceType, GPUDevice, MemoryReport
from exo_gpu_plugins.telemetry.nvml import NvmlSource
from exo_gpu_plugins.telemetry.usage import (
    ProcessReading,
    nvml_processes,
    nvml_used_bytes,
    process_name,
    scan_drm_clients,
    sysfs_vram_used,
)

if TYPE_CHECKING:
    from exo_gpu_plugins.backend import GPUBackend
    from exo_gpu_plugins.registry import Registry

__all__ = [
    "DeviceState",
    "DeviceUsage",
    "ProcessMemory",
    "Telemetry",
    "device_state",
    "device_usage",
    "machine_state",
]

BUDGET_SOURCE = "VK_EXT_memory_budget"


@dataclass(frozen=True)
class ProcessMemory:
    """A process using a device: its pid (as the source states it), its command name where this
    process can see it, and the device memory it holds (None: the source does not say)."""

    pid: int
    name: str | None
    used_bytes: int | None
    source: str


@dataclass(frozen=True)
class DeviceUsage:
    """Who uses a device, read from the system: the whole device's used memory (every process and
    the driver) and the processes using it, each with its source, or None with a note saying why
    the system cannot tell."""

    device_id: str
    device_used_bytes: int | None
    device_used_source: str | None
    device_used_note: str | None
    processes: tuple[ProcessMemory, ...] | None
    processes_source: str | None
    processes_note: str | None


@dataclass(frozen=True)
class Telemetry:
    """Live readings; None where the device has no source for one."""

    temperature_c: float | None
    power_w: float | None
    clock_mhz: int | None
    utilization_percent: float | None


@dataclass(frozen=True)
class DeviceState:
    """One device now: its properties, this process's memory report, the machine's use of it and
    telemetry, read at `time` (ISO 8601, local time with its UTC offset)."""

    time: str
    device: GPUDevice
    memory: MemoryReport
    usage: DeviceUsage
    telemetry: Telemetry
    export_kinds: tuple[str, ...]  # how its memory leaves the backend (Capabilities.export_kinds)


# --------------------------------------------------------------------------------------------------


def _nvml_source(device: GPUDevice) -> NvmlSource | None:
    if device.vendor != "nvidia" or not device.uuid:
        return None
    return NvmlSource.for_uuid(device.uuid)


def _named(readings: Sequence[ProcessReading], proc_root: Path) -> tuple[ProcessMemory, ...]:
    return tuple(
        ProcessMemory(r.pid, process_name(r.pid, proc_root), r.used_bytes, r.source) for r in readings
    )


def device_usage(
    device: GPUDevice,
    report: MemoryReport,
    *,
    sysfs_root: Path = Path("/sys"),
    proc_root: Path = Path("/proc"),
) -> DeviceUsage:
    """Whole-device used memory and the processes using `device`, from the first source that
    knows them (see the module docstring); `report` is the backend's report of the same device."""
    used: int | None = None
    used_source: str | None = None
    processes: tuple[ProcessMemory, ...] | None = None
    processes_source: str | None = None
    missing: list[str] = []
    nvml = _nvml_source(device)
    if nvml is not None:
        used = nvml_used_bytes(nvml)
        used_source = "nvml" if used is not None else None
        listed = nvml_processes(nvml)
        if listed is not None:
            processes, processes_source = _named(listed, proc_root), "nvml"
            if any(p.name is None for p in processes):
                missing.append(
                    "NVML lists pids of other pid namespaces (a container): their names are unknown here"
                )
        else:
            missing.append("NVML refused to list the device's processes")
    elif device.vendor == "nvidia":
        missing.append("NVML is not available (install nvidia-ml-py and the NVIDIA driver)")
    pci = device.pci_bus_id
    if pci and used is None:
        used = sysfs_vram_used(pci, sysfs_root)
        used_source = "sysfs:mem_info_vram_used" if used is not None else None
    if pci and processes is None and device.device_type is not DeviceType.HOST:
        scan = scan_drm_clients(pci, proc_root)
        has_drm = (sysfs_root / "bus" / "pci" / "devices" / pci.lower() / "drm").is_dir()
        if scan.processes or (has_drm and not scan.unreadable):
            processes, processes_source = _named(scan.processes, proc_root), "drm-fdinfo"
        if scan.unreadable:
            missing.append(
                f"{scan.unreadable} processes of other users could not be read (DRM fdinfo needs "
                "the same user or root)"
            )
        elif scan.processes and scan.memory_known and used is None:
            used = sum(p.used_bytes or 0 for p in scan.processes)
            used_source = "drm-fdinfo (sum over processes)"
    if used is None and (report.source == BUDGET_SOURCE or report.source.startswith("os:")):
        # The budget (or the OS) accounts for every process: what is not available is in use.
        used = report.total_bytes - report.available_bytes
        used_source = report.source
    used_note = None
    if used is None:
        used_note = (
            "the whole device's use is unknown: its driver reports no memory "
            f"budget (VK_EXT_memory_budget; its figures: {report.source}) and neither NVML nor "
            "amdgpu's sysfs knows the device; only this process's use is known"
        )
    processes_note = None
    if device.device_type is DeviceType.HOST:
        processes_note = "host memory is every process's: see ps or top"
    elif processes is None:
        processes_note = (
            "the system cannot tell which processes use this device: no NVML (NVIDIA) "
            "and no DRM client lists it (amdgpu, i915, xe)"
        )
    if missing:
        processes_note = "; ".join([processes_note, *missing] if processes_note else missing)
    return DeviceUsage(
        device_id=device.device_id,
        device_used_bytes=used,
        device_used_source=used_source,
        device_used_note=used_note,
        processes=processes,
        processes_source=processes_source,
        processes_note=processes_note,
    )


async def read_telemetry(backend: GPUBackend[Any], device_id: str) -> Telemetry:
    return Telemetry(
        temperature_c=await backend.get_device_temperature(device_id),
        power_w=await backend.get_device_power_usage(device_id),
        clock_mhz=await backend.get_device_clock_rate(device_id),
        utilization_percent=await backend.get_device_utilization(device_id),
    )


async def device_state(backend: GPUBackend[Any], device_id: str) -> DeviceState:
    """Everything about one device of an open backend, read now."""
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    device = await backend.get_device_properties(device_id)
    report = await backend.get_device_memory_info(device_id)
    return DeviceState(
        time=now,
        device=device,
        memory=report,
        usage=device_usage(device, report),
        telemetry=await read_telemetry(backend, device_id),
        export_kinds=tuple(backend.capabilities(device_id).export_kinds),
    )


async def machine_state(
    names: Sequence[str] | None = None, registry: Registry | None = None
) -> list[DeviceState]:
    """Every device of the named backends (default: every installed backend that can run here),
    each backend opened, read and shut down in turn. A backend that cannot run here (no driver, no
    device) is left out; a named one raises."""
    from exo_gpu_plugins.registry import get_registry

    registry = registry or get_registry()
    explicit = names is not None
    states: list[DeviceState] = []
    for name in names if names is not None else registry.names():
        entry = registry.entry(name, "--backend" if explicit else None)
        reason = entry.unavailable_reason()
        if reason is not None:
            if explicit:
                raise BackendUnavailableError(f"backend {entry.name!r} cannot run here: {reason}")
            continue
        backend = entry.load_class()()
        try:
            await backend.initialize()
        except BackendUnavailableError:
            if explicit:
                raise
            continue
        try:
            for device in backend.list_devices():
                states.append(await device_state(backend, device.device_id))
        finally:
            await backend.shutdown()
    return states
