"""`exo-gpu info DEVICE`: every property (and where each came from), the memory report,
capabilities and telemetry of one device."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from exo_gpu_plugins.cli.target import Target, device_id, open_target
from exo_gpu_plugins.machine import device_state
from exo_gpu_plugins.sizes import format_bytes

if TYPE_CHECKING:
    from exo_gpu_plugins.cli.options import AddCommand
    from exo_gpu_plugins.cli.render import Screen

__all__ = ["cmd_info", "register"]


def register(add: AddCommand) -> None:
    sub = add(
        "info", "every property, the memory report, capabilities and telemetry of a device", cmd_info
    )
    sub.add_argument("device", help="device id, e.g. vulkan:0 or host:0")


async def cmd_info(args: argparse.Namespace, screen: Screen) -> int:
    device = device_id(args.device)
    backend = await open_target(Target(device.partition(":")[0], f"device id {device}", device))
    try:
        state = await device_state(backend, device)
        caps = backend.capabilities(device)
    finally:
        await backend.shutdown()
    properties = state.device
    usage = asdict(state.usage)
    processes = usage.pop("processes")
    data: dict[str, Any] = {
        "device": properties.model_dump(mode="json"),
        "memory": state.memory.model_dump(mode="json"),
        "machine": usage,
        "capabilities": caps.model_dump(mode="json"),
        "telemetry": asdict(state.telemetry),
    }
    if args.json:
        screen.json({**data, "machine": {**usage, "processes": processes}})
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
    usage["processes"] = (
        None
        if processes is None
        else ", ".join(f"{p['pid']} ({format_bytes(p['used_bytes'])})" for p in processes) or "none"
    )
    for title in ("memory", "machine", "capabilities", "telemetry"):
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
