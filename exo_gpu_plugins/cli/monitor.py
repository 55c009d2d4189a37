"""`exo-gpu monitor`: memory and live telemetry of a node's devices.

For a person watching a node: on a terminal a rich live view redraws the table in place until
Ctrl-C; piped, each refresh is appended as a plain table (or, with --json, one JSON object per
device per line) so it can be logged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from exo_gpu_plugins.cli.options import positive_float, positive_int
from exo_gpu_plugins.cli.render import Column
from exo_gpu_plugins.cli.target import Target, device_id, open_target
from exo_gpu_plugins.machine import device_state
from exo_gpu_plugins.sizes import format_bytes

if TYPE_CHECKING:
    from rich.table import Table

    from exo_gpu_plugins.backend import GPUBackend
    from exo_gpu_plugins.cli.options import AddCommand
    from exo_gpu_plugins.cli.render import Screen

__all__ = ["cmd_monitor", "register", "sample"]

COLUMNS = [
    Column("time"),
    Column("device"),
    Column("device used", "right"),
    Column("this process", "right"),
    Column("available", "right"),
    Column("total", "right"),
    Column("util %", "right"),
    Column("temp C", "right"),
    Column("power W", "right"),
    Column("clock MHz", "right"),
]


def register(add: AddCommand) -> None:
    sub = add("monitor", "memory and telemetry of devices, refreshed in place until Ctrl-C", cmd_monitor)
    sub.add_argument(
        "device", nargs="?", help="one device id (default: every device of the default backend)"
    )
    sub.add_argument("--interval", type=positive_float, default=1.0, help="seconds between refreshes")
    sub.add_argument("--count", type=positive_int, help="stop after this many refreshes")


async def sample(backend: GPUBackend[Any], device: str) -> dict[str, Any]:
    """One reading of a device as a flat row: the time (ISO 8601), this process's memory figures,
    the whole device's used memory (None where the system cannot tell) and telemetry."""
    state = await device_state(backend, device)
    return {
        "time": state.time,
        "device_id": device,
        "total_bytes": state.memory.total_bytes,
        "used_bytes": state.memory.used_bytes,
        "available_bytes": state.memory.available_bytes,
        "reserved_bytes": state.memory.reserved_bytes,
        "memory_source": state.memory.source,
        "device_used_bytes": state.usage.device_used_bytes,
        "device_used_source": state.usage.device_used_source,
        **asdict(state.telemetry),
    }


def _table(screen: Screen, rows: list[dict[str, Any]]) -> Table:
    return screen.make_table(
        COLUMNS,
        [
            [
                r["time"][11:19],
                r["device_id"],
                format_bytes(r["device_used_bytes"]),
                format_bytes(r["used_bytes"]),
                format_bytes(r["available_bytes"]),
                format_bytes(r["total_bytes"]),
                r["utilization_percent"],
                r["temperature_c"],
                r["power_w"],
                r["clock_mhz"],
            ]
            for r in rows
        ],
    )


async def cmd_monitor(args: argparse.Namespace, screen: Screen) -> int:
    device = device_id(args.device) if args.device else None
    target = (
        Target(device.partition(":")[0], f"device id {device}", device)
        if device
        else Target(None, "selection", None)
    )
    backend = await open_target(target)
    try:
        ids = [device] if device else [d.device_id for d in backend.list_devices()]
        if args.json or not screen.interactive:
            await _append(backend, ids, args, screen)
        else:
            await _live(backend, ids, args, screen)
    finally:
        await backend.shutdown()
    return 0


async def _append(
    backend: GPUBackend[Any], ids: list[str], args: argparse.Namespace, screen: Screen
) -> None:
    done = 0
    while args.count is None or done < args.count:
        rows = [await sample(backend, i) for i in ids]
        if args.json:
            for row in rows:
                screen.out.write(json.dumps(row) + "\n")
        else:
            if done:
                screen.line("")
            screen.print(_table(screen, rows))
        screen.out.flush()
        done += 1
        if args.count is None or done < args.count:
            await asyncio.sleep(args.interval)


async def _live(
    backend: GPUBackend[Any], ids: list[str], args: argparse.Namespace, screen: Screen
) -> None:
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    hint = Text("Ctrl-C to stop", style="dim")
    done = 0
    with Live(console=screen.console(), auto_refresh=False, transient=False) as live:
        while args.count is None or done < args.count:
            rows = [await sample(backend, i) for i in ids]
            live.update(Group(_table(screen, rows), hint), refresh=True)
            done += 1
            if args.count is None or done < args.count:
                await asyncio.sleep(args.interval)
