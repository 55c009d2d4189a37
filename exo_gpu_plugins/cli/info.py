"""`exo-gpu info DEVICE`: every property (and where each came from), the memory report,
capabilities and telemetry of one device."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from exo_gpu_plugins.cli.target import Target, device_id, open_target
from exo_gpu_plugins.sizes import format_bytes

if TYPE_CHECKING:
    from exo_gpu_plugins.backend import GPUBackend
    from exo_gpu_plugins.cli import AddCommand
    from exo_gpu_plugins.cli.render import Screen

__all__ = ["cmd_info", "register", "telemetry"]


def register(add: AddCommand) -> None:
    sub = add(
        "info", "every property, the memory report, capabilities and telemetry of a device", cmd_info
    )
    sub.add_argument("device", help="device id, e.g. vulkan:0 or host:0")


async def telemetry(backend: GPUBackend[Any], device: str) -> dict[str, float | int | None]:
    """Live readings; None where the device has no source for one."""
    readings: dict[str, float | int | None] = {
        "temperature_c": await backend.get_device_temperature(device),
        "power_w": await backend.get_device_power_usage(device),
        "clock_mhz": await backend.get_device_clock_rate(device),
        "utilization_percent": await backend.get_device_utilization(device),
    }
    return readings


async def cmd_info(args: argparse.Namespace, screen: Screen) -> int:
    device = device_id(args.device)
    backend = await open_target(Target(device.partition(":")[0], f"device id {device}", device))
    try:
        properties = await backend.get_device_properties(device)
        report = await backend.get_device_memory_info(device)
        caps = backend.capabilities(device)
        readings = await telemetry(backend, device)
    finally:
        await backend.shutdown()
    data: dict[str, dict[str, Any]] = {
        "device": properties.model_dump(mode="json"),
        "memory": report.model_dump(mode="json"),
        "capabilities": caps.model_dump(mode="json"),
        "telemetry": readings,
    }
    if args.json:
        screen.json(data)
        return 0
    sources = dict(properties.field_sources)
    device_rows = [
        [key, _shown(key, value), sources.get(key, "")]
        for key, value in data["device"].items()
        if key != "field_sources"
    ]
    screen.table(
        ["field", "value", "source"] if sources else ["field", "value"],
        _trim(device_rows, sources),
        "device",
    )
    for title in ("memory", "capabilities", "telemetry"):
        rows: list[list[object]] = []
        for key, value in data[title].items():
            if key == "heaps":
                rows += [[f"heap {heap['index']}", _heap_line(heap)] for heap in value]
            else:
                rows.append([key, _shown(key, value)])
        screen.line("")
        screen.table(["field", "value"], rows, title)
    return 0


def _trim(rows: list[list[object]], sources: dict[str, str]) -> list[list[object]]:
    return rows if sources else [row[:2] for row in rows]


def _shown(key: str, value: object) -> object:
    sized = key.endswith("_bytes") or key == "memory_available"
    if sized and isinstance(value, int):
        return format_bytes(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or None
    return value


def _heap_line(heap: dict[str, Any]) -> str:
    kind = "device-local" if heap["device_local"] else "host"
    return (
        f"{kind}, total {format_bytes(heap['total_bytes'])}, used "
        f"{format_bytes(heap['used_bytes'])}, available {format_bytes(heap['available_bytes'])}"
    )
