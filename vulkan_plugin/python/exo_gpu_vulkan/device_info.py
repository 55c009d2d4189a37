"""From what the engine reports about a Vulkan device to the core's records: the device's
description (with what its vendor's telemetry adds), its main heap, its memory report, and the
transfer strategies it can run. Pure functions of the engine's dicts, kept out of backend.py."""

from __future__ import annotations

from typing import Any

from exo_gpu_plugins.models import DeviceDescription, DeviceType, HeapReport, MemoryReport
from exo_gpu_plugins.telemetry import HwmonSource, NvmlSource
from exo_gpu_vulkan.properties import (
    api_version_text,
    driver_version_text,
    pci_bus_id_text,
    uuid_text,
    vendor_name,
)
from exo_gpu_vulkan.records import DeviceInfoRecord, HeapUsageRecord

__all__ = ["describe", "heap_report", "main_heap", "memory_report", "strategies"]

_DEVICE_TYPES = {
    "discrete": DeviceType.DISCRETE,
    "integrated": DeviceType.INTEGRATED,
    "virtual": DeviceType.VIRTUAL,
    "cpu": DeviceType.CPU,
}


def describe(info: DeviceInfoRecord, telemetry: NvmlSource | HwmonSource | None) -> DeviceDescription:
    """The device as Vulkan describes it, plus what the vendor's own source knows and Vulkan does
    not (NVML: compute capability, maximum clocks, memory bus width and so peak bandwidth; sysfs:
    maximum clocks); `field_sources` says which source gave each field."""
    vendor_id = int(info["vendor_id"])
    total, _ = main_heap(info)
    fields: dict[str, Any] = {
        "name": str(info["name"]),
        "vendor": vendor_name(vendor_id),
        "device_type": _DEVICE_TYPES.get(str(info["device_type"]), DeviceType.OTHER),
        "memory_bytes": total,
        "compute_units": info.get("compute_units"),
        "max_threads_per_block": info.get("max_compute_work_group_invocations"),
        "driver_version": driver_version_text(
            vendor_id, int(info["driver_version"]), info.get("driver_info")
        ),
        "uuid": uuid_text(bytes(info["device_uuid"]), vendor_id),
        "pci_bus_id": pci_bus_id_text(info.get("pci_address")),
        "api_version": api_version_text(int(info["api_version"])),
    }
    sources = {name: "vulkan" for name, value in fields.items() if value is not None}
    if telemetry is not None:
        facts = telemetry.device_facts(fields["compute_units"])
        for field, value in (
            ("compute_capability", facts.compute_capability),
            ("clock_rate_mhz", facts.max_graphics_clock_mhz),
            ("memory_clock_mhz", facts.max_memory_clock_mhz),
            ("memory_bus_width_bits", facts.memory_bus_width_bits),
            ("bandwidth_gbps", facts.bandwidth_gbps),
            ("tensor_core_count", facts.tensor_core_count),
        ):
            if value is not None:
                fields[field] = value
                sources[field] = facts.source
    return DeviceDescription(**fields, field_sources=tuple(sorted(sources.items())))


def main_heap(info: DeviceInfoRecord) -> tuple[int, int]:
    """(size, heap index) of the largest device-local heap: where allocations live."""
    heaps = [h for h in info["heaps"] if h["device_local"]] or list(info["heaps"])
    best = max(heaps, key=lambda h: int(h["size"]))
    return int(best["size"]), int(best.get("index", 0))


def strategies(info: DeviceInfoRecord) -> tuple[str, ...]:
    """The transfer strategies the device can run (`EXO_VULKAN_TRANSFER`)."""
    found = ("mapped", "staging") if info.get("host_visible_device_local") else ("staging",)
    return (*found, "import") if info.get("external_memory_host") else found


def memory_report(
    device_id: str, heaps: list[HeapUsageRecord], main_index: int, own_bytes: int
) -> MemoryReport:
    """The device's memory: the main heap's figures, every heap beside them. `own_bytes` is what
    this process's allocations hold on the main heap."""
    budget_known = all(h["budget"] is not None for h in heaps)
    reports = [heap_report(h, own_bytes if h["index"] == main_index else 0) for h in heaps]
    main = next(r for r in reports if r.index == main_index)
    return MemoryReport(
        device_id=device_id,
        total_bytes=main.total_bytes,
        used_bytes=main.used_bytes,
        available_bytes=main.available_bytes,
        reserved_bytes=main.reserved_bytes,
        source="VK_EXT_memory_budget" if budget_known else "heap-size-minus-own-allocations",
        heaps=tuple(reports),
    )


def heap_report(heap: HeapUsageRecord, own_bytes: int) -> HeapReport:
    """The driver's figures where it has a budget; else what this process's allocations hold
    (used) and what the engine will still grant (available: it refuses past the heap's size,
    counting its own pools and staging too, which are then `reserved`). The engine keeps the
    process within the heap, so `used` is never cut down to fit."""
    total = int(heap["size"])
    held = max(own_bytes, int(heap.get("process_allocated", 0)))
    if heap["budget"] is not None and heap["usage"] is not None:
        used = min(max(int(heap["usage"]), own_bytes), total)
        available = max(0, min(int(heap["budget"]) - used, total - max(used, held)))
    else:
        used = min(own_bytes, total)
        available = max(0, total - held)
    return HeapReport(
        index=int(heap["index"]),
        device_local=bool(heap["device_local"]),
        total_bytes=total,
        used_bytes=used,
        available_bytes=available,
        reserved_bytes=total - used - available,
    )
