"""What the operating system says about the machine's RAM and CPU (Linux /proc, else sysconf)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RamFigures", "cpu_identity", "read_ram"]

_MEMINFO = Path("/proc/meminfo")
_CPUINFO = Path("/proc/cpuinfo")

_VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}


@dataclass(frozen=True)
class RamFigures:
    """Physical RAM, and what the OS could still hand out (`None` where it cannot tell)."""

    total_bytes: int
    available_bytes: int | None
    source: str


def read_ram() -> RamFigures:
    """Total and available RAM, from /proc/meminfo where it exists."""
    try:
        fields = _parse_meminfo(_MEMINFO.read_text())
    except OSError:
        fields = {}
    if "MemTotal" in fields:
        return RamFigures(fields["MemTotal"], fields.get("MemAvailable"), "os:/proc/meminfo")
    page = os.sysconf("SC_PAGE_SIZE")
    total = os.sysconf("SC_PHYS_PAGES") * page
    return RamFigures(total, None, "os:sysconf")


def _parse_meminfo(text: str) -> dict[str, int]:
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            scale = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
            fields[key.strip()] = int(parts[0]) * scale
    return fields


def cpu_identity() -> tuple[str, str]:
    """(model name, vendor) of the host CPU, from /proc/cpuinfo or the platform module."""
    name = platform.processor() or platform.machine() or "host CPU"
    vendor = platform.machine().lower() or "unknown"
    try:
        text = _CPUINFO.read_text()
    except OSError:
        return name, vendor
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and value:
            name = value
        elif key == "vendor_id" and value:
            vendor = _VENDORS.get(value, value.lower())
        if key == "" and name != "host CPU":
            break
    return name, vendor
