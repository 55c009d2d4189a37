"""Who uses a device, read from the system rather than from this process: the whole device's used
memory and the processes holding it, where the system can tell.

- NVIDIA: NVML (`nvmlDeviceGetMemoryInfo`'s used memory, as `nvidia-smi --query-gpu=memory.used`
  shows it; the running compute and graphics processes with what each holds).
- amdgpu: `/sys/bus/pci/devices/<address>/mem_info_vram_used` (the whole device).
- amdgpu, i915, xe: the DRM clients' `fdinfo` (`/proc/<pid>/fdinfo/<fd>` of each descriptor open on
  `/dev/dri/*`, matched to the device by `drm-pdev`, memory from the `drm-resident-*`,
  `drm-total-*` or amdgpu's `drm-memory-*` keys of device memory regions, each client counted
  once by `drm-client-id`). Other users' processes cannot be read without privileges: the scan
  says how many it could not read, and a whole-device figure is summed from it only when none.

Each reader returns `None` (or says what it could not read) where the system has no answer; nothing
here estimates.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from exo_gpu_plugins.telemetry.nvml import NvmlSource

__all__ = [
    "DrmScan",
    "ProcessReading",
    "nvml_processes",
    "nvml_used_bytes",
    "process_name",
    "scan_drm_clients",
    "sysfs_vram_used",
]

log = logging.getLogger(__name__)

_UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_MEMORY_KEY = re.compile(r"drm-(resident|total|memory)-([a-z]+)(\d*)")
# Device memory regions: amdgpu's and xe's vram, i915's local; system memory on UMA devices.
_DEVICE_REGIONS = ("vram", "local")
_UMA_REGIONS = ("system", "gtt")


@dataclass(frozen=True)
class ProcessReading:
    """One process's hold on a device, as one source reports it (`used_bytes` None: the source
    lists the process but not its memory)."""

    pid: int
    used_bytes: int | None
    source: str


def process_name(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    """The process's command name (`/proc/<pid>/comm`), or None when it is not visible here
    (another pid namespace, or it has exited)."""
    try:
        return (proc_root / str(pid) / "comm").read_text().strip() or None
    except OSError:
        return None


# --------------------------------------------------------------------------------------------------
# NVML


def nvml_used_bytes(source: NvmlSource) -> int | None:
    """The whole device's used memory as nvidia-smi shows it: NVML's version-2 memory info (which
    leaves the driver's reserved memory out, as nvidia-smi does since driver 510), else version 1."""
    nvml = source.nvml
    version = getattr(nvml, "nvmlMemory_v2", None)
    if version is not None:
        try:
            return int(nvml.nvmlDeviceGetMemoryInfo(source.handle, version=version).used)
        except (nvml.NVMLError, TypeError, AttributeError) as exc:
            log.debug("NVML memory info v2: %s", exc)
    info = source._read("nvmlDeviceGetMemoryInfo")
    return None if info is None else int(info.used)


def nvml_processes(source: NvmlSource) -> list[ProcessReading] | None:
    """The processes NVML lists on the device (compute and graphics: Vulkan applications may be
    either), each once; None when NVML refuses both queries."""
    found: dict[int, int | None] = {}
    answered = False
    for call in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        listed = source._read(call)
        if listed is None:
            continue
        answered = True
        for process in listed:
            used = getattr(process, "usedGpuMemory", None)
            held = int(used) if isinstance(used, int) else None
            previous = found.get(int(process.pid))
            found[int(process.pid)] = held if previous is None else max(previous, held or 0)
    if not answered:
        return None
    return [ProcessReading(pid, used, "nvml") for pid, used in sorted(found.items())]


# --------------------------------------------------------------------------------------------------
# sysfs and DRM fdinfo


def sysfs_vram_used(pci_bus_id: str, sysfs_root: Path = Path("/sys")) -> int | None:
    """amdgpu's `mem_info_vram_used` of the device at that PCI address, or None without one."""
    path = sysfs_root / "bus" / "pci" / "devices" / pci_bus_id.lower() / "mem_info_vram_used"
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class DrmScan:
    """The DRM clients of one device found in /proc: what each process holds (its clients summed),
    and how many processes could not be read (other users', without privileges)."""

    processes: list[ProcessReading] = field(default_factory=list)
    unreadable: int = 0
    # Whether any client stated its memory at all (a driver without memory keys lists none).
    memory_known: bool = False


def _bytes(value: str) -> int | None:
    parts = value.split()
    if not parts or not parts[0].isdigit():
        return None
    unit = parts[1] if len(parts) > 1 else ""
    factor = _UNITS.get(unit)
    return None if factor is None else int(parts[0]) * factor


def _client_memory(fields: dict[str, str]) -> int | None:
    """A client's device memory: its resident figure for device regions, else their total (else
    amdgpu's older `drm-memory-*`), over vram/local regions, or system regions on UMA devices."""
    by_kind: dict[str, dict[str, dict[str, int]]] = {}
    for key, value in fields.items():
        match = _MEMORY_KEY.fullmatch(key)
        amount = _bytes(value) if match else None
        if match is None or amount is None:
            continue
        kind, region, index = match.groups()
        group = "device" if region in _DEVICE_REGIONS else "uma" if region in _UMA_REGIONS else None
        if group is not None:
            by_kind.setdefault(group, {}).setdefault(kind, {})[region + index] = amount
    for group in ("device", "uma"):
        kinds = by_kind.get(group)
        if kinds:
            for kind in ("resident", "total", "memory"):
                if kind in kinds:
                    return sum(kinds[kind].values())
    return None


def _fdinfo(path: Path) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def scan_drm_clients(pci_bus_id: str, proc_root: Path = Path("/proc")) -> DrmScan:
    """Every process with a DRM file open on the device at `pci_bus_id`, with its memory."""
    scan = DrmScan()
    wanted = pci_bus_id.lower()
    try:
        pids = [int(p.name) for p in proc_root.iterdir() if p.name.isdigit()]
    except OSError:
        return scan
    for pid in sorted(pids):
        fd_dir = proc_root / str(pid) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except PermissionError:
            scan.unreadable += 1
            continue
        except OSError:  # exited meanwhile
            continue
        clients: dict[str, int | None] = {}
        for fd in fds:
            try:
                if not os.readlink(fd_dir / fd).startswith("/dev/dri/"):
                    continue
                fields = _fdinfo(proc_root / str(pid) / "fdinfo" / fd)
            except OSError:
                continue
            if fields.get("drm-pdev", "").lower() != wanted:
                continue
            client = fields.get("drm-client-id", f"fd{fd}")
            memory = _client_memory(fields)
            scan.memory_known = scan.memory_known or memory is not None
            clients[client] = memory if clients.get(client) is None else clients[client]
        if clients:
            amounts = [m for m in clients.values() if m is not None]
            used = sum(amounts) if amounts else None
            scan.processes.append(ProcessReading(pid, used, "drm-fdinfo"))
    return scan
